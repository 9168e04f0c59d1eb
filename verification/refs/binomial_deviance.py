"""Second opinions on the binomial deviance loss: torch formulation and plain loop.

Written from the formula (gpwref/losses/binomial_deviance.py docstring, docs/losses.md#binomial_deviance). There is
no real implementation to compare with under the paper profile: pytorch-metric-learning has no
binomial deviance loss, and the first MS author's code (DeepMetric-XW, bnu-wangxun/Deep_Metric
``losses/Binomial.py``) follows other rules (self by value S < 1, anchors without negatives
skipped). Under the ``official`` profile, which models those rules, that code is re-expressed here
(``deep_metric``, its default path without ``hard_mining``): positives = same label with S < 1,
per-anchor means of log(1 + exp(-2 (S - 0.5))) over positives and log(1 + exp(40 (S - 0.5))) over
negatives, an anchor without negatives skipped, sum divided by the batch size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from ._deep_metric import anchor_pairs
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


def deep_metric(X, labels, R, ref_labels, ref_self, normalize, *, alpha, beta, lam):
    """Deep_Metric BinomialLoss rules without hard mining (see the module docstring), in float64."""
    if alpha != 2.0:
        raise NotApplicable("Deep_Metric hard-codes the positive scale 2 (its alpha is the negative scale)")
    terms = []
    for pos_pair, neg_pair in anchor_pairs(X, labels, R, normalize, "BinomialLoss"):
        if len(pos_pair) == 0 or len(neg_pair) == 0:
            raise ValueError("Deep_Metric's mean over no positive is NaN (an anchor without negatives it skips)")
        terms.append(torch.mean(torch.log(1 + torch.exp(-2 * (pos_pair - lam))))
                     + torch.mean(torch.log(1 + torch.exp(beta * (neg_pair - lam)))))
    return sum(terms) / len(labels)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"official": {"Deep_Metric BinomialLoss rules": deep_metric}},
)
