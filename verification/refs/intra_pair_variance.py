"""Second opinions on the intra-pair variance loss: torch formulation, plain loop, pytorch-metric-learning.

Written from the formula (gpwref/losses/intra_pair_variance.py docstring; Yu and Tao, ICCV 2019)
without calling gpwref's code. The real implementation is pytorch-metric-learning 2.9's
``IntraPairVarianceLoss`` (pytorch_metric_learning/losses/intra_pair_variance_loss.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..common import NotApplicable, rules
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, pos_eps, neg_eps):
    if rules(profile).zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1:
        return (S * 0).sum()
    value = (S * 0).sum()
    positives, negatives = S[pos], S[neg]  # 1-D, the ordered pairs of each kind
    if positives.numel():
        value = value + torch.square(torch.clamp((1 - pos_eps) * positives.mean() - positives, min=0)).mean()
    if negatives.numel():
        value = value + torch.square(torch.clamp(negatives - (1 + neg_eps) * negatives.mean(), min=0)).mean()
    return value


def loop(S, pos, neg, profile, *, pos_eps, neg_eps):
    m, n = S.shape
    G = np.zeros((m, n))
    if rules(profile).zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1:
        return 0.0, G
    value = 0.0
    for mask, eps, sign in ((pos, pos_eps, -1.0), (neg, neg_eps, 1.0)):
        cells = [(i, j) for i in range(m) for j in range(n) if mask[i, j]]
        if not cells:
            continue
        count = len(cells)
        mean = sum(float(S[i, j]) for i, j in cells) / count
        # positives: t = (1 - eps) mean - s; negatives: t = s - (1 + eps) mean (sign = dt/ds)
        c = 1.0 - eps if sign < 0 else 1.0 + eps
        threshold = c * mean
        hinges = {(i, j): max(sign * (float(S[i, j]) - threshold), 0.0) for i, j in cells}
        total = sum(hinges.values())
        value += sum(h * h for h in hinges.values()) / count
        # dL/ds_kl = (1/count) sum_ij 2 h_ij (dt_ij/ds_kl), dt_ij/ds_kl = sign [ij = kl] - sign c / count
        for (k, l), h_kl in hinges.items():
            G[k, l] = (2.0 / count) * sign * (h_kl - c * total / count)
    return value, G


def pml(X, labels, R, ref_labels, ref_self, normalize, *, pos_eps, neg_eps):
    """IntraPairVarianceLoss(pos_eps, neg_eps) with its defaults (CosineSimilarity, MeanReducer per sub-loss)."""
    from pytorch_metric_learning.losses import IntraPairVarianceLoss

    if not normalize:
        raise NotApplicable("PML's CosineSimilarity always normalises rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    loss_fn = IntraPairVarianceLoss(pos_eps=pos_eps, neg_eps=neg_eps)
    return loss_fn(X, torch.as_tensor(labels), None, R, None if R is None else torch.as_tensor(ref_labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    sign_exempt="through each kind's mean, a pair beyond its threshold gets the opposite weight (module docstring)",
)
