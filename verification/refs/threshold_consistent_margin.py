"""Second opinions on the TCM loss: torch formulation, plain loop, pytorch-metric-learning.

Written from the formula (gpwref/losses/threshold_consistent_margin.py docstring; Zhang et al., ICLR
2024) without calling gpwref's code. The real implementation is pytorch-metric-learning 2.9's
``ThresholdConsistentMarginLoss`` (pytorch_metric_learning/losses/tcm_loss.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, lambda_plus, lambda_minus, margin_plus, margin_minus):
    value = (S * 0).sum()
    positives, negatives = S[pos], S[neg]
    low = positives[positives.detach() <= margin_plus]  # selected positives (closed at the margin)
    high = negatives[negatives.detach() >= margin_minus]
    if low.numel():
        value = value + lambda_plus * (margin_plus - low).mean()
    if high.numel():
        value = value + lambda_minus * (high - margin_minus).mean()
    return value


def loop(S, pos, neg, profile, *, lambda_plus, lambda_minus, margin_plus, margin_minus):
    m, n = S.shape
    G = np.zeros((m, n))
    low = [(i, j) for i in range(m) for j in range(n) if pos[i, j] and S[i, j] <= margin_plus]
    high = [(i, j) for i in range(m) for j in range(n) if neg[i, j] and S[i, j] >= margin_minus]
    value = 0.0
    for i, j in low:
        value += lambda_plus * (margin_plus - float(S[i, j])) / len(low)
        G[i, j] = -lambda_plus / len(low)
    for i, j in high:
        value += lambda_minus * (float(S[i, j]) - margin_minus) / len(high)
        G[i, j] = lambda_minus / len(high)
    return value, G


def pml(X, labels, R, ref_labels, ref_self, normalize, *, lambda_plus, lambda_minus, margin_plus, margin_minus):
    """ThresholdConsistentMarginLoss(lambda_plus, lambda_minus, margin_plus, margin_minus) on the batch."""
    from pytorch_metric_learning.losses import ThresholdConsistentMarginLoss

    if not normalize:
        raise NotApplicable("PML's TCM takes F.cosine_similarity of the rows (always normalised)")
    if R is not None:
        raise NotApplicable("PML's TCM indexes the batch with ref_emb's indices (embeddings[p], not ref_emb[p])")
    loss_fn = ThresholdConsistentMarginLoss(
        lambda_plus=lambda_plus, lambda_minus=lambda_minus, margin_plus=margin_plus, margin_minus=margin_minus
    )
    return loss_fn(X, torch.as_tensor(labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
