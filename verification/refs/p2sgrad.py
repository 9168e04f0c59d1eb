"""Second opinions on P2SGrad: torch formulation, plain loop, PML P2SGradLoss.

Written from the formula in ``gpwref/losses/p2sgrad.py``'s docstring. The real implementation is
pytorch-metric-learning 2.9 ``losses/p2s_grad_loss.py`` (W is d x C, rescaled to unit columns in
``W.data``; cosines x W / |x| clamped to [-1, 1]; ``nn.MSELoss`` against the one-hot labels). PML's rescaling leaves a column of norm |w| at
|w| / (|w| + 1e-7), so in training its columns settle at norm 1 - 1e-7 and its cosines are 1e-7
(relative) below the unit-proxy cosines; ``pml`` hands PML columns of norm 1e9, where that factor is 1
to rounding, and tests/losses/test_p2sgrad.py shows the settled factor against PML.
"""

from __future__ import annotations

import numpy as np
import torch

from .contract import LossRefs
from .proxy_anchor import pml_labels


def torch_loss(S, pos, neg, profile):
    """torch's mse_loss on the used pairs, rescaled from their count to m n."""
    used = pos | neg
    C = torch.clamp(S, -1.0, 1.0)
    if not used.any():
        return (S * 0).sum()
    terms = torch.nn.functional.mse_loss(C[used], pos[used].to(S.dtype), reduction="sum")
    return terms / S.numel()


def loop(S, pos, neg, profile):
    m, n = S.shape
    value, G = 0.0, np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            if not (pos[i, j] or neg[i, j]):
                continue
            target = 1.0 if pos[i, j] else 0.0
            c = min(max(S[i, j], -1.0), 1.0)
            value += (c - target) ** 2 / (m * n)
            # d/dS (c - t)^2 = 2 (c - t) inside the clamp, 0 outside
            G[i, j] = 0.0 if abs(S[i, j]) > 1.0 else 2.0 * (c - target) / (m * n)
    return value, G


def pml_module(R):
    from pytorch_metric_learning.losses import P2SGradLoss

    loss_fn = P2SGradLoss(descriptors_dim=R.shape[1], num_classes=R.shape[0])
    # PML rescales each column to norm |w| / (|w| + 1e-7) (torch.renorm divides by norm + 1e-7); at
    # |w| = 1e9 that is 1 to rounding, so PML computes with the unit proxies gpwref uses.
    loss_fn.weight.data = (R.detach() / torch.linalg.vector_norm(R.detach(), dim=1, keepdim=True)).T * 1e9
    return loss_fn, "weight"


def pml(X, labels, R, ref_labels, ref_self, normalize):
    """pytorch-metric-learning P2SGradLoss with weight = ref^T (class r = proxy row r)."""
    y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)
    return pml_module(R)[0](X, y)


def draw_batch(rng, knobs, variant):
    """For ``gpwref verify``: a batch with one or two proxies for every class (PML takes one)."""
    from .proxy_anchor import proxy_batch

    m = knobs.pop("m", (2, 8))
    for knob in ("with_ref", "ref_includes_batch", "on_boundary"):
        knobs.pop(knob, None)
    return proxy_batch(rng, m=m, per_class=int(rng.integers(1, 3)), **knobs)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    draw_batch=draw_batch,
    sign_exempt="P2SGrad's squared error pulls every cosine to 0: negatives with S < 0 get G < 0 (module docstring)",
)
