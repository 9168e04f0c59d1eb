"""supcon: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref_verification.common import NotApplicable
from gpwref_verification.refs import supcon as supcon_refs

from ._helpers import HAND_S, HAND_S_Y as HAND_Y, _pml, _t, angles_to_rows as _rows


def test_supcon_hand_derived():
    # tau = 1, labels [0, 0, 1]. Anchor 0: A = {1, 2}, P = {1}: l0 = log(e^0.8 + e^0.1) - 0.8.
    # Anchor 1: A = {0, 2}: l1 = log(e^0.8 + e^-0.5) - 0.8. Anchor 2: no positive, 0.
    # Weights: G_ia = pi_ia - [a in P_i] (|P_i| = 1): G01 = pi - 1 = -e^0.1 / (e^0.8 + e^0.1), G02 = +e^0.1 / (...).
    l0 = math.log(math.exp(0.8) + math.exp(0.1)) - 0.8
    l1 = math.log(math.exp(0.8) + math.exp(-0.5)) - 0.8
    r = gpwref.from_similarity("supcon", HAND_S, HAND_Y, temperature=1.0)  # paper: sum over anchors
    assert r.loss == pytest.approx(l0 + l1, rel=1e-14)
    p02 = math.exp(0.1) / (math.exp(0.8) + math.exp(0.1))
    p12 = math.exp(-0.5) / (math.exp(0.8) + math.exp(-0.5))
    want = np.array([[0, -p02, p02], [-p12, 0, p12], [0, 0, 0]])
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=1e-16)
    mean = gpwref.from_similarity("supcon", HAND_S, HAND_Y, temperature=1.0, reduction="mean", base_temperature=0.5)
    assert mean.loss == pytest.approx((l0 + l1) * 2 / 3, rel=1e-14)  # tau/base = 2, mean over 3 anchors
    pml = gpwref.from_similarity("supcon", HAND_S, HAND_Y, profile="pml", temperature=1.0)
    assert pml.loss == pytest.approx((l0 + l1) / 2, rel=1e-14)  # AvgNonZero: the 2 anchors with a loss


def test_supcon_positive_weight_can_be_positive():
    # Anchor 0 with positives 1 (S = 0.9) and 2 (S = -0.9), negative 3 (S = 0), tau = 1:
    # pi_01 = e^0.9 / (e^0.9 + e^-0.9 + 1) > 1/2 = 1/|P_0|, so G_01 = pi_01 - 1/2 > 0 (pushed away).
    S = np.array([[1, 0.9, -0.9, 0], [0.9, 1, -0.5, 0], [-0.9, -0.5, 1, 0], [0, 0, 0, 1.0]])
    y = np.array([0, 0, 0, 1])
    r = gpwref.from_similarity("supcon", S, y, temperature=1.0)
    pi01 = math.exp(0.9) / (math.exp(0.9) + math.exp(-0.9) + 1)
    assert r.grad_sim[0, 1] == pytest.approx(pi01 - 0.5, rel=1e-13) and r.grad_sim[0, 1] > 0


def test_supcon_official_log_eps_matters_and_is_modelled():
    # docs/losses.md#supcon. Official code: log(sum exp(logits - rowmax) + 1e-9), the row max
    # including the self logit 1/tau. Three points far apart on the circle (S = -1/2 between each)
    # with labels [0, 0, 1], tau = 0.07: exp((-0.5 - 1)/0.07) ~ 5e-10 is of the size of 1e-9, so
    # the guard changes the loss by O(1) relative; log_eps=1e-9 reproduces the official rules, 0 does not.
    X = _rows(0, 120, 240)
    y = np.array([0, 0, 1])
    hyper = dict(temperature=0.07, base_temperature=0.07, reduction="mean")
    X0 = np.vstack([X, _rows(10)])  # a fourth row so that every anchor has a positive
    y0 = np.array([0, 1, 1, 0])
    official = supcon_refs.official(_t(X0), y0, None, None, None, True, log_eps=1e-9, require_both_kinds=False, **hyper)
    modelled = gpwref.compute("supcon", X0, y0, log_eps=1e-9, **hyper)
    plain = gpwref.compute("supcon", X0, y0, log_eps=0.0, **hyper)
    assert modelled.loss == pytest.approx(official.item(), rel=1e-13)
    assert abs(plain.loss - official.item()) > 1e-3 * abs(official.item())
    with pytest.raises(NotApplicable):  # the official code's NaN for an anchor without positives
        supcon_refs.official(_t(X), y, None, None, None, True, log_eps=1e-9, require_both_kinds=False, **hyper)


def test_supcon_pml_zero_without_both_pair_kinds():
    # One class only: the paper's loss is log|A_i| - 0 per anchor for tied rows; PML returns 0.
    X = _rows(0, 0, 0)
    y = np.zeros(3, dtype=int)
    assert gpwref.compute("supcon", X, y, temperature=1.0).loss == pytest.approx(3 * math.log(2), rel=1e-14)
    pml_value = _pml("SupConLoss", temperature=1.0)(_t(X), torch.as_tensor(y)).item()
    assert pml_value == 0.0 and gpwref.compute("supcon", X, y, profile="pml", temperature=1.0).loss == 0.0


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("supcon", {"temperature": -1.0}, "temperature"),
        ("supcon", {"base_temperature": 0.0}, "base_temperature"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        gpwref.compute(loss, _rows(0, 60, 180), HAND_Y, **hyper)
    assert info.value.argument == argument
