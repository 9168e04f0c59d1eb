"""How bnu-wangxun/Deep_Metric's losses read a batch, shared by the refs that re-express them.

Its losses normalise the rows, form S = U U^T and take, for anchor i, the same-label entries with
S < 1 as positives (its self-pair rule) and the other-label entries as negatives.
"""

from __future__ import annotations

import numpy as np
import torch

from ..common import NotApplicable


def anchor_pairs(X, labels, R, normalize, class_name):
    """Per anchor, (positive similarities, negative similarities) as torch rows of S, in Deep_Metric's
    selection; NotApplicable where its S < 1 self rule and gpwref's official profile would differ."""
    if R is not None:
        raise NotApplicable(f"Deep_Metric's {class_name} works on the batch only")
    if not normalize:
        raise NotApplicable("Deep_Metric recognises the self pair by S < 1, which needs unit rows")
    U = torch.nn.functional.normalize(X, dim=1)
    sim = U @ U.T
    y = np.asarray(labels)
    S = sim.detach().numpy()
    same = y[:, None] == y[None, :]
    if np.any(np.diag(S) < 1.0):
        raise NotApplicable("x.x rounds below 1 on some row: Deep_Metric's S < 1 would keep the self pair")
    if np.any(same & ~np.eye(len(y), dtype=bool) & (S >= 1 - 1e-5)):
        raise NotApplicable("a same-label pair within 1e-5 of S = 1: Deep_Metric's S < 1 keeps it, the official profile drops it")
    return [(sim[i][torch.as_tensor(same[i] & (S[i] < 1))], sim[i][torch.as_tensor(~same[i])]) for i in range(len(y))]
