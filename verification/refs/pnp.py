"""Second opinions on PNP: torch formulation, plain loop, PML PNPLoss."""

from __future__ import annotations

import math

import numpy as np
import torch

from verification.common import NotApplicable
from verification.refs.smooth_ap import _sigmoid, with_query


def _x_minus_log1p_torch(x):
    small = x.detach() < 0.1
    xs = torch.where(small, x, torch.zeros_like(x))
    series = sum(((-1.0) ** k) * xs**k / k for k in range(2, 22))
    return torch.where(small, series, x - torch.log1p(torch.where(small, torch.zeros_like(x), x)))


def _penalty_torch(R, variant, b, alpha):
    if variant == "O":
        return R
    if variant == "Ds":
        return torch.log1p(R)
    if variant == "Iu":
        return (1 + R) * torch.log1p(R)
    if variant == "Ib":
        return _x_minus_log1p_torch(b * R) / b**2
    return -torch.expm1(-alpha * torch.log1p(R))  # Dq: 1 - (1 + R)^-alpha


def torch_loss(S, pos, neg, profile, *, variant, b, alpha, anneal, include_query, sigmoid_clamp):
    has_pos = pos.any(dim=1, keepdim=True)
    S, pos, neg = with_query(S, pos, neg, include_query)
    if include_query:  # PML sets the diagonal only for anchors of positive pairs
        pos = torch.cat([pos[:, :-1], pos[:, -1:] & has_pos], dim=1)
    D = S[:, :, None] - S[:, None, :]  # [i, n, p] = s_n - s_p
    R = (_sigmoid(D, anneal, sigmoid_clamp) * neg[:, :, None]).sum(dim=1)  # [i, p]
    F = torch.where(pos, _penalty_torch(R, variant, b, alpha), torch.zeros_like(R))
    alive = pos.any(dim=1)
    if not alive.any():
        return (S * 0).sum()
    return (F.sum(dim=1)[alive] / pos.sum(dim=1)[alive]).mean()


def loop(S, pos, neg, profile, *, variant, b, alpha, anneal, include_query, sigmoid_clamp):
    m, n = S.shape

    def sig(x):
        e = -x / anneal
        if sigmoid_clamp is not None:
            e = min(max(e, -sigmoid_clamp), sigmoid_clamp)
        return 1 / (1 + math.exp(e)) if e < 700 else 0.0

    def slope(x):
        e = -x / anneal
        if (sigmoid_clamp is not None and abs(e) > sigmoid_clamp) or abs(e) > 700:
            return 0.0
        return math.exp(-abs(e)) / (1 + math.exp(-abs(e))) ** 2 / anneal

    def F(R):
        if variant == "O":
            return R, 1.0
        if variant == "Ds":
            return math.log1p(R), 1 / (1 + R)
        if variant == "Iu":
            return (1 + R) * math.log1p(R), 1 + math.log1p(R)
        if variant == "Ib":
            x = b * R
            value = sum((-1) ** k * x**k / k for k in range(2, 22)) if x < 0.1 else x - math.log1p(x)
            return value / b**2, R / (1 + b * R)
        return -math.expm1(-alpha * math.log1p(R)), alpha * (1 + R) ** (-alpha - 1)  # 1 - (1 + R)^-alpha

    queries = []
    for i in range(m):
        P = [(S[i, j], j) for j in range(n) if pos[i, j]]
        if P and include_query:
            P.append((1.0, None))
        N = [(S[i, j], j) for j in range(n) if neg[i, j]]
        if P:
            queries.append((i, P, N))
    value, G = 0.0, np.zeros((m, n))
    for i, P, N in queries:
        for sp, p in P:
            R = sum(sig(sn - sp) for sn, _ in N)
            f, df = F(R)
            value += f / len(P) / len(queries)
            for sn, k in N:
                G[i, k] += df * slope(sn - sp) / len(P) / len(queries)
            if p is not None:
                G[i, p] = -df * sum(slope(sn - sp) for sn, _ in N) / len(P) / len(queries)
    return value, G


def pml(X, labels, R, ref_labels, ref_self, normalize, *, variant, b, alpha, anneal, include_query, sigmoid_clamp):
    """pytorch-metric-learning PNPLoss: the query is its own positive, exponent clamped at 50."""
    from pytorch_metric_learning.losses import PNPLoss

    if not include_query or sigmoid_clamp != 50.0:
        raise NotApplicable("PML's PNP counts the query as its own positive and clamps the exponent at 50")
    if R is not None or not normalize:
        raise NotApplicable("PML's PNP takes no ref_emb and normalises rows")
    return PNPLoss(b=b, alpha=alpha, anneal=anneal, variant=variant)(X, torch.as_tensor(labels))


REAL = {"pml": {"pytorch-metric-learning": pml}}
