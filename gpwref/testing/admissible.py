"""Other answers a correct implementation may give: the reference at a similarity matrix S' that a
correct candidate may legitimately have formed instead of S (see docs/oracle.md, "What passes").

The loss sees S only, so each admissible difference is a map S -> S' followed by the reference's own
pair rules, loss and chain rule through the normalisation (``gpwref.pipeline.NumpyStages``):

* round-off of S in the candidate's dtype: S + delta with |delta| ~ sqrt(d) u. Where the used pairs do
  not change, the reference's spread over a few such delta is added to the allowance (the error a
  correct candidate makes is that round-off times the loss's local slope at this batch);
* tie-breaks: where the mined set or hardest pair is decided by a tie between identical rows (or rows
  within round-off), each ordering of the tied columns is one admissible reference;
* stability epsilons, up to ``MAX_EPSILON``: ``sqrt(d^2 + eps)`` (S' = S - eps/2), ``clamp(d^2,
  min=eps).sqrt()`` (S' = min(S, 1 - eps/2)) for a loss on Euclidean distances, and ``x / (|x| + eps)``
  in the normalisation (S'_ij = S_ij / ((1 + eps/|x_i|)(1 + eps/|x_j|))). ``F.normalize``'s
  ``max(|x|, eps)`` changes nothing on rows longer than eps.

A candidate passes when it agrees with one of them; ``Comparison.accepted_as`` names which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import GpwrefError
from ..inputs import validate
from ..pairs import grad_embeddings
from ..pipeline import NumpyStages
from .candidates import UNIT_ROUNDOFF

# The largest stability epsilon recognised (torch's F.pairwise_distance uses 1e-6).
EPSILONS = (1e-16, 1e-12, 1e-8, 1e-6)
MAX_EPSILON = EPSILONS[-1]
ROUNDOFF_DRAWS = 3


@dataclass(frozen=True)
class Alternative:
    name: str
    loss: float
    grad_emb: np.ndarray
    grad_ref: np.ndarray | None
    pos_used: np.ndarray | None
    neg_used: np.ndarray | None
    per_anchor: np.ndarray | None = None


def _euclidean(setup) -> bool:
    return setup.params.get("distance") == "euclidean" or setup.entry.name in ("contrastive", "lifted_structure", "triplet", "margin")


def reference_at(setup, inputs, transform: Callable[[np.ndarray, object], np.ndarray], name: str,
                 gradients: Callable | None = None) -> Alternative | None:
    """The reference with S replaced by ``transform(S, stages)`` (None where the profile refuses the batch).

    ``gradients(stages, G)``: (dL/dX, dL/dref) where the candidate's S' depends on X otherwise than
    through unit rows (the reference's chain rule by default)."""
    entry = setup.entry
    stages, S = _stages(setup, inputs)
    try:
        pair = stages.pair_weights(entry, setup.profile, setup.params, transform(S, stages))
    except GpwrefError:
        return None
    grad_emb, grad_ref = stages.gradients(pair) if gradients is None else gradients(stages, pair.grad_sim)
    return Alternative(name, float(pair.loss), grad_emb, grad_ref, pair.pos_used, pair.neg_used, pair.per_anchor)


class _Weights:
    """A stand-in for a PairResult where only G is read (the stages' gradients)."""

    def __init__(self, grad_sim):
        self.grad_sim = grad_sim


def _stages(setup, inputs):
    """The reference's NumPy stages on ``inputs`` and the S they form."""
    validated = validate(setup.entry, inputs.X, inputs.labels, inputs.ref, inputs.ref_labels, inputs.ref_self,
                         setup.normalize, np.float64)
    stages = NumpyStages(validated)
    return stages, stages.similarity()


def _same_pairs(a, b) -> bool:
    for x, y in ((a.pos_used, b.pos_used), (a.neg_used, b.neg_used)):
        if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
            return False
    return True


def _spread(base, others) -> tuple[float, float, float]:
    """Largest change of value, dL/dX and dL/dref over ``others`` that use the same pairs as ``base``."""
    value = grad = grad_ref = 0.0
    for other in others:
        if other is None or not _same_pairs(base, other):
            continue
        value = max(value, abs(other.loss - base.loss))
        grad = max(grad, float(np.max(np.abs(other.grad_emb - base.grad_emb), initial=0.0)))
        if base.grad_ref is not None and other.grad_ref is not None:
            grad_ref = max(grad_ref, float(np.max(np.abs(other.grad_ref - base.grad_ref), initial=0.0)))
    return value, grad, grad_ref


def _roundoff(setup, inputs, dtype: str) -> float:
    """The size of one entry's round-off in S = U V^T formed in ``dtype`` (sqrt(d) u, at least u)."""
    return float(np.sqrt(inputs.X.shape[1])) * UNIT_ROUNDOFF[dtype]


def alternatives(setup, inputs, base, dtype: str) -> tuple[list[Alternative], tuple[float, float, float]]:
    """(admissible references other than ``base``, the round-off allowance (value, dL/dX, dL/dref))."""
    if setup.entry.embeddings_function is not None:
        return [], (0.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    sigma = _roundoff(setup, inputs, dtype)
    ref_is_batch = inputs.ref is None

    def noise(S, stages):
        delta = rng.standard_normal(S.shape) * sigma
        if ref_is_batch:
            delta = np.triu(delta, 1)
            delta = delta + delta.T
        return S + delta

    noisy = [reference_at(setup, inputs, noise, f"S within its {dtype} round-off") for _ in range(ROUNDOFF_DRAWS)]
    allowance = tuple(2.0 * x for x in _spread(base, noisy))
    found: list[Alternative] = [a for a in noisy if a is not None and not _same_pairs(base, a)]

    # tie-breaks: within each row, the columns of one kind (positive or negative) whose S lies within
    # round-off of an earlier one are moved apart by a few units, in each order
    cut = max(4.0 * sigma, 1e-12)
    step = 2.0 * cut + 2e-12  # beyond the reference's tie snapping (1e-12) and the candidate's round-off
    ref_labels = inputs.labels if ref_is_batch else inputs.ref_labels
    same = inputs.labels[:, None] == ref_labels[None, :]

    def tied_rank(S):
        close = np.abs(S[:, :, None] - S[:, None, :]) <= cut
        kind = same[:, :, None] == same[:, None, :]
        earlier = np.tril(np.ones((S.shape[1], S.shape[1]), dtype=bool), -1)  # [j, k]: k < j
        return np.count_nonzero(close & kind & earlier[None, :, :], axis=2).astype(np.float64)

    rank = tied_rank(_stages(setup, inputs)[1])
    if ref_is_batch:
        np.fill_diagonal(rank, 0.0)
    if np.any(rank > 0):
        for sign_pos in (1.0, -1.0):
            for sign_neg in (1.0, -1.0):
                shift = step * rank * np.where(same, sign_pos, sign_neg)
                order = f"positives {'later' if sign_pos > 0 else 'earlier'}, negatives {'later' if sign_neg > 0 else 'earlier'}"
                alt = reference_at(setup, inputs, lambda S, st, shift=shift: S + shift,
                                   f"a tie broken the other way (tied S within {cut:.0e}: {order} index first)")
                if alt is not None and not _same_pairs(base, alt):
                    found.append(alt)

    # stability epsilons
    for eps in EPSILONS:
        if _euclidean(setup):
            shift = eps * (1.0 + 1e-6) / 2.0  # a hair beyond eps/2, so that the duplicate snap (1e-12) does not absorb it
            found.append(reference_at(setup, inputs, lambda S, st, h=shift: S - h,
                                      f"a stability epsilon {eps:g} under the square root: sqrt(d^2 + {eps:g})"))
            found.append(reference_at(setup, inputs, lambda S, st, h=shift: np.minimum(S, 1.0 - h),
                                      f"a stability epsilon {eps:g} as a floor: clamp(d^2, min={eps:g}).sqrt()",
                                      lambda st, G, h=shift: st.gradients(_Weights(G * (st.U @ st.V.T < 1.0 - h)))))
        if setup.normalize:
            def in_norm(S, stages, e=eps):
                a = 1.0 / (1.0 + e / stages.norms)
                b = a if ref_is_batch else 1.0 / (1.0 + e / stages.ref_norms)
                return S * a[:, None] * b[None, :]

            found.append(reference_at(setup, inputs, in_norm, f"a stability epsilon {eps:g} in the normalisation: x / (|x| + {eps:g})",
                                      lambda stages, G, e=eps: _grad_eps_normalised(stages, G, e, ref_is_batch)))
    return [a for a in found if a is not None], allowance


def _grad_eps_normalised(stages, G, eps: float, ref_is_batch: bool):
    """dL/dX and dL/dref when rows are scaled as x / (|x| + eps): S' = W V'^T with W_i = x_i / (|x_i| + eps)."""

    def scaled(unit, norms):
        return unit * (norms / (norms + eps))[:, None]

    def back(grad_w, unit, norms):  # J^T g for w = x / (|x| + eps), x = |x| u
        inner = np.einsum("ij,ij->i", unit, grad_w)
        return grad_w / (norms + eps)[:, None] - unit * (inner * norms / (norms + eps) ** 2)[:, None]

    W = scaled(stages.U, stages.norms)
    Wr = W if ref_is_batch else scaled(stages.V, stages.ref_norms)
    grad_w, grad_wr = grad_embeddings(G, W, None, Wr, None, ref_is_batch)
    grad_emb = back(grad_w, stages.U, stages.norms)
    grad_ref = None if grad_wr is None else back(grad_wr, stages.V, stages.ref_norms)
    return grad_emb, grad_ref
