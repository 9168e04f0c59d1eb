"""ranked_list: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import HAND_S_Y as HAND_Y, _pml, _t, angles_to_rows as _rows


def test_ranked_list_hand_derived_and_pml_guard():
    # Unit rows at 0, 100, 40, 150 degrees, labels [0, 0, 1, 1]; anchor 0: positive 1 at
    # D = 2 sin 50 = 1.532 > alpha - m = 1.2 - 0.4 = 0.8 (violating), negatives 2 at D = 2 sin 20 = 0.684
    # and 3 at D = 2 sin 75 = 1.932; alpha = 1 + m/2 = 1.2: only 2 is violating. Tn = 1, Tp = 0, imbalance = 1/2.
    #   L_P,0 = (1.532 - 0.8) (w = 1), L_N,0 = (1.2 - 0.684) (one member, its softmax weight is 1).
    X = _rows(0, 100, 40, 150)
    y = np.array([0, 0, 1, 1])
    D = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    hyper = dict(margin=0.4, Tn=1.0)
    r = gpwref.compute("ranked_list", X, y, **hyper)
    anchor0 = 0.5 * (D(100) - 0.8) + 0.5 * (1.2 - D(40))
    assert r.per_anchor[0] == pytest.approx(anchor0 / 4, rel=1e-13)
    # weights of anchor 0: G_01 = -(1/2)(1/4) / D01 (w/B = 1, Tp = 0); G_02 = (1/2)(1/4)(1 + Tn (u - L_N)) / D02 = (1/8) / D02
    assert r.grad_sim[0, 1] == pytest.approx(-1 / 8 / D(100), rel=1e-12)
    assert r.grad_sim[0, 2] == pytest.approx(1 / 8 / D(40), rel=1e-12)
    # PML adds 1e-5 to each of the n = 4 entries of a row's denominators: L_P,0 = v w / (w + 4e-5) with
    # w = e^{Tp v} = 1, L_N,0 = u w / (w + 4e-5) with w = e^{Tn u}.
    pml = gpwref.compute("ranked_list", X, y, profile="pml", **hyper)
    v, u = D(100) - 0.8, 1.2 - D(40)
    guarded = 0.5 * v / (1 + 4e-5) + 0.5 * u * math.exp(u) / (math.exp(u) + 4e-5)
    assert pml.per_anchor[0] == pytest.approx(guarded / 4, rel=1e-13)
    pml_value = _pml("RankedListLoss", margin=0.4, Tn=1.0)(_t(X), torch.as_tensor(y)).item()
    assert pml.loss == pytest.approx(pml_value, rel=1e-13)
    assert abs(r.loss - pml_value) > 1e-6


def test_ranked_list_live_weights_break_the_sign_rule():
    # Two violating negatives with u = alpha - D of 0.02 and 1.0, Tn = 10: L_N ~ 1.0 and
    # 1 + Tn (0.02 - L_N) < 0, so the less violating negative gets a NEGATIVE weight.
    alpha = 1.2
    d_small, d_big = alpha - 0.02, alpha - 1.0
    S = np.array([[1.0, 1 - d_small**2 / 2, 1 - d_big**2 / 2], [1 - d_small**2 / 2, 1.0, 0.0], [1 - d_big**2 / 2, 0.0, 1.0]])
    y = np.array([0, 1, 2])
    r = gpwref.from_similarity("ranked_list", S, y, Tn=10.0)
    assert r.grad_sim[0, 1] < 0 < r.grad_sim[0, 2]


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("ranked_list", {"imbalance": 1.5}, "imbalance"),
        ("ranked_list", {"Tn": -1.0}, "Tn"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        gpwref.compute(loss, _rows(0, 60, 180), HAND_Y, **hyper)
    assert info.value.argument == argument
