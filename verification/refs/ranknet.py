"""Second opinions on RankNet: torch formulation over a triple tensor, a plain loop, and PML.

Written from the formula (docs/losses.md#ranknet) without calling gpwref's code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs


def torch_triples(S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, term, reduction: str) -> torch.Tensor:
    """L = (1/Z) sum over the (i, p, n) triple tensor of term(S_in - S_ip)."""
    gap = S[:, None, :] - S[:, :, None]  # gap[i, p, n] = S_in - S_ip
    triple = pos[:, :, None] & neg[:, None, :]
    values = torch.where(triple, term(gap), torch.zeros((), dtype=S.dtype))
    if reduction == "sum":
        return values.sum()
    counted = triple & (values > 0) if reduction == "mean_nonzero" else triple
    return values.sum() / max(int(counted.sum()), 1)


def torch_loss(S, pos, neg, profile, *, sigma, reduction):
    zero = torch.zeros((), dtype=S.dtype)
    return torch_triples(S, pos, neg, lambda gap: torch.logaddexp(zero, sigma * gap), reduction)


def softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def loop_triples(S, pos, neg, term, weight, reduction):
    """Plain loops over anchors, positives, negatives; weight(gap) is the closed-form pair weight."""
    m, n = S.shape
    total, count = 0.0, 0
    G = np.zeros((m, n))
    for i in range(m):
        for p in range(n):
            if not pos[i, p]:
                continue
            for q in range(n):
                if not neg[i, q]:
                    continue
                value = term(S[i, q] - S[i, p])
                if reduction == "mean_nonzero" and not value > 0:
                    continue
                total += value
                count += 1
                w = weight(S[i, q] - S[i, p])
                G[i, p] -= w
                G[i, q] += w
    Z = 1.0 if reduction == "sum" else max(count, 1)
    return total / Z, G / Z


def loop(S, pos, neg, profile, *, sigma, reduction):
    return loop_triples(S, pos, neg, lambda g: softplus(sigma * g), lambda g: sigma * sigmoid(sigma * g), reduction)


def pml_triplet(X, labels, R, ref_labels, ref_self, normalize, *, scale, margin, smooth, reduction):
    """PML TripletMarginLoss on dot products of the (normalised) rows scaled by sqrt(scale)."""
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer, SumReducer

    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    reducer = {"mean": MeanReducer, "mean_nonzero": AvgNonZeroReducer, "sum": SumReducer}[reduction]()
    loss_fn = TripletMarginLoss(
        margin=margin,
        smooth_loss=smooth,
        distance=DotProductSimilarity(normalize_embeddings=False),
        reducer=reducer,
    )
    root = math.sqrt(scale)
    U = torch.nn.functional.normalize(X, dim=1) if normalize else X
    y = torch.as_tensor(np.asarray(labels))
    if R is None:
        return loss_fn(root * U, y)
    V = torch.nn.functional.normalize(R, dim=1) if normalize else R
    return loss_fn(root * U, y, ref_emb=root * V, ref_labels=torch.as_tensor(np.asarray(ref_labels)))


def pml(X, labels, R, ref_labels, ref_self, normalize, *, sigma, reduction):
    """TripletMarginLoss(margin=0, smooth_loss=True) on sqrt(sigma)-scaled rows = RankNet with sigma."""
    return pml_triplet(X, labels, R, ref_labels, ref_self, normalize, scale=sigma, margin=0.0, smooth=True, reduction=reduction)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={
        "pml": {"pytorch-metric-learning TripletMarginLoss(smooth_loss=True)": pml},
        "paper": {"pytorch-metric-learning TripletMarginLoss(smooth_loss=True)": pml},
    },
)
