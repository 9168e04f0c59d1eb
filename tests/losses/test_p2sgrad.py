"""p2sgrad: hand-derived batches, the clamp, PML's proxy scaling and W gradient, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import raises


def test_p2sgrad_hand_derived():
    # m = 1 sample of class 0, n = 2 proxies (classes 0, 1): Z = m n = 2.
    # L = ((0.5 - 1)^2 + (-0.25 - 0)^2) / 2 = (0.25 + 0.0625) / 2 = 0.15625.
    # G = 2 (C - target) / Z: positive 2(-0.5)/2 = -0.5; negative 2(-0.25)/2 = -0.25 (< 0: the sign break).
    r = gpwref.from_similarity("p2sgrad", np.array([[0.5, -0.25]]), np.array([0]), np.array([0, 1]), profile="pml")
    assert r.loss == 0.15625
    np.testing.assert_array_equal(r.grad_sim, [[-0.5, -0.25]])


def test_p2sgrad_clamp_is_flat_outside_and_passes_the_slope_at_the_ends():
    # S = 1.5 (positive) clamps to 1: residual 0. S = -1.25 (negative) clamps to -1: residual -1,
    # L = (0 + 1) / 2, G = 0 on both (flat clamp). At S = -1 exactly the slope passes: G = 2(-1)/2 = -1.
    r = gpwref.from_similarity("p2sgrad", np.array([[1.5, -1.25]]), np.array([0]), np.array([0, 1]), profile="pml")
    assert r.loss == 0.5 and not r.grad_sim.any()
    r = gpwref.from_similarity("p2sgrad", np.array([[0.0, -1.0]]), np.array([0]), np.array([0, 1]), profile="pml")
    np.testing.assert_array_equal(r.grad_sim, [[-1.0, -1.0]])


def test_p2sgrad_sample_without_a_proxy_counts_with_negatives_only():
    # Sample 1 (class 7) has no proxy: its cosines are pulled to 0. Z = 2 * 2 = 4.
    # L = ((0.5 - 1)^2 + 0.25^2 + 0.5^2 + 0.75^2) / 4 = (0.25 + 0.0625 + 0.25 + 0.5625) / 4 = 0.28125.
    r = gpwref.from_similarity("p2sgrad", np.array([[0.5, 0.25], [0.5, 0.75]]), np.array([0, 7]), np.array([0, 1]), profile="pml")
    assert r.loss == 0.28125
    np.testing.assert_array_equal(r.grad_sim, [[-0.25, 0.125], [0.25, 0.375]])


def _pml_case(seed, weight_scale):
    from pytorch_metric_learning.losses import P2SGradLoss

    rng = np.random.default_rng(seed)
    X, R = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    y = np.array([0, 1, 2, 0, 1, 2])
    loss_fn = P2SGradLoss(descriptors_dim=4, num_classes=3)
    loss_fn.weight.data = torch.tensor(R.T * weight_scale)
    Xt = torch.tensor(X, requires_grad=True)
    value = loss_fn(Xt, torch.tensor(y))
    value.backward()
    return X, R, y, value.item(), Xt.grad.numpy(), loss_fn.weight.grad.numpy().T


def test_pml_keeps_its_proxies_at_norm_one_minus_1e7():
    # torch.renorm divides by norm + 1e-7: a unit column comes out at 1 / (1 + 1e-7), so PML's
    # cosines are gpwref's divided by (1 + 1e-7); at unit proxies the values differ by ~1e-7.
    X, R, y, value, _, _ = _pml_case(0, 1.0)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    ours = gpwref.compute("p2sgrad", X, y, profile="pml", ref=R, ref_labels=np.arange(3))
    shrunk = gpwref.from_similarity("p2sgrad", Xn @ R.T / (1 + 1e-7), y, np.arange(3), profile="pml")
    assert shrunk.loss == pytest.approx(value, rel=1e-12)
    assert abs(ours.loss - value) / value > 1e-9


def test_p2sgrad_gradients_against_pml():
    # dL/dX agrees; PML's W gradient is the plain one (W is rescaled in .data), gpwref's goes through
    # the normalisation of unit rows: its projection (I - r r^T) g.
    X, R, y, value, grad_X, grad_W = _pml_case(1, 1e9)
    ours = gpwref.compute("p2sgrad", X, y, profile="pml", ref=R, ref_labels=np.arange(3))
    assert ours.loss == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(ours.grad_emb, grad_X, rtol=0, atol=1e-12 * np.abs(grad_X).max())
    projected = grad_W - np.sum(grad_W * R, axis=1, keepdims=True) * R
    np.testing.assert_allclose(ours.grad_ref, projected, rtol=0, atol=1e-12 * np.abs(grad_W).max())
    assert np.abs(grad_W - projected).max() > 1e-6 * np.abs(grad_W).max()


def test_p2sgrad_bad_input():
    with raises("ref"):
        gpwref.compute("p2sgrad", np.eye(3), np.array([0, 0, 1]), profile="pml")
    with raises("margin", "not a hyper-parameter"):
        gpwref.from_similarity("p2sgrad", np.array([[0.5, 0.0]]), np.array([0]), np.array([0, 1]), profile="pml", margin=0.1)
    with raises("profile"):
        gpwref.from_similarity("p2sgrad", np.array([[0.5, 0.0]]), np.array([0]), np.array([0, 1]), profile="paper")
