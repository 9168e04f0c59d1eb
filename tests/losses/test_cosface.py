"""cosface: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref

from ._helpers import sigmoid, proxy_gradient_matches_pml


@pytest.mark.parametrize("loss", ["cosface"])
def test_proxy_losses_need_the_proxies(loss):
    with pytest.raises(gpwref.GpwrefError, match="proxies"):
        gpwref.compute(loss, np.eye(3), np.array([0, 0, 1]))


def test_cosface_hand_derived():
    # s = 2, m = 1/2, c = (1/2, 1/4): z = (2 (1/2 - 1/2), 2/4) = (0, 1/2).
    r = gpwref.from_similarity("cosface", np.array([[0.5, 0.25]]), np.array([0]), np.array([0, 1]), scale=2.0, margin=0.5)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-2 * sigmoid(0.5), 2 * sigmoid(0.5)]], rtol=1e-14)


def test_cross_entropy_keeps_tiny_losses_accurate():
    # CosFace s = 64: a confidently classified sample has L = log(1 + e^{z2 - z1}) ~ e^{-64 * 1.35}
    # = 2.9e-38; a difference of log-sum-exps would round it to 0.
    r = gpwref.from_similarity("cosface", np.array([[1.0, -0.7]]), np.array([0]), np.array([0, 1]))
    want = math.log1p(math.exp(64 * (-0.7) - 64 * (1.0 - 0.35)))
    assert r.loss == pytest.approx(want, rel=1e-13)
    assert r.grad_sim[0, 1] == pytest.approx(64 * want, rel=1e-12)


@pytest.mark.parametrize("loss", ["cosface"])
@pytest.mark.parametrize("seed", range(6))
def test_proxy_gradient_matches_pml_parameter_gradient(loss, seed):
    proxy_gradient_matches_pml(loss, seed)

