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
