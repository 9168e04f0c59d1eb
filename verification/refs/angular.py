"""Second opinions on the angular loss: torch triple tensor, plain loop, pytorch-metric-learning.

Written from the formula (gpwref/losses/angular.py docstring; Wang et al., ICCV 2017) without calling
gpwref's code. The real implementation is pytorch-metric-learning 2.9's ``AngularLoss``
(pytorch_metric_learning/losses/angular_loss.py), fed the L2-normalised rows: it normalises the
anchors and positives itself but multiplies by the raw reference rows, so only on unit rows is it a
function of the cosines (the module docstring says why gpwref takes that reading).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, alpha):
    t = math.tan(math.radians(alpha)) ** 2
    m = S.shape[0]
    # f[a, p, n] = 4 t (S_an + S_pn) - 2 (1 + t) S_ap on a (m, m, m) grid, kept where (a, p) is
    # positive and (a, n) negative; a zero logit per (a, p) gives the "1 +".
    f = 4 * t * (S[:, None, :] + S[None, :, :]) - 2 * (1 + t) * S[:, :, None]
    keep = pos[:, :, None] & neg[:, None, :]
    f = torch.where(keep, f, torch.full_like(f, -math.inf))
    f = torch.cat([f, torch.zeros(m, m, 1, dtype=S.dtype)], dim=2)
    terms = torch.logsumexp(f, dim=2)[pos]
    return terms.mean() if terms.numel() else (S * 0).sum()


def loop(S, pos, neg, profile, *, alpha):
    t = math.tan(math.radians(alpha)) ** 2
    m, n = S.shape
    G = np.zeros((m, n))
    pairs = [(a, p) for a in range(m) for p in range(n) if pos[a, p]]
    value = 0.0
    for a, p in pairs:
        logits = {k: 4 * t * (S[a, k] + S[p, k]) - 2 * (1 + t) * S[a, p] for k in range(n) if neg[a, k]}
        top = max([0.0, *logits.values()])
        denominator = math.exp(-top) + sum(math.exp(z - top) for z in logits.values())
        value += (top + math.log(denominator)) / len(pairs)
        for k, z in logits.items():
            w = math.exp(z - top) / denominator
            G[a, k] += 4 * t * w / len(pairs)
            G[p, k] += 4 * t * w / len(pairs)
            G[a, p] -= 2 * (1 + t) * w / len(pairs)
    return value, G


def pml(X, labels, R, ref_labels, ref_self, normalize, *, alpha):
    """AngularLoss(alpha) with its defaults (LpDistance, MeanReducer), on the L2-normalised rows."""
    from pytorch_metric_learning.losses import AngularLoss

    if not normalize:
        raise NotApplicable("PML's AngularLoss normalises anchors and positives (not the negatives): not a loss of raw S")
    if R is not None:
        raise NotApplicable("the angular loss needs the batch as its own reference set")
    unit = torch.nn.functional.normalize(X, dim=1, eps=0.0)
    return AngularLoss(alpha=alpha)(unit, torch.as_tensor(labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning (unit rows)": pml}},
)
