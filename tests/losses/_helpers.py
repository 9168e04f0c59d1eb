"""What the loss test files share: hand batches, reference helpers, small math.

Names are the ones the test bodies use; where two old family files used one name for different
things, one got a new name here and its files import it under the old one (HAND_S_Y as HAND_Y,
angles_to_rows as _rows).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref_verification.refs.proxy_anchor import pml_labels, proxy_batch


def angles_to_rows(*degrees):
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)



# Four unit vectors at 0, 60, 90 and 180 degrees, labels [0, 0, 1, 1]. Cosines S_ij = cos(angle difference):
#   S01 = 1/2, S02 = 0, S03 = -1, S12 = sqrt(3)/2, S13 = -1/2, S23 = 0.
# Unit-sphere distances d = sqrt(2 - 2S) = 2 sin(angle/2):
#   d01 = 1, d02 = sqrt(2), d03 = 2, d12 = 2 sin 15deg = sqrt(2 - sqrt(3)), d13 = sqrt(3), d23 = sqrt(2).
# Ordered positive pairs: (0,1), (1,0), (2,3), (3,2); the other 8 off-diagonal pairs are negatives.
HAND_X = angles_to_rows(0, 60, 90, 180)
HAND_Y = np.array([0, 0, 1, 1])
C = math.sqrt(3) / 2
D12 = math.sqrt(2 - math.sqrt(3))
R2 = math.sqrt(2)


def _pml(cls, **kwargs):
    from pytorch_metric_learning import losses

    return getattr(losses, cls)(**kwargs)


def _torch(X):
    return torch.tensor(np.asarray(X, dtype=np.float64))


def profile_variant_rows(*losses):
    """One pytest.param(loss, profile, variant) per default profile and variant of each named loss."""
    return [
        pytest.param(entry.name, profile, dict(variant), id=f"{entry.name}-{profile}-{'-'.join(f'{k}={v}' for k, v in variant.items()) or 'default'}")
        for entry in gpwref.CATALOG
        if entry.name in losses
        for profile in entry.defaults
        for variant in entry.variants
    ]


def raises(argument: str, pattern: str = ""):
    return pytest.raises(gpwref.GpwrefError, match=rf"^{argument}: .*{pattern}")


def _t(X):
    return torch.tensor(np.asarray(X, dtype=np.float64), requires_grad=True)



# Shared hand batch in S form: labels [0, 0, 1];
#   S01 = 0.8 (the only positive pair), S02 = 0.1, S12 = -0.5.
HAND_S = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, -0.5], [0.1, -0.5, 1.0]])
HAND_S_Y = np.array([0, 0, 1])  # the labels of HAND_S


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))



# Ranking losses. Three samples, labels [0, 0, 1], the batch its own reference set. S (ordered
# rows) is given directly; only these entries matter:
#   anchor 0: positive 1 (S01 = 0.5), negative 2 (S02 = 0.1)
#   anchor 1: positive 0 (S10 = 0.5), negative 2 (S12 = 0.3)
#   anchor 2: no positive, so no triple. Two triples, gaps S_in - S_ip = -0.4 and -0.2.

S_RANK = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
Y_RANK = np.array([0, 0, 1])



# dL/dW against PML's own proxy parameter gradient (the harness compares value and dL/dX only).

PROXY_PARAMS = {
    "proxy_anchor": dict(alpha=32.0, margin=0.1),
    "proxy_nca": dict(scale=1.0),
    "normalized_softmax": dict(temperature=0.05),
    "cosface": dict(scale=64.0, margin=0.35),
    "arcface": dict(scale=64.0, margin=math.radians(28.6)),
}


def sigmoid_slope(x, tau):
    """d sigmoid(x / tau) / dx = sigmoid(x/tau) sigmoid(-x/tau) / tau."""
    return sigmoid(x / tau) * sigmoid(-x / tau) / tau


def proxy_gradient_matches_pml(loss, seed):
    """gpwref.compute's grad_emb and grad_ref (the proxies) against PML's own parameter gradients."""
    import importlib

    ref = importlib.import_module(f"gpwref_verification.refs.{loss}")
    per_class = 2 if loss == "soft_triple" else 1
    b = proxy_batch(np.random.default_rng(seed), per_class=per_class)
    ours = gpwref.compute(loss, b.embeddings, b.labels, profile="pml", ref=b.ref, ref_labels=b.ref_labels)
    X = torch.tensor(b.embeddings, requires_grad=True)
    R = torch.tensor(b.ref)
    if loss == "soft_triple":
        module, classes, order = ref.pml_module(R, b.ref_labels, la=20.0, gamma=0.1, margin=0.01)
        y = torch.as_tensor([classes.index(int(c)) for c in b.labels])
        module(X, y).backward()
        grad_W = np.zeros_like(b.ref)
        grad_W[order.numpy()] = module.fc.grad.numpy().T
    else:
        y = pml_labels(b.labels, R, b.ref_labels, None, True, every_sample_has_proxy=loss != "proxy_nca")
        if loss == "proxy_anchor":
            module, name = ref.pml_module(R, **PROXY_PARAMS[loss]), "proxies"
        else:
            module, name = ref.pml_module(R, **PROXY_PARAMS[loss])
        module(X, y).backward()
        grad = getattr(module, name).grad.numpy()
        grad_W = grad if name == "proxies" else grad.T
    scale = max(np.abs(grad_W).max(), 1e-300)
    assert np.max(np.abs(ours.grad_ref - grad_W)) / scale < 1e-9
    assert np.max(np.abs(ours.grad_emb - X.grad.numpy())) / max(np.abs(X.grad.numpy()).max(), 1e-300) < 1e-9


def degenerate_batches_give_zero_or_finite(loss, profile, variant):
    """m = 1 gives exactly zero; one class, all singletons and all-tied rows give finite results."""
    # m = 1: no pair at all -> loss 0, G 0.
    one = gpwref.compute(loss, angles_to_rows(10), np.array([3]), profile=profile, **variant)
    assert one.loss == 0.0 and not one.grad_sim.any() and not one.per_anchor.any()
    # one class (no negative) and all singletons (no positive): finite; no triplet exists.
    X = angles_to_rows(0, 50, 130, 200)
    for y in (np.zeros(4, dtype=int), np.arange(4)):
        r = gpwref.compute(loss, X, y, profile=profile, **variant)
        assert np.isfinite(r.loss) and np.all(np.isfinite(r.grad_sim)) and np.all(np.isfinite(r.grad_emb))
        if loss == "triplet":
            assert r.loss == 0.0 and not r.grad_sim.any()
    # all rows identical (every pair tied): finite everywhere.
    tied = gpwref.compute(loss, np.ones((4, 3)), np.array([0, 0, 1, 1]), profile=profile, **variant)
    assert np.isfinite(tied.loss) and np.all(np.isfinite(tied.grad_emb))
