"""normalized_softmax: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref_verification.refs.proxy_anchor import pml_labels, proxy_batch

from ._helpers import PROXY_PARAMS, sigmoid


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
    import importlib

    ref = importlib.import_module(f"gpwref_verification.refs.{loss}")
    per_class = 2 if loss == "soft_triple" else 1
    b = proxy_batch(np.random.default_rng(seed), per_class=per_class)
    ours = gpwref.compute(loss, b.embeddings, b.labels, profile="pml", ref=b.ref, ref_labels=b.ref_labels)
    X = torch.tensor(b.embeddings, requires_grad=True)
    R = torch.tensor(b.ref)
    if loss == "soft_triple":
        module, classes, order = ref.pml_module(R, b.ref_labels, la=20.0, gamma=0.1, margin=0.01)
        y = torch.as_tensor([classes.index(int(c)) for c in b.labels])
        module(X, y).backward()
        grad_W = np.zeros_like(b.ref)
        grad_W[order.numpy()] = module.fc.grad.numpy().T
    else:
        y = pml_labels(b.labels, R, b.ref_labels, None, True, every_sample_has_proxy=loss != "proxy_nca")
        if loss == "proxy_anchor":
            module, name = ref.pml_module(R, **PROXY_PARAMS[loss]), "proxies"
        else:
            module, name = ref.pml_module(R, **PROXY_PARAMS[loss])
        module(X, y).backward()
        grad = getattr(module, name).grad.numpy()
        grad_W = grad if name == "proxies" else grad.T
    scale = max(np.abs(grad_W).max(), 1e-300)
    assert np.max(np.abs(ours.grad_ref - grad_W)) / scale < 1e-9
    assert np.max(np.abs(ours.grad_emb - X.grad.numpy())) / max(np.abs(X.grad.numpy()).max(), 1e-300) < 1e-9
