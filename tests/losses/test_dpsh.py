"""dpsh: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref
from gpwref.testing import Batch
from gpwref_verification.harness import check_case

from ._helpers import sigmoid, softplus


# DPSH. Two raw codes u0 = (1, 1), u1 = (1, -1) (normalize=False): S01 = 0, S00 = S11 = 2 (self
# pairs never count). Different labels: two negative pairs at Theta = 0: L = 2 log 2 (sum),
# G = sigmoid(0)/2 = 1/4 on both. Same labels: two positives: L = 2 (log 2 - 0) = 2 log 2,
# G = (1/2 - 1)/2 = -1/4.


def test_dpsh_hand_derived_on_raw_codes():
    U = np.array([[1.0, 1.0], [1.0, -1.0]])
    neg = gpwref.compute("dpsh", U, np.array([0, 1]), normalize=False)
    assert neg.loss == pytest.approx(2 * math.log(2), rel=1e-15)
    np.testing.assert_allclose(neg.grad_sim, [[0, 0.25], [0.25, 0]], rtol=1e-15)
    pos = gpwref.compute("dpsh", U, np.array([5, 5]), normalize=False)
    assert pos.loss == pytest.approx(2 * math.log(2), rel=1e-15)
    np.testing.assert_allclose(pos.grad_sim, [[0, -0.25], [-0.25, 0]], rtol=1e-15)
    # Theta = S/2 = 3/2 on a positive: softplus(1.5) - 1.5; weight (sigmoid(1.5) - 1)/2
    r = gpwref.from_similarity("dpsh", np.array([[0.0, 3.0], [3.0, 0.0]]), np.array([1, 1]), reduction="mean")
    assert r.loss == pytest.approx(softplus(1.5) - 1.5, rel=1e-14)
    assert r.grad_sim[0, 1] == pytest.approx((sigmoid(1.5) - 1) / 2 / 2, rel=1e-14)


def test_dpsh_matches_the_released_code_on_a_memory_bank():
    # The released code's rule: batch x bank (bank without the batch), divided by bank x batch.
    rng = np.random.default_rng(0)
    batch = Batch(rng.normal(size=(4, 3)), np.array([0, 1, 1, 2]), rng.normal(size=(6, 3)),
                  np.array([0, 0, 1, 2, 2, 3]), None, False)
    report = check_case("dpsh", "paper", {"reduction": "mean"}, batch)
    assert report.errors["real:DPSH-pytorch code rules value"] <= 1e-12
    assert report.errors["real:DPSH-pytorch code rules dX"] <= 1e-12
    assert not report.failures()
