"""tuplet_margin: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import HAND_S, HAND_S_Y as HAND_Y, _pml, _t, angles_to_rows as _rows


def test_tuplet_margin_hand_derived():
    # One anchor 0 with positive 1 (S = 0.8) and negative 2 (S = 0.1); s = 4, beta = 10 degrees.
    # theta = acos 0.8, c = cos(theta - beta); l_01 = log(1 + e^{s (0.1 - c)});
    # anchor 1: positive 0 (same c), negative 2 at S12 = -0.5. K = 2.
    beta = math.radians(10.0)
    theta = math.acos(0.8)
    c = math.cos(theta - beta)
    l01 = math.log1p(math.exp(4 * (0.1 - c)))
    l10 = math.log1p(math.exp(4 * (-0.5 - c)))
    r = gpwref.from_similarity("tuplet_margin", HAND_S, HAND_Y, margin_deg=10.0, scale=4.0)
    assert r.loss == pytest.approx((l01 + l10) / 2, rel=1e-14)
    pi = math.exp(4 * (0.1 - c)) / (1 + math.exp(4 * (0.1 - c)))
    assert r.grad_sim[0, 2] == pytest.approx(4 * pi / 2, rel=1e-13)
    assert r.grad_sim[0, 1] == pytest.approx(-4 * pi * math.sin(theta - beta) / math.sin(theta) / 2, rel=1e-12)


def test_tuplet_margin_sign_flip_and_edge_rule():
    # theta_ap < beta (S_ap = cos 3 deg, margin 5.73 deg): the positive weight is positive.
    s_close = math.cos(math.radians(3.0))
    S = np.array([[1, s_close, 0.2], [s_close, 1, 0.1], [0.2, 0.1, 1.0]])
    r = gpwref.from_similarity("tuplet_margin", S, HAND_Y)
    assert r.grad_sim[0, 1] > 0 and r.grad_sim[1, 0] > 0
    # docs/losses.md#tuplet_margin: at S_ap = 1 (a duplicate) arccos' slope is infinite; PML gives NaN
    # gradients there (torch.acos at 1) while gpwref takes theta = 0 with no weight and stays finite.
    S[0, 1] = S[1, 0] = 1.0
    r = gpwref.from_similarity("tuplet_margin", S, HAND_Y)
    assert r.grad_sim[0, 1] == 0.0 and np.all(np.isfinite(r.grad_sim))
    assert r.loss == pytest.approx((math.log1p(math.exp(64 * (0.2 - math.cos(math.radians(5.73)))))
                                    + math.log1p(math.exp(64 * (0.1 - math.cos(math.radians(5.73)))))) / 2, rel=1e-13)
    X = _rows(0, 0, 90)
    X_t = _t(X)
    _pml("TupletMarginLoss")(X_t, torch.as_tensor(HAND_Y)).backward()
    assert not torch.all(torch.isfinite(X_t.grad))
    assert np.all(np.isfinite(gpwref.compute("tuplet_margin", X, HAND_Y, profile="pml").grad_emb))


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("tuplet_margin", {"scale": -64.0}, "scale"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        gpwref.compute(loss, _rows(0, 60, 180), HAND_Y, **hyper)
    assert info.value.argument == argument
