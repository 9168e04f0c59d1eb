"""Second opinions on large-margin softmax (and SphereFace, which shares them at unit rows): torch
formulation, plain loop, PML LargeMarginSoftmaxLoss / SphereFaceLoss.

Written from the formula in ``gpwref/losses/large_margin_softmax.py``'s docstring: the torch form
writes cos(m theta) as the paper's Eq. 7 binomial sum, the loop differentiates that sum by hand.
The real implementations are pytorch-metric-learning 2.9 ``losses/large_margin_softmax_loss.py``
and ``losses/sphereface_loss.py``, fed the L2-normalised embeddings (normalised inside the torch
graph, so dL/dX is the gradient through the normalisation, as gpwref's) and unit weight columns:
the setting where their norm-scaled logits equal scale psi(S) (the module docstring says why).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .contract import LossRefs
from .normalized_softmax import loop_ce, torch_ce, unless_saturated
from .proxy_anchor import pml_labels


def torch_loss(S, pos, neg, profile, *, margin, scale):
    """psi = (-1)^k sum_n (-1)^n C(m, 2n) S^(m-2n) (1 - S^2)^n - 2k, k = floor(m acos(S) / pi) detached."""
    cos_m = sum((-1) ** n * math.comb(margin, 2 * n) * S ** (margin - 2 * n) * (1 - S**2) ** n for n in range(margin // 2 + 1))
    with torch.no_grad():
        k = torch.clamp(torch.floor(torch.acos(torch.clamp(S, -1.0, 1.0)) * margin / math.pi), max=margin - 1)
    psi = (1 - 2 * torch.remainder(k, 2)) * cos_m - 2 * k
    z = torch.where(pos, scale * psi, scale * S)
    return torch_ce(z, pos, neg)


def _cos_m_and_slope(c, margin):
    """Eq. 7's sum and its derivative in c, term by term (s = 1 - c^2, ds/dc = -2c)."""
    s = 1.0 - c * c
    value = slope = 0.0
    for n in range(margin // 2 + 1):
        a = (-1) ** n * math.comb(margin, 2 * n)
        p = margin - 2 * n
        value += a * c**p * s**n
        slope += a * ((p * c ** (p - 1) * s**n if p else 0.0) - (2 * n * c ** (p + 1) * s ** (n - 1) if n else 0.0))
    return value, slope


def loop(S, pos, neg, profile, *, margin, scale):
    m, n = S.shape
    z, dz = np.zeros((m, n)), np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            if not pos[i, j]:
                z[i, j], dz[i, j] = scale * S[i, j], scale
                continue
            theta = math.acos(min(max(S[i, j], -1.0), 1.0))
            k = min(math.floor(theta * margin / math.pi), margin - 1)
            value, slope = _cos_m_and_slope(S[i, j], margin)
            z[i, j] = scale * ((-1) ** k * value - 2 * k)
            dz[i, j] = scale * max((-1) ** k * slope, 0.0)  # >= 0 exactly; rounding near the pieces' ends
    return loop_ce(z, dz, pos, neg)


def pml_module(R, cls, *, margin, scale):
    from pytorch_metric_learning import losses

    loss_fn = getattr(losses, cls)(num_classes=R.shape[0], embedding_size=R.shape[1], margin=margin, scale=scale)
    unit = R.detach() / torch.linalg.vector_norm(R.detach(), dim=1, keepdim=True)
    loss_fn.W.data = unit.T.clone()  # unit columns: |W_j| = 1 in the logit
    return loss_fn, "W"


def pml_at_unit_rows(cls):
    """pytorch-metric-learning ``cls`` on the L2-normalised embeddings and unit weights."""

    def pml(X, labels, R, ref_labels, ref_self, normalize, *, margin, scale):
        y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)
        unit_X = torch.nn.functional.normalize(X, dim=1, eps=0.0)
        return unless_saturated(pml_module(R, cls, margin=margin, scale=scale)[0](unit_X, y))

    return pml


def draw_batch(rng, knobs, variant):
    """For ``gpwref verify``: a batch with one proxy for every class (as PML holds them)."""
    from .proxy_anchor import proxy_batch

    m = knobs.pop("m", (2, 8))
    for knob in ("with_ref", "ref_includes_batch", "on_boundary"):
        knobs.pop(knob, None)
    return proxy_batch(rng, m=m, per_class=1, **knobs)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml_at_unit_rows("LargeMarginSoftmaxLoss")}},
    draw_batch=draw_batch,
)
