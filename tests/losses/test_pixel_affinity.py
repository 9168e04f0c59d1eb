"""pixel_affinity: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.losses.pixel_affinity import neighbours


# Pixel affinity. A 2 x 2 image (width 2), kernel 3, dilation 1: every pixel neighbours the three
# others. Labels (colour regions) [0, 0, 1, 1]: used pairs (0,1), (1,0), (2,3), (3,2). Rows are
# binary mask probabilities (m, 1 - m), m = [0.9, 0.8, 0.3, 0.1]:
#   S01 = 0.9*0.8 + 0.1*0.2 = 0.74,  S23 = 0.3*0.1 + 0.7*0.9 = 0.66
#   L = -(2 log 0.74 + 2 log 0.66) / 4,  G01 = -1/(4 * 0.74),  G23 = -1/(4 * 0.66)

M_PIXELS = np.array([0.9, 0.8, 0.3, 0.1])
P_PIXELS = np.stack([M_PIXELS, 1 - M_PIXELS], axis=1)


def test_pixel_affinity_hand_derived():
    r = gpwref.compute("pixel_affinity", P_PIXELS, np.array([0, 0, 1, 1]), normalize=False, width=2, affinity="probability")
    assert r.loss == pytest.approx(-(2 * math.log(0.74) + 2 * math.log(0.66)) / 4, rel=1e-14)
    want = np.zeros((4, 4))
    want[0, 1] = want[1, 0] = -1 / (4 * 0.74)
    want[2, 3] = want[3, 2] = -1 / (4 * 0.66)
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    assert not r.neg_used.any()


def test_pixel_affinity_matches_boxsnake_code():
    from gpwref_verification.refs.pixel_affinity import boxsnake_code

    rng = np.random.default_rng(0)
    m = rng.uniform(0.05, 0.95, size=12)
    P = np.stack([m, 1 - m], axis=1)
    labels = (np.arange(12) % 4 >= 2).astype(np.int64) + 2 * (np.arange(12) >= 8)  # 3 x 4 image
    for dilation in (1, 2):
        X = torch.tensor(P, requires_grad=True)
        want = boxsnake_code(X, labels, None, None, None, False, width=4, kernel_size=3, dilation=dilation, affinity="probability")
        want.backward()
        got = gpwref.compute("pixel_affinity", P, labels, normalize=False, width=4, dilation=dilation, affinity="probability")
        assert got.loss == pytest.approx(want.item(), rel=1e-12)
        np.testing.assert_allclose(got.grad_emb, X.grad.numpy(), rtol=1e-10, atol=1e-14)
        # the code's own parameter is m alone (it forms 1 - m): dL/dm = dL/dX0 - dL/dX1
        m_leaf = torch.tensor(m, requires_grad=True)
        code = boxsnake_code(torch.stack([m_leaf, 1 - m_leaf], dim=1), labels, None, None, None, False, width=4,
                             kernel_size=3, dilation=dilation, affinity="probability")
        code.backward()
        np.testing.assert_allclose(got.grad_emb[:, 0] - got.grad_emb[:, 1], m_leaf.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_pixel_neighbourhoods():
    # 3 x 3 image, dilation 2: pixel 0 = (0, 0) reaches (0, 2), (2, 0), (2, 2) = 2, 6, 8.
    assert np.nonzero(neighbours(9, 3, 3, 2)[0])[0].tolist() == [2, 6, 8]
    # 5 pixels, width 3 (last row partial): pixel 4 = (1, 1) sees 0, 1, 2, 3 and not (1, 2), absent.
    assert np.nonzero(neighbours(5, 3, 3, 1)[4])[0].tolist() == [0, 1, 2, 3]
    # width None: one row, kernel 3: only left and right.
    assert np.nonzero(neighbours(4, None, 3, 1)[1])[0].tolist() == [0, 2]


def test_pixel_affinity_refuses_an_infinite_term():
    # probability rows (1, 0) and (0, 1) in one region: P(same) = 0, -log 0 = inf
    with pytest.raises(gpwref.GpwrefError, match="affinity > 0"):
        gpwref.compute("pixel_affinity", np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), normalize=False,
                       affinity="probability")
