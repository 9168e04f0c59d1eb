r"""Threshold-consistent margin (TCM) loss, Zhang, Xu, Tang, Fang, Wu, Tighe, Xing, ICLR 2024.

TCM is a regulariser added to a base metric-learning loss: it penalises positive pairs whose cosine
similarity is at or below a margin m+ and negative pairs at or above a margin m-, each kind averaged
over the pairs it penalises. With P the positive pairs (ordered, self pairs excluded), N the
negative pairs, and the selected sets

    A+ = {ij in P : S_ij <= m+},    A- = {ij in N : S_ij >= m-}

    L = lambda+ (1/|A+|) sum_{A+} (m+ - S_ij)  +  lambda- (1/|A-|) sum_{A-} (S_ij - m-)

(a kind with an empty selected set contributes 0). This is pytorch-metric-learning's
``ThresholdConsistentMarginLoss`` (hyper-parameters lambda_plus, lambda_minus, margin_plus,
margin_minus; defaults 1, 1, 0.9, 0.5); it returns the regulariser alone, already reduced, and is not
a GenericPairLoss (no pair-count zero rule). GPW weights, the selection being piecewise constant::

    G_ij = -lambda+ / |A+|  (ij in A+),    G_ij = +lambda- / |A-|  (ij in A-),    0 elsewhere

Similarities used: self (the selection of each pair; the counts are over the batch). GPW-signed.

Edges: the selection is closed, as PML's ``<=`` and ``>=`` masks: a pair exactly on its margin is
selected, counted in |A+| (|A-|) and gets the full weight (autograd of ``(m+ - s) * mask`` gives
-mask/|A+|), although its term is 0. This differs from the hinge rule of docs/oracle-contract.md (a
hinge exactly at 0 has weight 0) on purpose: the mask is a selection, not a hinge. Because the
denominator counts the selected pairs, L jumps when a pair crosses its margin (unless the numerator
is 0); between crossings it is affine in S.

Assumptions: defined under ``pml`` only (PML's defaults; the paper's recommended margins depend on
the data set); the base loss TCM is added to is a separate entry. PML indexes the batch with the
reference set's indices (it takes ``embeddings[p]``, not ``ref_emb[p]``), so with a separate
reference set its value is not this loss: the real check runs on batches without ``ref=``.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def value_and_grad(
    S: np.ndarray, pairs: Pairs, profile: Profile, *, lambda_plus: float, lambda_minus: float, margin_plus: float, margin_minus: float
) -> PairResult:
    pos_sel = pairs.pos & (S <= margin_plus)
    neg_sel = pairs.neg & (S >= margin_minus)
    n_pos, n_neg = int(pos_sel.sum()), int(neg_sel.sum())
    pos_scale = lambda_plus / n_pos if n_pos else 0.0
    neg_scale = lambda_minus / n_neg if n_neg else 0.0
    terms = pos_scale * np.where(pos_sel, margin_plus - S, 0.0) + neg_scale * np.where(neg_sel, S - margin_minus, 0.0)
    per_anchor = terms.sum(axis=1)
    grad_sim = np.where(pos_sel, -pos_scale, 0.0) + np.where(neg_sel, neg_scale, 0.0)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_sel if pos_scale else np.zeros_like(pos_sel),
        neg_used=neg_sel if neg_scale else np.zeros_like(neg_sel),
    )


_MARGIN = number(at_least=-1, at_most=1, noun="a cosine")

ENTRY = LossEntry(
    name="threshold_consistent_margin",
    function=value_and_grad,
    hyper={
        "lambda_plus": number(at_least=0),
        "lambda_minus": number(at_least=0),
        "margin_plus": _MARGIN,
        "margin_minus": _MARGIN,
    },
    defaults={"pml": {"lambda_plus": 1.0, "lambda_minus": 1.0, "margin_plus": 0.9, "margin_minus": 0.5}},
    reference="Zhang, Xu, Tang, Fang, Wu, Tighe, Xing. Threshold-Consistent Margin Loss for Open-World Deep "
    "Metric Learning. ICLR 2024",
    similarities=("self",),
    variants=({}, {"lambda_plus": 0.5, "margin_plus": 0.3, "margin_minus": 0.0}),
    limits="the regulariser alone (add the base loss); a pair on its margin is selected with full weight, so L "
    "jumps when a pair crosses a margin; PML ignores ref_emb (indexes the batch), so its check runs without ref",
    counterparts={"pytorch-metric-learning": "ThresholdConsistentMarginLoss"},
)
