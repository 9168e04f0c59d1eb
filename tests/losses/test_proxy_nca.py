"""proxy_nca: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref_verification.refs.proxy_anchor import proxy_batch

from ._helpers import proxy_gradient_matches_pml


@pytest.mark.parametrize("loss", ["proxy_nca"])
def test_proxy_losses_need_the_proxies(loss):
    with pytest.raises(gpwref.GpwrefError, match="proxies"):
        gpwref.compute(loss, np.eye(3), np.array([0, 0, 1]))



# ProxyNCA. One sample at the positive proxy (S = 1, d2 = 0) and two negative proxies with S = 0
# (d2 = 2), scale 1: z = -d2 = (0, -2, -2).
#   paper (positive excluded): L = 0 + log(2 e^{-2}) = log 2 - 2; G = dz/dS (-q, w, w) = 2 (-1, 1/2, 1/2).
#   include_positive: L = log(1 + r), r = 2 e^{-2}; G = 2 (-r, r/2, r/2) / (1 + r).


def test_proxy_nca_hand_derived_and_the_positive_in_the_denominator():
    S = np.array([[1.0, 0.0, 0.0]])
    y, yr = np.array([0]), np.array([0, 1, 2])
    paper = gpwref.from_similarity("proxy_nca", S, y, yr)
    assert paper.loss == pytest.approx(math.log(2) - 2, rel=1e-14)
    np.testing.assert_allclose(paper.grad_sim, [[-2.0, 1.0, 1.0]], rtol=1e-14)
    pml = gpwref.from_similarity("proxy_nca", S, y, yr, profile="pml")
    r = 2 * math.exp(-2)
    assert pml.loss == pytest.approx(math.log1p(r), rel=1e-14)
    np.testing.assert_allclose(pml.grad_sim, [[-2 * r / (1 + r), r / (1 + r), r / (1 + r)]], rtol=1e-14)


def test_proxy_nca_conventions_match_their_codes():
    # docs/losses.md#proxy_nca: PML = positive included, scale 1; RDML = positive excluded, 3x
    # on both sides (scale 9). Each code agrees with its own rule and not with the other.
    from gpwref_verification.refs import proxy_nca as ref

    b = proxy_batch(np.random.default_rng(5), m=6, classes=3, singletons=False, one_class=False)
    X = torch.tensor(b.embeddings, requires_grad=True)
    R = torch.tensor(b.ref)
    pml_value = ref.pml(X, b.labels, R, b.ref_labels, None, True, scale=1.0, include_positive=True).item()
    rdml_value = ref.rdml(X, b.labels, R, b.ref_labels, None, True, scale=9.0, include_positive=False).item()
    kw = dict(ref=b.ref, ref_labels=b.ref_labels)
    as_pml = gpwref.compute("proxy_nca", b.embeddings, b.labels, profile="pml", **kw).loss
    as_rdml = gpwref.compute("proxy_nca", b.embeddings, b.labels, scale=9.0, **kw).loss
    assert as_pml == pytest.approx(pml_value, rel=1e-12) and as_rdml == pytest.approx(rdml_value, rel=1e-12)
    assert abs(as_pml - as_rdml) > 1e-3


@pytest.mark.parametrize("loss", ["proxy_nca"])
@pytest.mark.parametrize("seed", range(6))
def test_proxy_gradient_matches_pml_parameter_gradient(loss, seed):
    proxy_gradient_matches_pml(loss, seed)

