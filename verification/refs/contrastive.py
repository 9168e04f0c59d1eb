"""Second opinions on the contrastive loss: torch formulation, plain loop, pytorch-metric-learning.

Written from the formulas (gpwref/losses/contrastive.py docstring, docs/losses.md#contrastive) without calling
gpwref's vectorised code. Only the specification's constant DUPLICATE_SQ_DISTANCE is shared.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gpwref.losses.contrastive import DUPLICATE_SQ_DISTANCE
from ..common import NotApplicable, rules
from .contract import LossRefs


def torch_unit_distance(S: torch.Tensor) -> torch.Tensor:
    """sqrt(2 - 2S) with duplicates (2 - 2S <= DUPLICATE_SQ_DISTANCE) at exactly 0 with zero gradient."""
    squared = 2 - 2 * S
    apart = squared > DUPLICATE_SQ_DISTANCE
    return torch.where(apart, torch.sqrt(torch.where(apart, squared, torch.ones_like(squared))), torch.zeros_like(squared))


def torch_snap_duplicates(S: torch.Tensor) -> torch.Tensor:
    """Value exactly 1 where |2 - 2S| <= DUPLICATE_SQ_DISTANCE, keeping dS/dS = 1 there."""
    duplicate = (2 - 2 * S.detach()).abs() <= DUPLICATE_SQ_DISTANCE
    return torch.where(duplicate, S - S.detach() + 1, S)


def torch_loss(S, pos, neg, profile, *, distance, pos_margin, neg_margin, reduction):
    r = rules(profile)
    m = S.shape[0]
    if r.zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1:
        return (S * 0).sum()
    relu = torch.nn.functional.relu
    if distance == "cosine":
        S = torch_snap_duplicates(S)
        pos_terms = (1 - S) if pos_margin is None else relu(pos_margin - S)
        neg_terms = relu(S - neg_margin)
    else:
        d = torch_unit_distance(S)
        pos_terms = relu(d - (0.0 if pos_margin is None else pos_margin))
        neg_terms = relu(neg_margin - d)
    pos_terms, neg_terms = pos_terms[pos], neg_terms[neg]  # 1-D, ordered pairs
    if reduction == "anchor_sum":
        return (pos_terms.sum() + neg_terms.sum()) / m
    total = (S * 0).sum()
    for terms in (pos_terms, neg_terms):
        nonzero = terms[terms > 0]
        if len(nonzero):
            total = total + nonzero.mean()
    return total


def _term_and_slope(s: float, kind: str, distance: str, pos_margin, neg_margin) -> tuple[float, float]:
    """One pair's term t and dt/dS, from the closed forms (weight 0 at a hinge's kink)."""
    if distance == "cosine":
        if abs(2.0 - 2.0 * s) <= DUPLICATE_SQ_DISTANCE:
            s = 1.0  # a duplicated pair sits exactly at S = 1
        if kind == "pos":
            if pos_margin is None:
                return 1.0 - s, -1.0
            return (pos_margin - s, -1.0) if pos_margin - s > 0 else (0.0, 0.0)
        return (s - neg_margin, 1.0) if s - neg_margin > 0 else (0.0, 0.0)
    q = 2.0 - 2.0 * s
    d = math.sqrt(q) if q > DUPLICATE_SQ_DISTANCE else 0.0
    inv_d = 1.0 / d if d > 0 else 0.0  # |dd/dS| = 1/d, 0 for a duplicate
    if kind == "pos":
        p = 0.0 if pos_margin is None else pos_margin
        return (d - p, -inv_d) if d - p > 0 else (0.0, 0.0)
    return (neg_margin - d, inv_d) if neg_margin - d > 0 else (0.0, 0.0)


def loop(S, pos, neg, profile, *, distance, pos_margin, neg_margin, reduction):
    r = rules(profile)
    m, n = S.shape
    G = np.zeros((m, n))
    if r.zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1:
        return 0.0, G
    terms = {"pos": [], "neg": []}  # (i, j, t, slope)
    for i in range(m):
        for j in range(n):
            kind = "pos" if pos[i, j] else "neg" if neg[i, j] else None
            if kind is None:
                continue
            t, slope = _term_and_slope(float(S[i, j]), kind, distance, pos_margin, neg_margin)
            terms[kind].append((i, j, t, slope))
    total = 0.0
    for kind, items in terms.items():
        if reduction == "anchor_sum":
            counted, c = items, 1.0 / m
        else:
            counted = [item for item in items if item[2] > 0]
            c = 1.0 / len(counted) if counted else 0.0
        for i, j, t, slope in counted:
            total += t * c
            G[i, j] += slope * c
    return total, G


# ----------------------------------------------------------------------------------------------
# Real implementation: pytorch-metric-learning's ContrastiveLoss.


def pml(X, labels, R, ref_labels, ref_self, normalize, *, distance, pos_margin, neg_margin, reduction):
    """ContrastiveLoss(pos_margin, neg_margin) with LpDistance (euclidean) or CosineSimilarity (cosine).

    reduction avg_nonzero = its default AvgNonZeroReducer per sub-loss; anchor_sum = SumReducer per
    sub-loss divided by m here.
    """
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import SumReducer

    if not normalize:
        raise NotApplicable("PML's distances always normalise rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    if pos_margin is None:
        raise NotApplicable("PML's ContrastiveLoss always hinges the positive term ([pos_margin - S]_+)")
    if distance == "euclidean":
        refuse_cdist_matmul_on_duplicates(X, R)
    elif min(abs(pos_margin - 1), abs(neg_margin - 1)) <= 1e-9 and has_duplicated_rows(X, R):
        raise NotApplicable(
            "duplicated rows with a hinge at S = 1: PML's CosineSimilarity gives them S = 1 +- a few ulps, so whether "
            "AvgNonZero counts the pair is decided by rounding; gpwref puts duplicates exactly at S = 1"
        )
    kwargs = {"distance": LpDistance() if distance == "euclidean" else CosineSimilarity()}
    if reduction == "anchor_sum":
        kwargs["reducer"] = SumReducer()
    loss_fn = ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, **kwargs)
    y = torch.as_tensor(labels)
    value = loss_fn(X, y, None, R, None if R is None else torch.as_tensor(ref_labels))
    return value / X.shape[0] if reduction == "anchor_sum" else value


def has_duplicated_rows(X, R) -> bool:
    """Whether two rows of the batch and reference set (together) are the same direction (2 - 2 u.v <= 1e-10)."""
    with torch.no_grad():
        rows = X if R is None else torch.cat([X, R])
        U = torch.nn.functional.normalize(rows, dim=1)
        close = (2 - 2 * U @ U.T) <= 1e-10
        close.fill_diagonal_(False)
    return bool(close.any())


def refuse_cdist_matmul_on_duplicates(X, R) -> None:
    """torch.cdist switches to |x|^2 + |y|^2 - 2 x.y above 25 rows (use_mm_for_euclid_dist_if_necessary);
    for duplicated rows that formula returns ~2e-8 instead of 0, so AvgNonZero counts those pairs."""
    rows = X.shape[0] if R is None else max(X.shape[0], R.shape[0])
    if rows > 25 and has_duplicated_rows(X, R):
        raise NotApplicable("torch.cdist uses its matmul formula above 25 rows and gives ~1e-8, not 0, for duplicated rows")


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
