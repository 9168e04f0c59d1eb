"""large_margin_softmax: hand-derived pieces of psi, the pieces' ends, PML's norm scaling, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import raises, sigmoid


def _one(S, **hyper):
    return gpwref.from_similarity("large_margin_softmax", np.array([S]), np.array([0]), np.array([0, 1]), profile="pml", **hyper)


def test_first_piece_hand_derived():
    # m = 2, theta = 60 deg (S = 1/2): k = floor(2/3) = 0, psi = T_2(1/2) = 2 (1/4) - 1 = -1/2,
    # psi' = T_2'(1/2) = 4 (1/2) = 2. Negative S = 1/4: z = (-1/2, 1/4), L = log(1 + e^{3/4}),
    # G = (-2 sigma(3/4), sigma(3/4)).
    r = _one([0.5, 0.25], margin=2, scale=1.0)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.75)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-2 * sigmoid(0.75), sigmoid(0.75)]], rtol=1e-14)


def test_second_piece_hand_derived():
    # m = 2, theta = 120 deg (S = -1/2): k = floor(4/3) = 1, psi = -T_2(-1/2) - 2 = 1/2 - 2 = -3/2,
    # psi' = -T_2'(-1/2) = 2. Scale 2, negative S = 0: z = (-3, 0), L = log(1 + e^3), G = (-2 * 2 sigma(3), 2 sigma(3)).
    r = _one([-0.5, 0.0], margin=2, scale=2.0)
    assert r.loss == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-4 * sigmoid(3.0), 2 * sigmoid(3.0)]], rtol=1e-14)


def test_piece_end_is_smooth_and_theta_pi_takes_the_last_piece():
    # m = 4 at theta = 45 deg: psi = 1 - 2 = -1 from both pieces, psi' = 4 sin(180 deg) / sin(45 deg) = 0.
    # Negative S = 0: z = (-1, 0), L = log(1 + e), the positive's weight 0 (to rounding).
    r = _one([math.sqrt(0.5), 0.0], margin=4, scale=1.0)
    assert r.loss == pytest.approx(math.log1p(math.e), rel=1e-14)
    assert abs(r.grad_sim[0, 0]) < 1e-14
    # theta = pi (S = -1): k = m - 1 = 3, psi = -T_4(-1) - 6 = -7, psi' = -T_4'(-1) = 16 >= 0 (PML's k = 4 gives -16).
    # z = (-7, 0), G_pos = -16 sigma(7).
    r = _one([-1.0, 0.0], margin=4, scale=1.0)
    assert r.loss == pytest.approx(math.log1p(math.exp(7.0)), rel=1e-14)
    assert r.grad_sim[0, 0] == pytest.approx(-16 * sigmoid(7.0), rel=1e-14)


@pytest.mark.parametrize("loss,cls", [("large_margin_softmax", "LargeMarginSoftmaxLoss"), ("sphereface", "SphereFaceLoss")])
def test_pml_scales_the_logits_by_the_norms(loss, cls):
    # PML's logits carry |x_i| (and |W_j| for L-Softmax, 1 here): rows all of norm 3 give PML's value at
    # scale 3, which differs from the unit-row value gpwref reports for the same embeddings.
    from pytorch_metric_learning import losses

    rng = np.random.default_rng(0)
    X, W = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    X = 3 * X / np.linalg.norm(X, axis=1, keepdims=True)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    y = np.array([0, 1, 2, 3, 0, 1])
    loss_fn = getattr(losses, cls)(num_classes=4, embedding_size=3, margin=4, scale=1.0)
    loss_fn.W.data = torch.tensor(W.T)
    value = loss_fn(torch.tensor(X), torch.tensor(y)).item()
    at_three = gpwref.compute(loss, X, y, profile="pml", ref=W, ref_labels=np.arange(4), scale=3.0)
    at_one = gpwref.compute(loss, X, y, profile="pml", ref=W, ref_labels=np.arange(4))
    assert at_three.loss == pytest.approx(value, rel=1e-12)
    assert abs(at_one.loss - value) > 1e-3


def test_bad_hyper():
    with raises("margin", "integer >= 1"):
        _one([0.5, 0.0], margin=0)
    with raises("margin", "integer"):
        _one([0.5, 0.0], margin=2.0)
    with raises("scale"):
        _one([0.5, 0.0], scale=0.0)
    with raises("ref"):
        gpwref.compute("large_margin_softmax", np.eye(3), np.array([0, 0, 1]), profile="pml")
