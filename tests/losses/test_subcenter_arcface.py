"""subcenter_arcface: hand-derived batches, the max's tie rule, PML's parameter gradient, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref_verification.refs.proxy_anchor import proxy_batch

from ._helpers import raises, sigmoid


def test_subcenter_arcface_hand_derived():
    # Proxies: two sub-centres of class 0 (S = 0.5, 0.25), one of class 1 (S = 0.25); sample of class 0.
    # S'_0 = max(0.5, 0.25) = cos 60 deg; margin 30 deg: psi = cos 90 deg = 0, psi' = sin 90 / sin 60 = 2/sqrt 3.
    # s = 2: z = (0, 1/2), L = log(1 + e^{1/2}); G to the winner -2 (2/sqrt 3) sigma(1/2), the loser 0,
    # the other class 2 sigma(1/2).
    r = gpwref.from_similarity("subcenter_arcface", np.array([[0.5, 0.25, 0.25]]), np.array([0]), np.array([0, 0, 1]), scale=2.0, margin=math.pi / 6)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-4 / math.sqrt(3) * sigmoid(0.5), 0.0, 2 * sigmoid(0.5)]], rtol=1e-14)


def test_subcenter_arcface_negative_class_uses_its_closest_sub_centre():
    # Class 1 has sub-centres at S = 0.1 and 0.25: only 0.25 enters, so the value and the weights are
    # those of the case above, with the class-1 weight on the second of its columns.
    r = gpwref.from_similarity("subcenter_arcface", np.array([[0.5, 0.1, 0.25]]), np.array([0]), np.array([0, 1, 1]), scale=2.0, margin=math.pi / 6)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-4 / math.sqrt(3) * sigmoid(0.5), 0.0, 2 * sigmoid(0.5)]], rtol=1e-14)


def test_subcenter_arcface_tie_goes_to_the_first_sub_centre():
    r = gpwref.from_similarity("subcenter_arcface", np.array([[0.5, 0.5, 0.25]]), np.array([0]), np.array([0, 0, 1]), scale=2.0, margin=math.pi / 6)
    assert r.grad_sim[0, 0] == pytest.approx(-4 / math.sqrt(3) * sigmoid(0.5), rel=1e-14) and r.grad_sim[0, 1] == 0.0


def test_subcenter_arcface_one_sub_centre_per_class_is_arcface():
    S = np.array([[0.3, -0.2, 0.6], [0.1, 0.7, -0.4]])
    y, ref_labels = np.array([0, 1]), np.array([0, 1, 2])
    ours = gpwref.from_similarity("subcenter_arcface", S, y, ref_labels)
    arc = gpwref.from_similarity("arcface", S, y, ref_labels)
    assert ours.loss == pytest.approx(arc.loss, rel=1e-14)
    np.testing.assert_allclose(ours.grad_sim, arc.grad_sim, rtol=1e-14)


def test_subcenter_arcface_refuses_theta_zero_and_bad_hyper():
    with raises("embeddings", "theta = 0"):
        gpwref.from_similarity("subcenter_arcface", np.array([[1.0, 0.2, 0.0]]), np.array([0]), np.array([0, 0, 1]))
    with raises("margin"):
        gpwref.from_similarity("subcenter_arcface", np.array([[0.5, 0.0]]), np.array([0]), np.array([0, 1]), margin=-0.1)
    with raises("scale"):
        gpwref.from_similarity("subcenter_arcface", np.array([[0.5, 0.0]]), np.array([0]), np.array([0, 1]), scale=0.0)
    with raises("ref"):
        gpwref.compute("subcenter_arcface", np.eye(3), np.array([0, 0, 1]))


@pytest.mark.parametrize("seed", range(3))
def test_subcenter_arcface_proxy_gradient_matches_pml(seed):
    # dL/dX and dL/dW (the sub-centres) against PML's autograd through its own W (column c*K + k).
    from gpwref_verification.refs.subcenter_arcface import pml_module

    b = proxy_batch(np.random.default_rng(seed), m=(4, 8), per_class=3, extra_classes=(1, 3))  # extra classes: every sample has negatives
    ours = gpwref.compute("subcenter_arcface", b.embeddings, b.labels, profile="pml", ref=b.ref, ref_labels=b.ref_labels)
    module, classes, order = pml_module(torch.tensor(b.ref), b.ref_labels, scale=64.0, margin=math.radians(28.6))
    X = torch.tensor(b.embeddings, requires_grad=True)
    y = torch.as_tensor([classes.index(int(c)) for c in b.labels])
    module(X, y).backward()
    grad_W = np.zeros_like(b.ref)
    grad_W[order.numpy()] = module.W.grad.numpy().T
    assert np.max(np.abs(ours.grad_ref - grad_W)) / np.abs(grad_W).max() < 1e-9
    assert np.max(np.abs(ours.grad_emb - X.grad.numpy())) / np.abs(X.grad.numpy()).max() < 1e-9


def test_subcenter_arcface_tie_rule_is_pmls():
    # Two identical sub-centres of class 0: PML's max sends the gradient to the first column of the
    # pair, and so does gpwref (grad_ref of the second copy is exactly 0).
    from gpwref_verification.refs.subcenter_arcface import pml_module

    rng = np.random.default_rng(3)
    X, R = rng.normal(size=(3, 4)), rng.normal(size=(4, 4))
    R[1] = R[0]
    ref_labels, y = np.array([0, 0, 1, 1]), np.array([0, 0, 1])
    ours = gpwref.compute("subcenter_arcface", X, y, profile="pml", ref=R, ref_labels=ref_labels)
    module, _, order = pml_module(torch.tensor(R), ref_labels, scale=64.0, margin=math.radians(28.6))
    module(torch.tensor(X), torch.tensor(y)).backward()
    grad_W = np.zeros_like(R)
    grad_W[order.numpy()] = module.W.grad.numpy().T
    assert np.any(grad_W[0]) and not np.any(grad_W[1])
    assert np.any(ours.grad_ref[0]) and not np.any(ours.grad_ref[1])
    np.testing.assert_allclose(ours.grad_ref, grad_W, rtol=0, atol=1e-9 * np.abs(grad_W).max())
