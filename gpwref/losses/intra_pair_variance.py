r"""Intra-pair variance loss, Yu and Tao, ICCV 2019 (as pytorch-metric-learning's IntraPairVarianceLoss).

Yu and Tao add this term to their tuplet margin loss: it penalises the spread of the positive
similarities below their mean and of the negative similarities above theirs. With P the batch's
positive pairs (ordered, self pairs excluded), N its negative pairs, their mean similarities
mu_P = (1/|P|) sum_P S_ij and mu_N = (1/|N|) sum_N S_ij, and the squared hinges::

    h_ij = [(1 - pos_eps) mu_P - S_ij]_+   (ij in P),     h_ij = [S_ij - (1 + neg_eps) mu_N]_+   (ij in N)

    L = (1/|P|) sum_P h_ij^2 + (1/|N|) sum_N h_ij^2

(each kind averaged over all its pairs: PML's default MeanReducer per sub-loss, summed; a kind with
no pair contributes 0). The means are not detached (PML takes ``torch.mean`` inside the graph), so
every pair of a kind is weighted through the mean. With H_P = sum_P h_ij and H_N = sum_N h_ij::

    G_ij = (2/|P|) ( (1 - pos_eps) H_P / |P| - h_ij )      (ij in P)
    G_ij = (2/|N|) ( h_ij - (1 + neg_eps) H_N / |N| )      (ij in N)

from dL_P/dS_kl = (1/|P|) sum_ij 2 h_ij ((1 - pos_eps)/|P| - [ij = kl]). Similarities used: self (h_ij)
and negative-relative (each pair against the mean of the pairs of its own kind, over the batch).

GPW sign: broken. A positive above the threshold (h_ij = 0) still gets G_ij = 2 (1 - pos_eps) H_P /
|P|^2 > 0 through the mean, i.e. it is pushed down towards the others (the loss shrinks the spread,
not the distance); likewise an easy negative gets G_ij < 0.

Edges: the squared hinge has a continuous derivative, so a pair exactly on its threshold is no kink of
G (weight 0 from its own term either way). Used pairs: every pair of a kind whose H is > 0 (all of
them carry weight through the mean); none when H = 0. PML's GenericPairLoss rule (zero loss when the
batch has at most one positive and one negative pair) applies under ``pml``, and it matters: a kind
with a single pair s has mean s and term [(1 - pos_eps) s - s]_+ = [-pos_eps s]_+, > 0 for s < 0.

Assumptions: the loss is defined under ``pml`` only (PML's defaults pos_eps = neg_eps = 0.01, its
mean per kind); the paper's combination with the tuplet margin loss is the user's sum of the two
entries. Evaluated directly: the hinges are differences of similarities of size <= 2, no cancellation
beyond theirs.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..pairs import PairResult, Pairs, zero_by_pair_count
from ..profiles import Profile


def _kind(S: np.ndarray, mask: np.ndarray, eps: float, positive: bool):
    """Per-entry squared terms, G and the used mask of one kind (positives or negatives)."""
    count = int(mask.sum())
    if count == 0:
        return np.zeros_like(S), np.zeros_like(S), np.zeros_like(mask)
    mean = float(S[mask].mean())
    gap = (1.0 - eps) * mean - S if positive else S - (1.0 + eps) * mean
    hinge = np.where(mask, np.maximum(gap, 0.0), 0.0)
    total = float(hinge.sum())
    if total == 0.0:
        return np.zeros_like(S), np.zeros_like(S), np.zeros_like(mask)
    if positive:
        grad = (2.0 / count) * ((1.0 - eps) * total / count - hinge)
    else:
        grad = (2.0 / count) * (hinge - (1.0 + eps) * total / count)
    return hinge**2 / count, np.where(mask, grad, 0.0), mask.copy()


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, pos_eps: float, neg_eps: float) -> PairResult:
    pos, neg = pairs.pos, pairs.neg
    if zero_by_pair_count(profile, pos, neg):
        pos, neg = np.zeros_like(pos), np.zeros_like(neg)
    pos_terms, pos_grad, pos_used = _kind(S, pos, pos_eps, positive=True)
    neg_terms, neg_grad, neg_used = _kind(S, neg, neg_eps, positive=False)
    per_anchor = pos_terms.sum(axis=1) + neg_terms.sum(axis=1)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=pos_grad + neg_grad,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="intra_pair_variance",
    function=value_and_grad,
    hyper={"pos_eps": number(at_least=0, below=1), "neg_eps": number(at_least=0, below=1)},
    defaults={"pml": {"pos_eps": 0.01, "neg_eps": 0.01}},
    reference="Yu, Tao. Deep Metric Learning with Tuplet Margin Loss. ICCV 2019",
    similarities=("self", "negative-relative"),
    gpw_sign=False,
    variants=({}, {"pos_eps": 0.1, "neg_eps": 0.05}),
    limits="not GPW-signed: through the (not detached) mean of each kind, a pair beyond its threshold gets "
    "the opposite weight; the paper's tuplet margin term is a separate entry (tuplet_margin)",
    counterparts={"pytorch-metric-learning": "IntraPairVarianceLoss"},
)
