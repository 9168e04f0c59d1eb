"""Second opinions on the binomial deviance loss: torch formulation and plain loop.

Written from the formula (gpwref/losses/binomial_deviance.py docstring, catalog.md 2.4). There is
no real implementation to compare with under the paper profile: pytorch-metric-learning has no
binomial deviance loss, and the first MS author's code (DeepMetric-XW Binomial.py) follows other
rules (self by value S < 1, anchors without negatives skipped), so ``REFS.real`` is empty.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, alpha, beta, lam):
    m = S.shape[0]
    zero = torch.zeros((), dtype=S.dtype)
    # log(1 + e^z) = logaddexp(0, z): exact gradient sigma(z) (F.softplus linearises above 20).
    pos_terms = torch.logaddexp(zero, alpha * (lam - S)) * pos
    neg_terms = torch.logaddexp(zero, beta * (S - lam)) * neg
    pos_count = pos.sum(dim=1).clamp(min=1)
    neg_count = neg.sum(dim=1).clamp(min=1)
    return (pos_terms.sum(dim=1) / pos_count + neg_terms.sum(dim=1) / neg_count).sum() / m


def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _sigma(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def loop(S, pos, neg, profile, *, alpha, beta, lam):
    """Per anchor; weights from the paper's closed form w+ = alpha sigma(alpha (lam - S)) / |P_i|, w- likewise."""
    m, n = S.shape
    total = 0.0
    G = np.zeros((m, n))
    for i in range(m):
        P = [j for j in range(n) if pos[i, j]]
        N = [j for j in range(n) if neg[i, j]]
        if P:
            total += sum(_softplus(alpha * (lam - S[i, j])) for j in P) / len(P) / m
            for j in P:
                G[i, j] = -alpha * _sigma(alpha * (lam - S[i, j])) / len(P) / m
        if N:
            total += sum(_softplus(beta * (S[i, j] - lam)) for j in N) / len(N) / m
            for j in N:
                G[i, j] = beta * _sigma(beta * (S[i, j] - lam)) / len(N) / m
    return total, G


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
)
