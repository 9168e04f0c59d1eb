"""soft_triple: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref

from ._helpers import sigmoid, proxy_gradient_matches_pml


@pytest.mark.parametrize("loss", ["soft_triple"])
def test_proxy_losses_need_the_proxies(loss):
    with pytest.raises(gpwref.GpwrefError, match="proxies"):
        gpwref.compute(loss, np.eye(3), np.array([0, 0, 1]))



# SoftTriple. One sample (class 0); class 0 has centers with S = 0.5, 0.3, class 1 one center with
# S = 0.1. gamma = 0.1: a = softmax(5, 3) = (sigma(2), sigma(-2)); S'_0 = 0.5 sigma(2) + 0.3 sigma(-2),
# S'_1 = 0.1. z = la (S'_0 - margin, S'_1); L = log(1 + e^{z1 - z0}); g = la (-sigma(z1 - z0), sigma(z1 - z0)).
# G_j = g_c a_j (1 + (S_j - S'_c) / gamma): for the 0.3 center 1 + (0.3 - 0.476)/0.1 < 0, so this
# POSITIVE center gets G > 0 (the sign rule fails per center; it holds for S').


def test_soft_triple_hand_derived_and_the_center_sign():
    la, gamma, margin = 20.0, 0.1, 0.01
    S = np.array([[0.5, 0.3, 0.1]])
    r = gpwref.from_similarity("soft_triple", S, np.array([0]), np.array([0, 0, 1]), la=la, gamma=gamma, margin=margin)
    a0, a1 = sigmoid(2.0), sigmoid(-2.0)
    s0 = 0.5 * a0 + 0.3 * a1
    gap = la * 0.1 - la * (s0 - margin)
    assert r.loss == pytest.approx(math.log1p(math.exp(gap)), rel=1e-13)
    g0, g1 = -la * sigmoid(gap), la * sigmoid(gap)
    want = [g0 * a0 * (1 + (0.5 - s0) / gamma), g0 * a1 * (1 + (0.3 - s0) / gamma), g1 * 1.0 * (1 + 0.0)]
    np.testing.assert_allclose(r.grad_sim, [want], rtol=1e-12)
    assert r.grad_sim[0, 1] > 0 and r.pos_used[0, 1]


def test_soft_triple_rdml_softmax_over_classes():
    # docs/losses.md#soft_triple: RDML's softmax runs over the classes for each center index.
    # Written out with NumPy for a 2-class x 2-center grid (centers in ref order per class).
    S = np.array([[0.5, 0.3, 0.1, 0.4], [0.2, -0.1, 0.6, 0.0]])
    y, yr = np.array([0, 1]), np.array([0, 0, 1, 1])
    gamma, la, margin = 10.0, 8.0, 0.01
    grid = S.reshape(2, 2, 2)  # sample, class, center
    b = np.exp(grid / gamma) / np.exp(grid / gamma).sum(axis=1, keepdims=True)  # over classes
    relaxed = (b * grid).sum(axis=2)
    z = la * (relaxed - margin * np.eye(2))
    want = np.mean(np.log(np.exp(z).sum(axis=1)) - z[[0, 1], [0, 1]])
    rdml = gpwref.from_similarity("soft_triple", S, y, yr, la=la, gamma=gamma, margin=margin, center_softmax="classes")
    paper = gpwref.from_similarity("soft_triple", S, y, yr, la=la, gamma=gamma, margin=margin)
    assert rdml.loss == pytest.approx(want, rel=1e-13)
    assert abs(paper.loss - rdml.loss) > 1e-4
    with pytest.raises(gpwref.GpwrefError, match="same number of centers"):
        gpwref.from_similarity("soft_triple", S[:, :3], y, yr[:3], center_softmax="classes")


@pytest.mark.parametrize("loss", ["soft_triple"])
@pytest.mark.parametrize("seed", range(6))
def test_proxy_gradient_matches_pml_parameter_gradient(loss, seed):
    proxy_gradient_matches_pml(loss, seed)

