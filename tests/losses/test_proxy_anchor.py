"""proxy_anchor: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref_verification.refs.proxy_anchor import pml_labels, proxy_batch

from ._helpers import PROXY_PARAMS, sigmoid


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
