r"""Margin loss with a learnable boundary beta, Wu, Manmatha, Smola, Kraehenbuehl, ICCV 2017.

On unit-sphere distances D_ij = sqrt(d2_ij + dist_eps), d2_ij = 2 - 2 S_ij, with margin ``margin``
(the paper's alpha) and boundary beta_i (one global ``beta``, or per class: ``beta`` = {class: value},
the anchor's class deciding)::

    positive term  [D_ij - beta_i + margin]_+          negative term  [beta_i - D_ij + margin]_+

``pairing``: "pairs" (the paper's pair loss: every ordered positive and negative pair once);
"triplets" (PML ``MarginLoss(triplets_per_anchor="all")``: one positive and one negative term per
triplet (i, p, n), so a positive term counts |N_i| times and a negative term |P_i| times, and an
anchor without positives or without negatives has no term; docs/losses.md#margin). With Z the
number of terms > 0 (counted per triplet under "triplets")::

    L = (1/Z) sum of the terms  (0 when Z = 0)  +  nu * beta
    (under "triplets" the regulariser too is 0 when the batch has no triplet, as PML returns then)

The regulariser nu * beta is the paper's and PML's (PML adds it when ``learn_beta=True``; with
per-class betas PML adds nu * sum over triplets of beta_{y_i} / Z, which is what "triplets" does here;
"pairs" with per-class betas and nu > 0 is not defined by any source and is refused).
The paper's distance-weighted sampling (and the official codes' one sampled triplet per anchor,
docs/losses.md#margin) is a random miner, not part of the loss: it is not modelled.

GPW weights, with k_ij the term's multiplicity (1, or |N_i| / |P_i| under "triplets") and
dD/dS = -1/D::

    G_ij = -k_ij / (Z D_ij)   active positive (D_ij > beta_i - margin)    (<= 0)
    G_ij = +k_ij / (Z D_ij)   active negative (D_ij < beta_i + margin)    (>= 0)

and the gradient for beta, reported in ``extras["grad_beta"]`` (a float, or {class: float})::

    dL/dbeta_c = (sum_{active negative terms of class-c anchors} k - sum_{active positive ...} k) / Z + nu
                 (+ nu * #triplets of class-c anchors / Z per class under "triplets", instead of + nu)

Rules. A hinge exactly at 0 is inactive (weight 0, not counted in Z; torch's relu and PML's
``loss > 0``). Duplicates: a pair with 2 - 2S <= 1e-12 (the library's duplicate rule, see
gpwref/losses/contrastive.py) has d2 = 0 and dD/dS = 0 (torch.cdist's zero subgradient at identical
rows; for unit rows the embedding gradient of such a pair is 0 anyway). With ``dist_eps`` = 0 (paper,
PML) D is then 0; the official codes use dist_eps = 1e-8 (D = sqrt(||a - x||^2 + 1e-8)).
Similarities used: self only (each weight depends on S_ij and constants; Z is a count).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..entry import LossEntry, either, integer, non_empty_mapping, number, one_of
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from ..rules import duplicate_cutoff
from .contrastive import DUPLICATE_SQ_DISTANCE


def unit_distance(S: np.ndarray, dist_eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """D = sqrt(max(2 - 2S, 0) + dist_eps) and dD/dS = -1/D; duplicates (2 - 2S <= 1e-12) get d2 = 0, slope 0."""
    squared = 2.0 - 2.0 * S
    apart = squared > duplicate_cutoff(S.dtype, DUPLICATE_SQ_DISTANCE)  # float32 S: its own cut-off
    D = np.sqrt(np.where(apart, squared, 0.0) + dist_eps)
    slope = np.divide(-1.0, D, out=np.zeros_like(D), where=apart)
    return D, slope


def anchor_betas(beta, labels: np.ndarray) -> np.ndarray:
    """Each anchor's beta: the global value, or its class's entry of a {class: beta} mapping."""
    if not isinstance(beta, Mapping):
        return np.full(len(labels), float(beta))
    missing = sorted({int(c) for c in labels} - {int(c) for c in beta})
    if missing:
        raise GpwrefError("beta", "a per-class beta mapping needs an entry for every anchor's class", f"no beta for classes {missing}")
    return np.array([float(beta[int(c)]) for c in labels])


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    margin: float,
    beta,
    nu: float,
    pairing: str,
    dist_eps: float,
) -> PairResult:
    pos, neg = pairs.pos, pairs.neg
    per_class = isinstance(beta, Mapping)
    if per_class and nu > 0 and pairing == "pairs":
        raise GpwrefError("nu", "per-class betas with nu > 0 are defined for pairing='triplets' only (PML's rule)", nu)
    betas = anchor_betas(beta, pairs.labels)
    D, slope = unit_distance(S, dist_eps)
    pos_term = np.where(pos, np.maximum(D - betas[:, None] + margin, 0.0), 0.0)
    neg_term = np.where(neg, np.maximum(betas[:, None] - D + margin, 0.0), 0.0)
    pos_active = pos_term > 0
    neg_active = neg_term > 0

    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    if pairing == "triplets":
        has_triplets = (n_pos > 0) & (n_neg > 0)
        pos_mult = np.where(has_triplets, n_neg, 0)[:, None] * np.ones_like(S)
        neg_mult = np.where(has_triplets, n_pos, 0)[:, None] * np.ones_like(S)
        terms_per_anchor = np.where(has_triplets, n_pos * n_neg, 0)
    else:
        pos_mult = np.ones_like(S)
        neg_mult = np.ones_like(S)
        terms_per_anchor = None
    pos_active &= pos_mult > 0
    neg_active &= neg_mult > 0
    Z = float((pos_mult * pos_active).sum() + (neg_mult * neg_active).sum())
    inv_Z = 1.0 / Z if Z > 0 else 0.0

    per_anchor = inv_Z * ((pos_mult * pos_term * pos_active).sum(axis=1) + (neg_mult * neg_term * neg_active).sum(axis=1))
    grad_sim = inv_Z * slope * (pos_mult * pos_active - neg_mult * neg_active)
    # per anchor: active negative terms minus active positive terms (exact integers, scaled once)
    beta_push = (neg_mult * neg_active).sum(axis=1) - (pos_mult * pos_active).sum(axis=1)

    if per_class:
        grad_beta = {int(c): inv_Z * float(beta_push[pairs.labels == c].sum()) for c in beta}
        if nu > 0:  # PML: nu * sum over triplets of beta_{y_i} / Z
            for c in grad_beta:
                grad_beta[c] += nu * inv_Z * float(terms_per_anchor[pairs.labels == c].sum())
            per_anchor = per_anchor + nu * inv_Z * terms_per_anchor * betas
    else:
        # PML returns every sub-loss as 0 when there is no triplet at all (margin_loss.py:36-37).
        regularised = nu > 0 and (pairing == "pairs" or int(terms_per_anchor.sum()) > 0)
        grad_beta = inv_Z * float(beta_push.sum()) + (nu if regularised else 0.0)
        if regularised:
            per_anchor = per_anchor + nu * float(beta) / len(per_anchor)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_active,
        neg_used=neg_active,
        extras={"grad_beta": grad_beta},
    )


ENTRY = LossEntry(
    name="margin",
    function=value_and_grad,
    hyper={
        "margin": number(at_least=0),
        "beta": either(
            number(),
            non_empty_mapping(integer(), number(), "a non-empty {class id (int): finite number} mapping (per-class betas)"),
        ),
        "nu": number(at_least=0),
        "pairing": one_of("pairs", "triplets"),
        "dist_eps": number(at_least=0),
    },
    defaults={
        "paper": {"margin": 0.2, "beta": 1.2, "nu": 0.0, "pairing": "pairs", "dist_eps": 0.0},
        "pml": {"margin": 0.2, "beta": 1.2, "nu": 0.0, "pairing": "triplets", "dist_eps": 0.0},
    },
    reference="Wu, Manmatha, Smola, Kraehenbuehl. Sampling Matters in Deep Embedding Learning. ICCV 2017",
    similarities=("self",),
    variants=({}, {"nu": 0.1}, {"pairing": "triplets", "nu": 0.05}, {"pairing": "pairs", "dist_eps": 1e-8}),
    limits="extras['grad_beta'] = dL/dbeta (global or per class); the paper's distance-weighted sampling and the "
    "official codes' one sampled triplet per anchor are random miners and are not modelled",
    counterparts={"pytorch-metric-learning": "MarginLoss"},
)
