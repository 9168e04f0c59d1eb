"""angular: hand-derived batch, PML on unit and raw rows, bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import HAND_S, HAND_S_Y, HAND_X, HAND_Y, _pml, _torch, raises, sigmoid


def test_angular_hand_derived():
    # HAND_S, labels [0, 0, 1], alpha = 45 deg: t = tan^2 45 = 1, f = 4 (S_an + S_pn) - 4 S_ap.
    #   positive pairs (0,1) and (1,0), each with the one negative 2:
    #   f_012 = 4 (S02 + S12) - 4 S01 = 4 (0.1 - 0.5) - 3.2 = -4.8, and f_102 = 4 (S12 + S02) - 4 S10 = -4.8.
    #   L = (1/2) (2 log(1 + e^-4.8)) = log(1 + e^-4.8); w = sigmoid(-4.8) for both.
    #   G_02 = G_12 = (1/2)(4w + 4w) = 4w (each pair pushes both S_an and S_pn); G_01 = G_10 = -(1/2) 4w = -2w.
    r = gpwref.from_similarity("angular", HAND_S, HAND_S_Y, profile="pml", alpha=45.0)
    w = sigmoid(-4.8)
    assert r.loss == pytest.approx(math.log1p(math.exp(-4.8)), rel=1e-14)
    want = np.zeros((3, 3))
    want[[0, 1], [2, 2]] = 4 * w
    want[[0, 1], [1, 0]] = -2 * w
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    np.testing.assert_allclose(r.per_anchor, [r.loss / 2, r.loss / 2, 0.0], rtol=1e-14)


def test_angular_matches_pml_on_unit_rows_not_on_raw_rows():
    # PML normalises anchors and positives but multiplies by the raw negative rows: with rows of norms
    # 1, 2, 3, 0.5 its value differs from the same loss on the unit rows, which is gpwref's (a loss of S).
    X = HAND_X * np.array([1.0, 2.0, 3.0, 0.5])[:, None]
    ours = gpwref.compute("angular", X, HAND_Y, profile="pml")
    loss_fn = _pml("AngularLoss")
    on_unit = loss_fn(torch.nn.functional.normalize(_torch(X), dim=1), torch.tensor(HAND_Y))
    on_raw = loss_fn(_torch(X), torch.tensor(HAND_Y))
    assert ours.loss == pytest.approx(float(on_unit), rel=1e-12)
    assert abs(float(on_raw) - ours.loss) > 1e-3


def test_angular_refuses_a_reference_set():
    with raises("ref"):
        gpwref.compute("angular", HAND_X, HAND_Y, ref=HAND_X, ref_labels=HAND_Y, profile="pml")


@pytest.mark.parametrize("alpha", [0.0, 90.0, -10.0, float("nan")])
def test_angular_bad_alpha(alpha):
    with raises("alpha", "an angle in degrees in \\(0, 90\\)"):
        gpwref.from_similarity("angular", HAND_S, HAND_S_Y, profile="pml", alpha=alpha)
