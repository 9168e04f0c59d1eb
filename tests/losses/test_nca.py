"""nca: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import HAND_S, HAND_S_Y as HAND_Y, _pml, _t, angles_to_rows as _rows


def test_nca_hand_derived_both_objectives():
    # s = 1: p_0. = softmax(2 S_0.) over {1, 2} etc. q_0 = p_01, q_1 = p_10, anchor 2 has no positive.
    e = np.exp(2 * HAND_S)
    q0 = e[0, 1] / (e[0, 1] + e[0, 2])
    q1 = e[1, 0] / (e[1, 0] + e[1, 2])
    log_obj = gpwref.from_similarity("nca", HAND_S, HAND_Y, objective="log")
    assert log_obj.loss == pytest.approx(-(math.log(q0) + math.log(q1)) / 2, rel=1e-14)
    # log: G_01 = (2/M) p_01 (1 - 1/q_0) = (2/2)(q0 - 1), G_02 = (2/2) p_02 = 1 - q0
    assert log_obj.grad_sim[0, 1] == pytest.approx(q0 - 1, rel=1e-13)
    assert log_obj.grad_sim[0, 2] == pytest.approx(1 - q0, rel=1e-13)
    expected = gpwref.from_similarity("nca", HAND_S, HAND_Y)  # paper: -(1/m) sum q_i
    assert expected.loss == pytest.approx(-(q0 + q1) / 3, rel=1e-14)
    # expected: G_01 = -(2/3) p_01 (1 - q_0), G_02 = (2/3) p_02 q_0
    assert expected.grad_sim[0, 1] == pytest.approx(-(2 / 3) * q0 * (1 - q0), rel=1e-13)
    assert expected.grad_sim[0, 2] == pytest.approx((2 / 3) * (1 - q0) * q0, rel=1e-13)


def test_nca_pml_quirks():
    # No anchor has a positive: PML's MeanReducer averages nothing -> NaN; gpwref gives 0.
    X = _rows(0, 90, 200)
    y = np.array([0, 1, 2])
    assert math.isnan(_pml("NCALoss")(_t(X), torch.as_tensor(y)).item())
    assert gpwref.compute("nca", X, y, profile="pml").loss == 0.0
    # One query against a reference set: PML returns 0 (len(embeddings) <= 1), the formula does not.
    ref, ref_y = _rows(10, 100), np.array([0, 1])
    pml_value = _pml("NCALoss")(_t(X[:1]), torch.as_tensor(y[:1]), None, _t(ref), torch.as_tensor(ref_y)).item()
    assert pml_value == 0.0
    assert gpwref.compute("nca", X[:1], y[:1], profile="pml", ref=ref, ref_labels=ref_y).loss == 0.0
    formula = gpwref.compute("nca", X[:1], y[:1], profile="pml", ref=ref, ref_labels=ref_y, zero_if_single_row=False)
    assert formula.loss > 0


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("nca", {"softmax_scale": 0.0}, "softmax_scale"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        gpwref.compute(loss, _rows(0, 60, 180), HAND_Y, **hyper)
    assert info.value.argument == argument
