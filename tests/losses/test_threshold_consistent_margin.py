"""threshold_consistent_margin: hand-derived batches, the closed selection against PML, bad input
(drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import HAND_S, HAND_S_Y, _pml, _torch, raises


def test_tcm_hand_derived():
    # HAND_S, labels [0, 0, 1], margins 0.9 / 0.5, lambdas 1.
    #   positives (0,1), (1,0) at 0.8 <= 0.9: both selected, terms 0.1 each, mean 0.1.
    #   negatives at 0.1 and -0.5: none >= 0.5, no negative part.
    #   L = 0.1; G = -1/2 on the two positives, 0 elsewhere.
    r = gpwref.from_similarity("threshold_consistent_margin", HAND_S, HAND_S_Y, profile="pml")
    assert r.loss == pytest.approx(0.1, rel=1e-14)
    want = np.zeros((3, 3))
    want[[0, 1], [1, 0]] = -0.5
    np.testing.assert_array_equal(r.grad_sim, want)
    # lambda_plus = 3 scales the positive part: L = 0.3, G = -3/2.
    scaled = gpwref.from_similarity("threshold_consistent_margin", HAND_S, HAND_S_Y, profile="pml", lambda_plus=3.0)
    assert scaled.loss == pytest.approx(0.3, rel=1e-14)
    np.testing.assert_array_equal(scaled.grad_sim, 3 * want)


def test_tcm_pair_on_its_margin_is_selected_and_counted_as_pml():
    # Rows (1, 0), (0.6, 0.8), (0, 1), labels [0, 0, 1], margin_minus = 0.
    #   S01 = 0.6, S02 = 0 exactly (orthogonal), S12 = 0.8.
    #   positives (0,1), (1,0): 0.9 - 0.6 = 0.3 each, mean 0.3.
    #   negatives (0,2), (2,0) at exactly 0 = margin_minus: selected with term 0 (PML's >=), and counted;
    #   (1,2), (2,1): 0.8 each. Negative part (0 + 0 + 0.8 + 0.8) / 4 = 0.4 (0.8 if the pairs on the
    #   margin were not counted). L = 0.7; G = -1/2 on the positives, +1/4 on all four negatives.
    X = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    y = np.array([0, 0, 1])
    r = gpwref.compute("threshold_consistent_margin", X, y, profile="pml", margin_minus=0.0)
    assert r.loss == pytest.approx(0.7, rel=1e-12)
    want = np.array([[0.0, -0.5, 0.25], [-0.5, 0.0, 0.25], [0.25, 0.25, 0.0]])
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    assert r.neg_used[0, 2] and r.neg_used[2, 0]
    value = _pml("ThresholdConsistentMarginLoss", margin_minus=0.0)(_torch(X), torch.tensor(y))
    assert float(value) == pytest.approx(0.7, rel=1e-12)


@pytest.mark.parametrize(
    "name, value, rule",
    [("margin_plus", 1.5, "a cosine in \\[-1, 1\\]"), ("margin_minus", float("inf"), "a cosine"),
     ("lambda_minus", -1.0, ">= 0"), ("lambda_plus", "1", ">= 0")],
)
def test_tcm_bad_hyper(name, value, rule):
    with raises(name, rule):
        gpwref.from_similarity("threshold_consistent_margin", HAND_S, HAND_S_Y, profile="pml", **{name: value})
