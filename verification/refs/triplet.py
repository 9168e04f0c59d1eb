"""Second opinions on the triplet loss: torch formulation, plain loop, pytorch-metric-learning.

Written from the formulas (gpwref/losses/triplet.py docstring, docs/losses.md#triplet) without calling
gpwref's vectorised code. The torch formulation builds the (m, n, n) triplet tensor; the loop
enumerates triplets one by one and adds the closed-form weights (+-1/Z, or +-1/(Z d)).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gpwref.losses.contrastive import DUPLICATE_SQ_DISTANCE
from gpwref.losses.triplet import TIE_GAP
from ..common import NotApplicable
from .contrastive import refuse_cdist_matmul_on_duplicates, has_duplicated_rows, torch_snap_duplicates, torch_unit_distance
from .contract import LossRefs


def _first_index_of_extreme(values: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Per row, the lowest column index among the masked entries within TIE_GAP of the masked max (or min)."""
    fill = -math.inf if largest else math.inf
    masked = torch.where(mask, values, torch.full_like(values, fill))
    if largest:
        hits = mask & (masked >= masked.amax(dim=1, keepdim=True) - TIE_GAP)
    else:
        hits = mask & (masked <= masked.amin(dim=1, keepdim=True) + TIE_GAP)
    columns = torch.arange(values.shape[1]).expand_as(values)
    return torch.where(hits, columns, values.shape[1]).amin(dim=1)


def _snapped(gap: torch.Tensor) -> torch.Tensor:
    """A tie (|gap| <= TIE_GAP) has value exactly 0 and keeps its gradient."""
    return torch.where(gap.detach().abs() <= TIE_GAP, gap - gap.detach(), gap)


def torch_loss(S, pos, neg, profile, *, mining, margin, distance, reduction, miner_margin, semi_hard_bound):
    D = -torch_snap_duplicates(S) if distance == "cosine" else torch_unit_distance(S)
    Dd = D.detach()
    if mining == "batch_hard":
        anchors = torch.nonzero(pos.any(dim=1) & neg.any(dim=1)).flatten()
        if len(anchors) == 0:
            return (S * 0).sum()
        p = _first_index_of_extreme(Dd, pos, largest=True)[anchors]
        q = _first_index_of_extreme(Dd, neg, largest=False)[anchors]
        losses = torch.relu(-_snapped(D[anchors, q] - D[anchors, p]) + margin)
    else:
        mined = pos[:, :, None] & neg[:, None, :]
        gap = _snapped(D[:, None, :] - D[:, :, None])  # [i, p, n] = D_in - D_ip
        if mining == "semi_hard":
            window = margin if miner_margin is None else miner_margin
            g = gap.detach()
            upper = g <= window if semi_hard_bound == "inclusive" else g < window
            mined = mined & (g > 0) & upper
        losses = torch.relu(-gap + margin)[mined]
    if reduction == "avg_nonzero":
        losses = losses[losses > 0]
    if len(losses) == 0:
        return (S * 0).sum()
    return losses.mean()


def loop(S, pos, neg, profile, *, mining, margin, distance, reduction, miner_margin, semi_hard_bound):
    m, n = S.shape

    def dist(i, j):
        """(D_ij, |dD/dS_ij|): cosine D = -S with slope magnitude 1; euclidean d and 1/d."""
        if distance == "cosine":
            s = float(S[i, j])
            return (-1.0 if abs(2.0 - 2.0 * s) <= DUPLICATE_SQ_DISTANCE else -s), 1.0
        q = 2.0 - 2.0 * float(S[i, j])
        if q <= DUPLICATE_SQ_DISTANCE:
            return 0.0, 0.0
        d = math.sqrt(q)
        return d, 1.0 / d

    def gap_of(i, p, q):
        gap = dist(i, q)[0] - dist(i, p)[0]
        return 0.0 if abs(gap) <= TIE_GAP else gap

    triplets = []
    for i in range(m):
        P = [j for j in range(n) if pos[i, j]]
        N = [j for j in range(n) if neg[i, j]]
        if not P or not N:
            continue
        if mining == "batch_hard":
            far = max(dist(i, j)[0] for j in P)
            near = min(dist(i, j)[0] for j in N)
            p_star = next(j for j in P if dist(i, j)[0] >= far - TIE_GAP)  # lowest index among ties
            q_star = next(j for j in N if dist(i, j)[0] <= near + TIE_GAP)
            triplets.append((i, p_star, q_star))
            continue
        window = margin if miner_margin is None else miner_margin
        for p in P:
            for q in N:
                if mining == "semi_hard":
                    gap = gap_of(i, p, q)
                    inside = gap <= window if semi_hard_bound == "inclusive" else gap < window
                    if not (gap > 0 and inside):
                        continue
                triplets.append((i, p, q))
    losses = []
    for i, p, q in triplets:
        violation = -gap_of(i, p, q) + margin
        losses.append(max(violation, 0.0))
    divisor = len(triplets) if reduction == "mean" else sum(1 for l in losses if l > 0)
    G = np.zeros((m, n))
    if divisor == 0:
        return 0.0, G
    total = 0.0
    for (i, p, q), l in zip(triplets, losses):
        if l > 0:
            total += l / divisor
            # pull the positive (weight 1 per triplet, times 1/d on distances), push the negative
            G[i, p] -= dist(i, p)[1] / divisor
            G[i, q] += dist(i, q)[1] / divisor
    return total, G


# ----------------------------------------------------------------------------------------------
# Real implementation: pytorch-metric-learning TripletMarginLoss (+ BatchHardMiner / TripletMarginMiner).


def pml(X, labels, R, ref_labels, ref_self, normalize, *, mining, margin, distance, reduction, miner_margin, semi_hard_bound):
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import BatchHardMiner, TripletMarginMiner
    from pytorch_metric_learning.reducers import MeanReducer

    if not normalize:
        raise NotApplicable("PML's distances always normalise rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    if mining == "semi_hard" and semi_hard_bound == "strict":
        raise NotApplicable("PML's TripletMarginMiner keeps triplet_margin <= margin (inclusive bound)")
    if distance == "euclidean":
        refuse_cdist_matmul_on_duplicates(X, R)
    elif has_duplicated_rows(X, R):
        raise NotApplicable(
            "duplicated rows: PML's CosineSimilarity (a matmul) gives equal similarities that differ by ulps, so its "
            "ties, semi-hard window and hinge at 0 are decided by rounding; gpwref treats gaps within 1e-12 as ties"
        )

    def make_distance():
        return LpDistance() if distance == "euclidean" else CosineSimilarity()

    kwargs = {"reducer": MeanReducer()} if reduction == "mean" else {}
    loss_fn = TripletMarginLoss(margin=margin, distance=make_distance(), **kwargs)
    y = torch.as_tensor(labels)
    yr = None if R is None else torch.as_tensor(ref_labels)
    indices = None
    if mining == "batch_hard":
        indices = BatchHardMiner(distance=make_distance())(X, y, R, yr)
    elif mining == "semi_hard":
        window = margin if miner_margin is None else miner_margin
        indices = TripletMarginMiner(margin=window, type_of_triplets="semihard", distance=make_distance())(X, y, R, yr)
    return loss_fn(X, y, indices, R, yr)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
