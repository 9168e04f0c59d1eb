"""proxy_anchor: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref

from ._helpers import sigmoid, proxy_gradient_matches_pml


# Proxy-Anchor. Two samples e0, e1 (labels 0, 1) and two proxies e0, e1 (classes 0, 1): S = I.
# Both proxies have a positive (|P+| = 2, n = 2). Proxy 0: positive sample 0 (S = 1), negative
# sample 1 (S = 0); proxy 1 likewise. With a = alpha, d = margin:
#   L = (1/2) 2 log(1 + e^{-a(1-d)}) + (1/2) 2 log(1 + e^{a d})
#   G_00 = G_11 = -(a/2) e^{-a(1-d)} / (1 + e^{-a(1-d)}),  G_01 = G_10 = (a/2) e^{a d} / (1 + e^{a d}).


def test_proxy_anchor_hand_derived():
    a, d = 2.0, 0.1
    r = gpwref.from_similarity("proxy_anchor", np.eye(2), np.array([0, 1]), np.array([0, 1]), alpha=a, margin=d)
    want = math.log1p(math.exp(-a * (1 - d))) + math.log1p(math.exp(a * d))
    assert r.loss == pytest.approx(want, rel=1e-14)
    g_pos = -(a / 2) * sigmoid(-a * (1 - d))
    g_neg = (a / 2) * sigmoid(a * d)
    np.testing.assert_allclose(r.grad_sim, [[g_pos, g_neg], [g_neg, g_pos]], rtol=1e-14)
    assert r.per_anchor.shape == (2,)  # one entry per proxy


def test_proxy_anchor_proxy_without_samples_counts_only_in_the_negative_divisor():
    # Add a proxy of class 7 (no sample): |P+| stays 2, n becomes 3; its column holds two negatives
    # with S = 0: its negative term is log(1 + 2 e^{a d}) / 3.
    a, d = 2.0, 0.1
    S = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    r = gpwref.from_similarity("proxy_anchor", S, np.array([0, 1]), np.array([0, 1, 7]), alpha=a, margin=d)
    want = math.log1p(math.exp(-a * (1 - d))) + (2 * math.log1p(math.exp(a * d)) + math.log1p(2 * math.exp(a * d))) / 3
    assert r.loss == pytest.approx(want, rel=1e-14)
    np.testing.assert_allclose(r.grad_sim[:, 2], a / 3 * math.exp(a * d) / (1 + 2 * math.exp(a * d)), rtol=1e-14)


@pytest.mark.parametrize("loss", ["proxy_anchor"])
def test_proxy_losses_need_the_proxies(loss):
    with pytest.raises(gpwref.GpwrefError, match="proxies"):
        gpwref.compute(loss, np.eye(3), np.array([0, 0, 1]))


@pytest.mark.parametrize("loss", ["proxy_anchor"])
@pytest.mark.parametrize("seed", range(6))
def test_proxy_gradient_matches_pml_parameter_gradient(loss, seed):
    proxy_gradient_matches_pml(loss, seed)

