"""Similarities, pair masks, the result records, and the embedding gradient shared by every loss.

Conventions (docs/conventions.md#notation):
* ``S = X X_ref^T`` (m x n); with ``normalize=True`` the rows of X and X_ref are L2-normalised first.
* Positives of anchor i: same label, not a self pair. Negatives: different label.
* The self pair is (i, i) when the reference set is the batch; with a separate reference set the
  caller may say which reference row is each anchor's own copy (``ref_self``, -1 for none).
  Under the ``value`` self rule (official MS code) every same-label pair with S >= threshold is also
  dropped.
* ``G = dL/dS`` is the ordered gradient: row = anchor, column = reference item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .errors import GpwrefError
from .profiles import Profile


@dataclass(frozen=True)
class PairResult:
    """What a loss computes from S: its value, its GPW weights, and the pairs that carry weight.

    ``per_anchor[i]`` is anchor i's contribution to the loss: ``loss == per_anchor.sum()`` for
    every loss (so a mean over anchors shows up as terms already divided by m).
    ``extras`` holds loss-specific outputs (for example the gradient of a learnable margin).
    """

    loss: float
    per_anchor: np.ndarray
    grad_sim: np.ndarray
    pos_used: np.ndarray
    neg_used: np.ndarray
    extras: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Result(PairResult):
    """``compute``'s answer: the pair-level result plus the embedding gradients."""

    grad_emb: np.ndarray = None
    grad_ref: np.ndarray | None = None
    sim: np.ndarray = None
    loss_name: str = ""
    profile: str = ""
    hyper: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Pairs:
    """The pair structure of a batch: which entries of S are positives and negatives."""

    pos: np.ndarray  # bool (m, n)
    neg: np.ndarray  # bool (m, n)
    labels: np.ndarray
    ref_labels: np.ndarray
    ref_is_batch: bool
    self_pair: np.ndarray  # bool (m, n): pairs removed as "self"


def unit_rows(X: np.ndarray, argument: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows divided by their L2 norms, and the norms; scaled first so that no square over/underflows."""
    largest = np.max(np.abs(X), axis=1)
    if np.any(largest == 0.0):
        row = int(np.argmax(largest == 0.0))
        raise GpwrefError(argument, "rows must have non-zero norm to be L2-normalised (or pass normalize=False)", f"row {row} is all zeros")
    scaled = X / largest[:, None]
    scaled_norms = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
    return scaled / scaled_norms[:, None], largest * scaled_norms


def build_pairs(
    S: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    ref_is_batch: bool,
    profile: Profile,
    ref_self: np.ndarray | None = None,
) -> Pairs:
    m, n = S.shape
    same = labels[:, None] == ref_labels[None, :]
    self_pair = np.zeros((m, n), dtype=bool)
    if ref_is_batch:
        np.fill_diagonal(self_pair, True)
    elif ref_self is not None:
        rows = np.nonzero(ref_self >= 0)[0]
        self_pair[rows, ref_self[rows]] = True
    if profile.self_rule == "value":
        self_pair |= same & (S >= profile.self_threshold)
    pos = same & ~self_pair
    neg = ~same
    return Pairs(pos=pos, neg=neg, labels=labels, ref_labels=ref_labels, ref_is_batch=ref_is_batch, self_pair=self_pair)


def check_degenerate(pairs: Pairs, profile: Profile, loss_name: str) -> None:
    """Under a profile whose code raises on an anchor with no positive or no negative, raise too."""
    if profile.degenerate != "raise":
        return
    no_pos = ~pairs.pos.any(axis=1)
    no_neg = ~pairs.neg.any(axis=1)
    if no_pos.any():
        i = int(np.argmax(no_pos))
        extra = " (after dropping same-label pairs with S >= %g)" % profile.self_threshold if profile.self_rule == "value" else ""
        raise GpwrefError(
            "labels",
            f"profile '{profile.name}' ({loss_name}): every anchor needs a positive{extra}; the {profile.name} code "
            f"raises here (min() of an empty set)",
            f"anchor {i} has none",
        )
    if no_neg.any():
        i = int(np.argmax(no_neg))
        raise GpwrefError(
            "labels",
            f"profile '{profile.name}' ({loss_name}): every anchor needs a negative; the {profile.name} code raises here "
            f"(max() of an empty set)",
            f"anchor {i} has none",
        )


def zero_by_pair_count(profile: Profile, pos: np.ndarray, neg: np.ndarray) -> bool:
    """PML's GenericPairLoss rule: a zero loss when at most one positive and one negative pair are used."""
    return bool(profile.zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1)


def anchors_with_positives(pairs: Pairs, profile: Profile, require_both_kinds: bool) -> tuple[np.ndarray, np.ndarray]:
    """Used masks of a loss over the anchors that have a positive (SupCon, NT-Xent, tuplet margin).

    ``require_both_kinds``: no anchor counts unless the batch has positive and negative pairs (PML's
    losses that return zero without one of them); the pair-count zero rule applies as well.
    """
    pos, neg = pairs.pos, pairs.neg
    alive = pos.any(axis=1)
    if (require_both_kinds and not (pos.any() and neg.any())) or zero_by_pair_count(profile, pos, neg):
        alive = np.zeros_like(alive)
    return pos & alive[:, None], neg & alive[:, None]


def grad_embeddings(
    grad_sim: np.ndarray,
    X_unit: np.ndarray,
    norms: np.ndarray | None,
    R_unit: np.ndarray,
    ref_norms: np.ndarray | None,
    ref_is_batch: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """dL/dX (and dL/dX_ref) from G = dL/dS, through the normalisation when norms are given.

    S = U V^T with U = X/|X|, V = R/|R|: dL/dU = G V, dL/dV = G^T U; when V is U (batch as its
    own reference) the two add. Through u = v/r: dL/dv = (I - u u^T) dL/du / r.
    """
    grad_u = grad_sim @ R_unit
    grad_v = grad_sim.T @ X_unit
    if ref_is_batch:
        grad_u = grad_u + grad_v
        grad_v = None
    if norms is not None:
        grad_u = through_normalisation(grad_u, X_unit, norms)
        if grad_v is not None:
            grad_v = through_normalisation(grad_v, R_unit, ref_norms)
    return grad_u, grad_v


def through_normalisation(grad_unit: np.ndarray, unit: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """dL/dx from dL/du through u = x / |x|: (I - u u^T) dL/du / |x|, row by row."""
    radial = np.einsum("ij,ij->i", grad_unit, unit)
    return (grad_unit - unit * radial[:, None]) / norms[:, None]


def masked_lse(z: np.ndarray, mask: np.ndarray, add_one: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise stable log-sum-exp over masked entries, and the softmax weights of those entries.

    With ``add_one`` an extra logit 0 joins every row: returns log(1 + sum exp z) and the weights
    exp(z_j) / (1 + sum exp z). Rows with no kept entry return -inf (or 0 with ``add_one``) and
    zero weights. Never overflows: the row maximum is taken out before exponentiating.
    """
    masked = np.where(mask, z, -np.inf)
    top = masked.max(axis=1) if masked.shape[1] else np.full(masked.shape[0], -np.inf)
    if add_one:
        top = np.maximum(top, 0.0)
    safe_top = np.where(np.isfinite(top), top, 0.0)
    exps = np.where(mask, np.exp(np.where(mask, z, 0.0) - safe_top[:, None]), 0.0)
    total = exps.sum(axis=1)
    if add_one:
        total = total + np.exp(-safe_top)
    with np.errstate(divide="ignore"):
        if add_one:
            # total = exp(-top) + sum: when no logit exceeds 0 (top == 0), log1p keeps the relative
            # precision of a tiny sum that log(1 + sum) would round away.
            # (When top == 0 the row's exps are exp(z) unshifted and total = 1 + their sum.)
            lse = np.where(safe_top > 0, np.log(total) + safe_top, np.log1p(exps.sum(axis=1)))
        else:
            lse = np.log(total) + safe_top
    weights = np.divide(exps, total[:, None], out=np.zeros_like(exps), where=total[:, None] > 0)
    return lse, weights
