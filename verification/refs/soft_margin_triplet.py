"""Second opinions on the soft-margin triplet: torch triplet tensor, a plain loop, fast-reid's rules.

Written from the formula (Hermans et al. 2017, the soft margin on batch-hard or batch-all triplets)
without calling gpwref's loss code. The real implementation is fast-reid's ``TripletLoss`` with
``MARGIN = 0`` and ``HARD_MINING = True`` (JDAI-CV/fast-reid ``fastreid/modeling/losses/
triplet_loss.py`` and ``utils.py``), re-expressed here: rows divided by (norm + 1e-12), squared
distances |x|^2 + |y|^2 - 2 x.y clamped at 1e-12 before the square root, positives = same label
INCLUDING the anchor itself, hardest positive and negative by max/min over equal-length rows (it
needs the same number of positives and of negatives per anchor), ``soft_margin_loss`` = mean over all
rows of softplus(d_ap - d_an).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gpwref.losses.contrastive import DUPLICATE_SQ_DISTANCE
from gpwref.losses.triplet import TIE_GAP
from ..common import NotApplicable
from .contrastive import has_duplicated_rows, torch_unit_distance
from .contract import LossRefs
from .triplet import _first_index_of_extreme


def _softplus(x):
    return torch.logaddexp(torch.zeros_like(x), x)


def torch_loss(S, pos, neg, profile, *, mining):
    D = torch_unit_distance(S)
    if mining == "batch_hard":
        anchors = torch.nonzero(pos.any(dim=1) & neg.any(dim=1)).flatten()
        if len(anchors) == 0:
            return (S * 0).sum()
        p = _first_index_of_extreme(D.detach(), pos, largest=True)[anchors]
        q = _first_index_of_extreme(D.detach(), neg, largest=False)[anchors]
        losses = _softplus(D[anchors, p] - D[anchors, q])
    else:
        mined = pos[:, :, None] & neg[:, None, :]
        losses = _softplus(D[:, :, None] - D[:, None, :])[mined]  # [i, p, n] = d_ip - d_in
    if len(losses) == 0:
        return (S * 0).sum()
    return losses.mean()


def loop(S, pos, neg, profile, *, mining):
    m, n = S.shape

    def dist(i, j):
        """(d_ij, -dd/dS_ij = 1/d_ij); a duplicate sits at d = 0 with slope 0."""
        q = 2.0 - 2.0 * float(S[i, j])
        if q <= DUPLICATE_SQ_DISTANCE:
            return 0.0, 0.0
        return math.sqrt(q), 1.0 / math.sqrt(q)

    triplets = []
    for i in range(m):
        P = [j for j in range(n) if pos[i, j]]
        N = [j for j in range(n) if neg[i, j]]
        if not P or not N:
            continue
        if mining == "batch_hard":
            far = max(dist(i, j)[0] for j in P)
            near = min(dist(i, j)[0] for j in N)
            triplets.append((i, next(j for j in P if dist(i, j)[0] >= far - TIE_GAP),
                             next(j for j in N if dist(i, j)[0] <= near + TIE_GAP)))
        else:
            triplets.extend((i, p, q) for p in P for q in N)
    G = np.zeros((m, n))
    if not triplets:
        return 0.0, G
    total = 0.0
    for i, p, q in triplets:
        gap = dist(i, p)[0] - dist(i, q)[0]
        total += max(gap, 0.0) + math.log1p(math.exp(-abs(gap)))
        weight = 1.0 / (1.0 + math.exp(-gap))  # d softplus / d gap
        G[i, p] -= weight * dist(i, p)[1] / len(triplets)
        G[i, q] += weight * dist(i, q)[1] / len(triplets)
    return total / len(triplets), G


def fast_reid(X, labels, R, ref_labels, ref_self, normalize, *, mining):
    """fast-reid TripletLoss(MARGIN=0, NORM_FEAT=True, HARD_MINING=True) rules, in float64."""
    if mining != "batch_hard":
        raise NotApplicable("fast-reid's soft margin runs on hard_example_mining (or its softmax-weighted mining)")
    if R is not None:
        raise NotApplicable("fast-reid's TripletLoss works on the (gathered) batch only")
    if not normalize:
        raise NotApplicable("the formula is on L2-normalised rows (fast-reid's NORM_FEAT=True)")
    y = np.asarray(labels)
    same = y[:, None] == y[None, :]
    if len(set(same.sum(axis=1))) != 1 or same.sum(axis=1)[0] < 2 or same.all():
        raise NotApplicable("fast-reid needs P x K batches: K >= 2 of every class (the view per row needs equal "
                            "counts; an anchor without another positive would take itself, at 1e-6)")
    if has_duplicated_rows(X, R):
        raise NotApplicable("fast-reid clamps squared distances at 1e-12: a duplicated pair sits at 1e-6, not 0")
    unit = X / (X.norm(dim=1, keepdim=True) + 1e-12)
    squares = (unit * unit).sum(dim=1)
    dist = (squares[:, None] + squares[None, :] - 2 * unit @ unit.T).clamp(min=1e-12).sqrt()
    is_pos = torch.as_tensor(same)
    rows = len(y)
    d_ap = dist[is_pos].view(rows, -1).max(dim=1).values
    d_an = dist[~is_pos].view(rows, -1).min(dim=1).values
    return F.soft_margin_loss(d_an - d_ap, torch.ones(rows, dtype=dist.dtype))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"paper": {"fast-reid TripletLoss(MARGIN=0) rules": fast_reid}},
)
