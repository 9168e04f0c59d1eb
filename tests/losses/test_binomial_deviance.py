"""binomial_deviance: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref

from ._helpers import C, HAND_X, HAND_Y, profile_variant_rows, degenerate_batches_give_zero_or_finite


def _softplus(z):
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _sigma(z):
    return 1 / (1 + math.exp(-z))


def test_binomial_deviance_hand_derived():
    # alpha = 2, beta = 40, lam = 0.5; every anchor has one positive and two negatives, m = 4:
    #   anchor 0: log(1 + e^{2(0.5-0.5)}) = log 2;   negatives S = 0, -1:   [sp(-20) + sp(-60)] / 2
    #   anchor 1: log 2;                              negatives S = C, -1/2: [sp(40(C-0.5)) + sp(-40)] / 2
    #   anchor 2: sp(2 * 0.5) = sp(1);                negatives S = 0, C:    [sp(-20) + sp(40(C-0.5))] / 2
    #   anchor 3: sp(1);                              negatives S = -1, -1/2: [sp(-60) + sp(-40)] / 2
    # G: positive -(2 / (4 * 1)) sigma(2(0.5 - S)), negative +(40 / (4 * 2)) sigma(40(S - 0.5)).
    r = gpwref.compute("binomial_deviance", HAND_X, HAND_Y)
    sp, big = _softplus, 40 * (C - 0.5)
    per_anchor = np.array([
        math.log(2) + (sp(-20) + sp(-60)) / 2,
        math.log(2) + (sp(big) + sp(-40)) / 2,
        sp(1) + (sp(-20) + sp(big)) / 2,
        sp(1) + (sp(-60) + sp(-40)) / 2,
    ]) / 4
    np.testing.assert_allclose(r.per_anchor, per_anchor, rtol=1e-13)
    np.testing.assert_allclose(r.loss, per_anchor.sum(), rtol=1e-13)
    S = np.array([[1, 0.5, 0, -1], [0.5, 1, C, -0.5], [0, C, 1, 0], [-1, -0.5, 0, 1]])
    want = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            if HAND_Y[i] == HAND_Y[j]:
                want[i, j] = -(2 / 4) * _sigma(2 * (0.5 - S[i, j]))
            else:
                want[i, j] = (40 / 8) * _sigma(40 * (S[i, j] - 0.5))
    # rtol: the computed S differ from the exact cosines by ~1e-16, times beta = 40 in the exponent
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-12, atol=0)
    assert gpwref.get_entry("binomial_deviance").similarities == ("self",)


def test_binomial_deviance_large_scales_stay_finite():
    # alpha = beta = 200 and similarities at +-1: exponents of +-100 and -300 (softplus(100) = 100 + e^-100).
    S = np.array([[1.0, 1.0, -1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    y = np.array([0, 0, 1])
    with np.errstate(all="raise"):
        r = gpwref.from_similarity("binomial_deviance", S, y, alpha=200.0, beta=200.0, lam=0.5)
    # anchor 0: P {1: S=1}: sp(-100); N {2: S=-1}: sp(-300). anchor 1: P {0: 1}: sp(-100); N {2: 1}: sp(100).
    # anchor 2: no positive; N {0: -1, 1: 1}: [sp(-300) + sp(100)] / 2.
    want = (_softplus(-100) + _softplus(-300) + _softplus(-100) + _softplus(100) + (_softplus(-300) + _softplus(100)) / 2) / 3
    np.testing.assert_allclose(r.loss, want, rtol=1e-15)
    np.testing.assert_allclose(r.grad_sim[1, 2], 200 * _sigma(100) / 3, rtol=1e-15)
    np.testing.assert_allclose(r.grad_sim[0, 2], 200 * math.exp(-300) / 3, rtol=1e-13)
    assert np.all(np.isfinite(r.grad_sim))


@pytest.mark.parametrize("loss,profile,variant", [row for row in profile_variant_rows("binomial_deviance") if row.values[1] != "official"])
def test_degenerate_batches_give_zero_or_finite(loss, profile, variant):
    degenerate_batches_give_zero_or_finite(loss, profile, variant)

@pytest.mark.parametrize(
    "loss,hyper,argument",
    [
        ("binomial_deviance", {"alpha": 0.0}, "alpha"),
        ("binomial_deviance", {"beta": -40.0}, "beta"),
        ("binomial_deviance", {"alpha": True}, "alpha"),
        ("binomial_deviance", {"lam": float("inf")}, "lam"),
    ],
)
def test_bad_hyper_parameter_names_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as caught:
        gpwref.compute(loss, HAND_X, HAND_Y, **hyper)
    assert caught.value.argument == argument
    assert argument in str(caught.value)


def test_binomial_deviance_has_no_pml_convention():
    with pytest.raises(gpwref.GpwrefError, match="no 'pml' convention") as caught:
        gpwref.compute("binomial_deviance", HAND_X, HAND_Y, profile="pml")
    assert caught.value.argument == "profile"
