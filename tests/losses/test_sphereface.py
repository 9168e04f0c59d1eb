"""sphereface: the same function of S as large_margin_softmax (hand case), bad input.

PML's norm scaling is shown in tests/losses/test_large_margin_softmax.py for both classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref

from ._helpers import raises, sigmoid


def test_sphereface_hand_derived():
    # m = 3, theta = 60 deg (S = 1/2): k = floor(1) = 1, psi = -cos(180 deg) - 2 = -1, psi' = -3 sin(180)/sin(60) = 0
    # (a piece end). theta = 30 deg instead: k = floor(1/2) = 0, psi = cos 90 deg = 0,
    # psi' = 3 sin(90)/sin(30) = 6. Negative S = 0: z = (0, 0), L = log 2, G = (-6/2, 1/2).
    r = gpwref.from_similarity("sphereface", np.array([[math.sqrt(3) / 2, 0.0]]), np.array([0]), np.array([0, 1]), profile="pml", margin=3)
    assert r.loss == pytest.approx(math.log(2.0), abs=1e-15)
    np.testing.assert_allclose(r.grad_sim, [[-3.0, 0.5]], rtol=1e-13)
    r = gpwref.from_similarity("sphereface", np.array([[0.5, 0.0]]), np.array([0]), np.array([0, 1]), profile="pml", margin=3)
    assert r.loss == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-14)
    assert abs(r.grad_sim[0, 0]) < 1e-14 and r.grad_sim[0, 1] == pytest.approx(sigmoid(1.0), rel=1e-14)


def test_sphereface_bad_hyper():
    with raises("margin", "integer >= 1"):
        gpwref.from_similarity("sphereface", np.array([[0.5, 0.0]]), np.array([0]), np.array([0, 1]), profile="pml", margin=-1)
