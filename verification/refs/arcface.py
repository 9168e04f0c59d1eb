"""Second opinions on ArcFace: torch formulation (cosine form of psi), plain loop, PML ArcFaceLoss."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .normalized_softmax import loop_ce, torch_ce, unless_saturated
from .proxy_anchor import pml_labels
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, scale, margin, monotone_fix):
    """psi written as C cos m - sqrt(1 - C^2) sin m (first branch) and C - m sin m (second),
    with C = clamp(S, -1, 1); the branch is chosen by C >= -cos(m), i.e. theta <= pi - m."""
    C = torch.clamp(S, -1.0, 1.0)
    interior = (S.detach().abs() < 1.0)
    C_in = torch.where(interior, C, torch.zeros_like(C))  # keeps sqrt's infinite slope at |C| = 1 out of the graph
    first = C_in * math.cos(margin) - torch.sqrt(1.0 - C_in**2) * math.sin(margin)
    first = torch.where(interior, first, C.detach() * math.cos(margin))  # |S| >= 1: theta = 0 or pi, constant
    if monotone_fix:
        second = C - margin * math.sin(margin)
        psi = torch.where(C.detach() >= -math.cos(margin), first, second)
    else:
        psi = first
    z = torch.where(pos, scale * psi, scale * S)
    return torch_ce(z, pos, neg)


def loop(S, pos, neg, profile, *, scale, margin, monotone_fix):
    m, n = S.shape
    z = np.zeros((m, n))
    dz = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            if not pos[i, j]:
                z[i, j], dz[i, j] = scale * S[i, j], scale
                continue
            c = min(max(S[i, j], -1.0), 1.0)
            t = math.acos(c)
            if t <= math.pi - margin or not monotone_fix:
                z[i, j] = scale * math.cos(t + margin)
                # d/dc cos(acos(c) + m) = sin(t + m) / sin(t) = cos m + c sin m / sin t, sin t = sqrt((1 - c)(1 + c))
                dz[i, j] = 0.0 if abs(S[i, j]) > 1 else scale * (math.cos(margin) + c * math.sin(margin) / math.sqrt((1 - c) * (1 + c)))
            else:
                z[i, j] = scale * (c - margin * math.sin(margin))
                dz[i, j] = 0.0 if abs(S[i, j]) > 1 else scale
    return loop_ce(z, dz, pos, neg)


def pml_module(R, *, scale, margin):
    from pytorch_metric_learning.losses import ArcFaceLoss

    loss_fn = ArcFaceLoss(num_classes=R.shape[0], embedding_size=R.shape[1], margin=math.degrees(margin), scale=scale)
    loss_fn.W.data = R.detach().T.clone()  # d x C
    return loss_fn, "W"


def pml(X, labels, R, ref_labels, ref_self, normalize, *, scale, margin, monotone_fix):
    """pytorch-metric-learning ArcFaceLoss (margin in degrees there; its monotone branch always on)."""
    if not monotone_fix:
        raise NotApplicable("PML always applies the monotone branch beyond pi - margin")
    y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)
    return unless_saturated(pml_module(R, scale=scale, margin=margin)[0](X, y))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
