"""Second opinions on the paired-embedding domain-transfer loss: torch on embedding differences, plain loop.

The torch formulation uses squared distances between the unit rows, 2 - 2 S written as the
distance of S's own definition (||u||^2 + ||v||^2 - 2 u.v with ||u|| = 1), not gpwref's code.
No real implementation is installed (the paper's code is Caffe).
"""

from __future__ import annotations

import numpy as np
import torch

from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, margin):
    one = torch.ones((), dtype=S.dtype)
    squared_distance = one + one - 2 * S  # ||u_i||^2 + ||v_j||^2 - 2 u_i.v_j on unit rows
    value = squared_distance[pos].sum() / max(int(pos.sum()), 1)
    if margin is not None:
        value = value + torch.relu(S[neg] - margin).sum() / max(int(neg.sum()), 1)
    return value


def loop(S, pos, neg, profile, *, margin):
    m, n = S.shape
    n_pos = sum(1 for i in range(m) for j in range(n) if pos[i, j])
    n_neg = sum(1 for i in range(m) for j in range(n) if neg[i, j])
    total = 0.0
    G = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            if pos[i, j]:
                total += (2.0 - 2.0 * S[i, j]) / n_pos
                G[i, j] = -2.0 / n_pos
            elif neg[i, j] and margin is not None and S[i, j] > margin:
                total += (S[i, j] - margin) / n_neg
                G[i, j] = 1.0 / n_neg
    return total, G


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
)
