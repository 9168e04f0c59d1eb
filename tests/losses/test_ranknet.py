"""ranknet: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest

import gpwref

from ._helpers import S_RANK, Y_RANK, sigmoid, softplus


def test_ranknet_hand_derived():
    # L = (softplus(sigma (-0.4)) + softplus(sigma (-0.2))) / 2 (mean over the 2 triples);
    # G_0,1 = -sigma sigmoid(-0.4 sigma) / 2 = -G_0,2; G_1,0 = -sigma sigmoid(-0.2 sigma) / 2 = -G_1,2.
    sigma = 2.0
    r = gpwref.from_similarity("ranknet", S_RANK, Y_RANK, sigma=sigma)
    assert r.loss == pytest.approx((softplus(-0.8) + softplus(-0.4)) / 2, rel=1e-14)
    w0, w1 = sigma * sigmoid(-0.8) / 2, sigma * sigmoid(-0.4) / 2
    want = np.array([[0, -w0, w0], [-w1, 0, w1], [0, 0, 0]])
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(r.pos_used, [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(r.neg_used, [[0, 0, 1], [0, 0, 1], [0, 0, 0]])
