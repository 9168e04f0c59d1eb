r"""Contrastive loss: the MS paper's similarity form and pytorch-metric-learning's distance form.

Every ordered pair (i, j) (row i = anchor) gets one term, on the pair's similarity or distance
(``distance``):

* ``distance="cosine"`` (the MS paper, Wang et al. 2019, Sec. 3; DeepMetric-XW ``Contrastive.py``)::

      positive  t_ij = 1 - S_ij                      (pos_margin=None: every positive is pulled)
                t_ij = [pos_margin - S_ij]_+         (pos_margin set: PML with CosineSimilarity)
      negative  t_ij = [S_ij - neg_margin]_+

* ``distance="euclidean"`` (PML's default ``LpDistance``; Hadsell et al. 2006 without the squares),
  on the unit-sphere distance d_ij = sqrt(max(2 - 2 S_ij, 0)) (``unit_distance``)::

      positive  t_ij = [d_ij - pos_margin]_+         (pos_margin=None means 0)
      negative  t_ij = [neg_margin - d_ij]_+

``reduction``:

* ``"anchor_sum"`` (MS paper): L = (1/m) sum_i ( sum_{j in P_i} t_ij + sum_{j in N_i} t_ij ).
* ``"avg_nonzero"`` (PML: AvgNonZeroReducer on each sub-loss, sub-losses summed by
  MultipleReducers): L = mean{t_ij > 0 : positive} + mean{t_ij > 0 : negative}, a mean over an
  empty set being 0. Z_pos, Z_neg = the number of positive / negative terms > 0.

GPW weights G_ij = dL/dS_ij, c = 1/m (anchor_sum) or 1/Z_pos, 1/Z_neg (avg_nonzero)::

    cosine     positive: -c (every positive when pos_margin=None, else S_ij < pos_margin)
               negative: +c where S_ij > neg_margin
    euclidean  positive: -c / d_ij where d_ij > pos_margin     (dd/dS = -1/d)
               negative: +c / d_ij where d_ij < neg_margin

The weights use the self-similarity only (S_ij against a constant); the avg_nonzero divisor is a
count over the batch, not a comparison with other pairs.

Rules:

* A hinge exactly at 0 has weight 0 (torch's relu). Under avg_nonzero a term counts iff it is > 0,
  so a linear positive term 1 - S_ij <= 0 (possible with ``normalize=False``) is left out.
* Duplicates. S of a duplicated pair is 1 only up to rounding (1 +- a few ulps), so d computed
  from it is noise of size sqrt(ulp) ~ 1e-8, and a hinge at S = 1 (pos_margin = 1) would be
  decided by that noise. A pair with |2 - 2 S_ij| <= DUPLICATE_SQ_DISTANCE (1e-12, i.e. within
  5e-13 of S = 1; for S computed in float32 the cut-off scaled to float32's round-off, 5.4e-4:
  ``rules.duplicate_cutoff``) is a duplicate and sits exactly at S = 1, d = 0 in every term and hinge
  (``snap_duplicates``). Slopes: cosine keeps dS/dS = 1 (the form is smooth there); euclidean
  takes dd/dS = 0 at d = 0 (also for 2 - 2S < 0), as torch.cdist gives exactly 0 for identical
  rows with a zero subgradient. So a duplicated negative counts in the value (t = neg_margin) with
  weight 0 under euclidean, and a duplicated positive has t = 0 under a hinge at S = 1 or d = 0.
* Profile rule ``zero_if_at_most_one_pair`` (PML's GenericPairLoss): with at most one positive and
  at most one negative pair in the whole batch the loss is 0 and G is 0.
* Anchors with no positive (singletons) or no negative (one class) only lose that half; m = 1 gives
  0. Euclidean margins must be >= 0 (they are distances).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, one_of, optional
from ..pairs import PairResult, Pairs, zero_by_pair_count
from ..profiles import Profile
from ..rules import DUPLICATE_SQ_DISTANCE, check_margins, duplicate_cutoff


def snap_duplicates(S: np.ndarray) -> np.ndarray:
    """S with every duplicated pair (|2 - 2S| <= the cut-off of S's dtype, ``rules.duplicate_cutoff``) set to exactly 1."""
    return np.where(np.abs(2.0 - 2.0 * S) <= duplicate_cutoff(S.dtype, DUPLICATE_SQ_DISTANCE), 1.0, S)


def unit_distance(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-sphere distance d = sqrt(max(2 - 2S, 0)) and its slope dd/dS = -1/d (0 where d = 0).

    Pairs with 2 - 2S <= the duplicate cut-off of S's dtype (DUPLICATE_SQ_DISTANCE in float64; see
    ``rules.duplicate_cutoff``), duplicates and S > 1, get d = 0 exactly, slope 0.
    """
    squared = 2.0 - 2.0 * S
    apart = squared > duplicate_cutoff(S.dtype, DUPLICATE_SQ_DISTANCE)
    d = np.sqrt(np.where(apart, squared, 0.0))
    slope = np.divide(-1.0, d, out=np.zeros_like(d), where=apart)
    return d, slope


def pair_terms(S: np.ndarray, distance: str, pos_margin: float | None, neg_margin: float):
    """Per-pair terms and their slopes dt/dS for both kinds (before masking by pos/neg)."""
    if distance == "cosine":
        S = snap_duplicates(S)
        if pos_margin is None:
            pos_term = 1.0 - S
            pos_slope = np.full_like(S, -1.0)
        else:
            raw = pos_margin - S
            pos_term = np.maximum(raw, 0.0)
            pos_slope = np.where(raw > 0, -1.0, 0.0)
        raw = S - neg_margin
        neg_term = np.maximum(raw, 0.0)
        neg_slope = np.where(raw > 0, 1.0, 0.0)
    else:
        d, dd_dS = unit_distance(S)
        raw = d - (0.0 if pos_margin is None else pos_margin)
        pos_term = np.maximum(raw, 0.0)
        pos_slope = np.where(raw > 0, dd_dS, 0.0)
        raw = neg_margin - d
        neg_term = np.maximum(raw, 0.0)
        neg_slope = np.where(raw > 0, -dd_dS, 0.0)
    return pos_term, pos_slope, neg_term, neg_slope


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    distance: str,
    pos_margin: float | None,
    neg_margin: float,
    reduction: str,
) -> PairResult:
    check_margins(distance, pos_margin=pos_margin, neg_margin=neg_margin)
    m = S.shape[0]
    pos, neg = pairs.pos, pairs.neg
    if zero_by_pair_count(profile, pos, neg):
        pos, neg = np.zeros_like(pos), np.zeros_like(neg)
    pos_term, pos_slope, neg_term, neg_slope = pair_terms(S, distance, pos_margin, neg_margin)

    if reduction == "avg_nonzero":
        pos_counted = pos & (pos_term > 0)
        neg_counted = neg & (neg_term > 0)
        pos_scale = 1.0 / pos_counted.sum() if pos_counted.any() else 0.0
        neg_scale = 1.0 / neg_counted.sum() if neg_counted.any() else 0.0
    elif reduction == "anchor_sum":
        linear = distance == "cosine" and pos_margin is None
        pos_counted = pos.copy() if linear else pos & (pos_term > 0)
        neg_counted = neg & (neg_term > 0)
        pos_scale = neg_scale = 1.0 / m
    else:  # pragma: no cover - hyper-parameters are validated by the catalog
        raise ValueError(reduction)

    pos_part = np.where(pos_counted, pos_term, 0.0) * pos_scale
    neg_part = np.where(neg_counted, neg_term, 0.0) * neg_scale
    per_anchor = pos_part.sum(axis=1) + neg_part.sum(axis=1)
    grad_sim = np.where(pos_counted, pos_slope * pos_scale, 0.0) + np.where(neg_counted, neg_slope * neg_scale, 0.0)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_counted,
        neg_used=neg_counted,
        extras={"active_pos_pairs": int(pos_counted.sum()), "active_neg_pairs": int(neg_counted.sum())},
    )


ENTRY = LossEntry(
    name="contrastive",
    function=value_and_grad,
    hyper={
        "distance": one_of("cosine", "euclidean"),
        "pos_margin": optional(number(), "no hinge on positives"),
        "neg_margin": number(),
        "reduction": one_of("anchor_sum", "avg_nonzero"),
    },
    defaults={
        "paper": {"distance": "cosine", "pos_margin": None, "neg_margin": 0.5, "reduction": "anchor_sum"},
        "pml": {"distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0, "reduction": "avg_nonzero"},
    },
    reference="Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping. CVPR 2006; "
    "similarity form: Wang et al. CVPR 2019 (MS paper)",
    similarities=("self",),
    variants=(
        {},
        {"distance": "cosine", "pos_margin": 1.0, "neg_margin": 0.5, "reduction": "avg_nonzero"},
        {"distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0, "reduction": "anchor_sum"},
    ),
    limits="Hadsell's squared terms are not modelled (unsquared hinges only, as PML and the MS paper); "
    "euclidean distances are computed from S, so pairs with 2 - 2S <= 1e-12 count as duplicates (d = 0)",
    counterparts={"pytorch-metric-learning": "ContrastiveLoss"},
)
