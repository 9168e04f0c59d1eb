"""Second opinions on CosFace: torch formulation, plain loop, PML CosFaceLoss."""

from __future__ import annotations

import numpy as np

from .normalized_softmax import loop_ce, torch_ce, unless_saturated
from .proxy_anchor import pml_labels
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, scale, margin):
    return torch_ce(scale * (S - margin * pos.to(S.dtype)), pos, neg)


def loop(S, pos, neg, profile, *, scale, margin):
    z = np.array([[scale * (S[i, j] - (margin if pos[i, j] else 0.0)) for j in range(S.shape[1])] for i in range(S.shape[0])])
    return loop_ce(z, np.full(S.shape, float(scale)), pos, neg)


def pml_module(R, *, scale, margin):
    from pytorch_metric_learning.losses import CosFaceLoss

    loss_fn = CosFaceLoss(num_classes=R.shape[0], embedding_size=R.shape[1], margin=margin, scale=scale)
    loss_fn.W.data = R.detach().T.clone()  # d x C
    return loss_fn, "W"


def pml(X, labels, R, ref_labels, ref_self, normalize, *, scale, margin):
    y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)
    return unless_saturated(pml_module(R, scale=scale, margin=margin)[0](X, y))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
