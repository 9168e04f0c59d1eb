"""normalized_softmax: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref

from ._helpers import sigmoid, proxy_gradient_matches_pml


@pytest.mark.parametrize("loss", ["normalized_softmax"])
def test_proxy_losses_need_the_proxies(loss):
    with pytest.raises(gpwref.GpwrefError, match="proxies"):
        gpwref.compute(loss, np.eye(3), np.array([0, 0, 1]))



# Cross-entropy family, one sample (class 0) and two proxies (classes 0, 1) with cosines c1, c2:
# L = log(1 + e^{z2 - z1}), dL/dz1 = -sigma(z2 - z1), dL/dz2 = +sigma(z2 - z1), G = dL/dz dz/dS.


def test_normalized_softmax_hand_derived():
    # T = 0.5, c = (1/2, 1/4): z = (1, 1/2). L = log(1 + e^{-1/2}), G = -+ 2 sigma(-1/2).
    r = gpwref.from_similarity("normalized_softmax", np.array([[0.5, 0.25]]), np.array([0]), np.array([0, 1]), temperature=0.5)
    assert r.loss == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-2 * sigmoid(-0.5), 2 * sigmoid(-0.5)]], rtol=1e-14)


def test_cross_entropy_rules_for_several_and_missing_proxies():
    # Sample 0 (class 0) has two positive proxies (S = 0.5, 0.25) and one negative (S = 0):
    # L_0 = -log((e^{z1} + e^{z2}) / (e^{z1} + e^{z2} + e^{z3})). Sample 1 (class 9) has no proxy:
    # no term, and not counted (m' = 1). T = 1: z = S.
    S = np.array([[0.5, 0.25, 0.0], [0.1, 0.2, 0.3]])
    r = gpwref.from_similarity("normalized_softmax", S, np.array([0, 9]), np.array([0, 0, 1]), temperature=1.0)
    e = np.exp([0.5, 0.25, 0.0])
    assert r.loss == pytest.approx(math.log(e.sum() / e[:2].sum()), rel=1e-14)
    assert r.per_anchor[1] == 0 and not r.pos_used[1].any() and not r.grad_sim[1].any()
    # dL/dz_j = p_j - q_j: p = e / sum e, q = positives' share among positives.
    p, q = e / e.sum(), np.array([e[0], e[1], 0.0]) / e[:2].sum()
    np.testing.assert_allclose(r.grad_sim[0], p - q, rtol=1e-13)


@pytest.mark.parametrize("loss", ["normalized_softmax"])
@pytest.mark.parametrize("seed", range(6))
def test_proxy_gradient_matches_pml_parameter_gradient(loss, seed):
    proxy_gradient_matches_pml(loss, seed)

