"""arcface: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref

from ._helpers import sigmoid, proxy_gradient_matches_pml


@pytest.mark.parametrize("loss", ["arcface"])
def test_proxy_losses_need_the_proxies(loss):
    with pytest.raises(gpwref.GpwrefError, match="proxies"):
        gpwref.compute(loss, np.eye(3), np.array([0, 0, 1]))


def test_arcface_hand_derived():
    # c1 = cos 60 deg, margin 30 deg: psi = cos 90 deg = 0, psi' = sin(90)/sin(60) = 2/sqrt(3).
    # s = 2, c2 = 1/4: z = (0, 1/2); G_0 = -2 (2/sqrt 3) sigma(1/2), G_1 = 2 sigma(1/2).
    r = gpwref.from_similarity("arcface", np.array([[0.5, 0.25]]), np.array([0]), np.array([0, 1]), scale=2.0, margin=math.pi / 6)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-4 / math.sqrt(3) * sigmoid(0.5), 2 * sigmoid(0.5)]], rtol=1e-14)


def test_arcface_monotone_fix_keeps_the_gpw_sign():
    # theta = 170 deg > pi - m (m = 0.5 rad = 28.6 deg). Bare formula: psi = cos(theta + m),
    # psi' = sin(theta + m) / sin(theta) < 0 since theta + m > pi: the positive pair gets G > 0.
    # With the fix psi = cos(theta) - m sin(m), psi' = 1: G < 0.
    S = np.array([[math.cos(math.radians(170)), 0.0]])
    fixed = gpwref.from_similarity("arcface", S, np.array([0]), np.array([0, 1]), scale=2.0, margin=0.5)
    bare = gpwref.from_similarity("arcface", S, np.array([0]), np.array([0, 1]), scale=2.0, margin=0.5, monotone_fix=False)
    assert fixed.grad_sim[0, 0] < 0 < bare.grad_sim[0, 0]
    theta = math.radians(170)
    z1_fixed = 2 * (math.cos(theta) - 0.5 * math.sin(0.5))
    assert fixed.loss == pytest.approx(math.log1p(math.exp(-z1_fixed)), rel=1e-14)
    z1_bare = 2 * math.cos(theta + 0.5)
    want = -2 * math.sin(theta + 0.5) / math.sin(theta) * sigmoid(-z1_bare)
    assert bare.grad_sim[0, 0] == pytest.approx(want, rel=1e-12)


def test_arcface_refuses_theta_zero():
    with pytest.raises(gpwref.GpwrefError, match="theta = 0"):
        gpwref.from_similarity("arcface", np.array([[1.0, 0.0]]), np.array([0]), np.array([0, 1]))


@pytest.mark.parametrize("loss", ["arcface"])
@pytest.mark.parametrize("seed", range(6))
def test_proxy_gradient_matches_pml_parameter_gradient(loss, seed):
    proxy_gradient_matches_pml(loss, seed)

