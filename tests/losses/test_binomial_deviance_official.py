"""binomial_deviance under the official profile (Deep_Metric's conventions): hand-derived values, the code's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref
from gpwref.testing import Batch
from gpwref_verification.harness import check_case

from ._helpers import HAND_S_Y, angles_to_rows, raises, softplus


def test_official_drops_a_same_label_pair_at_s_one_as_self():
    # Labels [0, 0, 1, 1] against themselves; rows 0 and 1 identical (S01 = 1), rows 2, 3 at 90 and 180 deg.
    # paper: (0, 1) is a positive pair with term softplus(2 (0.5 - 1)) = softplus(-1);
    # official: S >= 1 - 1e-5 is "self", so anchors 0 and 1 have no positive and the profile refuses
    # the batch (the code's mean over no positive is NaN).
    X = angles_to_rows(0, 0, 90, 180)
    y = np.array([0, 0, 1, 1])
    paper = gpwref.compute("binomial_deviance", X, y)
    assert paper.pos_used[0, 1]
    with raises("labels", "every anchor needs a positive"):
        gpwref.compute("binomial_deviance", X, y, profile="official")


def test_official_hand_derived_where_the_rules_agree():
    # Rows at 0, 60, 90, 180 deg, labels [0, 0, 1, 1] (no duplicates): official = paper here.
    # Anchor 0: positive S01 = 1/2 -> softplus(2 (0.5 - 0.5)) = log 2; negatives S02 = 0, S03 = -1 ->
    #   (softplus(40 (0 - 0.5)) + softplus(40 (-1 - 0.5))) / 2 = (softplus(-20) + softplus(-60)) / 2.
    X = angles_to_rows(0, 60, 90, 180)
    y = np.array([0, 0, 1, 1])
    r = gpwref.compute("binomial_deviance", X, y, profile="official")
    assert r.per_anchor[0] == pytest.approx((math.log(2) + (softplus(-20.0) + softplus(-60.0)) / 2) / 4, rel=1e-13)
    np.testing.assert_array_equal(r.grad_sim, gpwref.compute("binomial_deviance", X, y).grad_sim)


def test_official_matches_deep_metric_binomial():
    # The code's rules run where they can express the batch (x.x exactly 1 on every row); count them.
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(12):
        X = rng.normal(size=(8, 4))
        batch = Batch(X / np.linalg.norm(X, axis=1, keepdims=True), np.repeat(np.arange(4), 2))
        report = check_case("binomial_deviance", "official", {}, batch, fd=False)
        assert not report.failures(), report.failures()
        compared += "real:Deep_Metric BinomialLoss rules value" in report.errors
    assert compared >= 4


def test_official_refuses_anchors_without_positives():
    with raises("labels", "every anchor needs a positive"):
        gpwref.compute("binomial_deviance", angles_to_rows(0, 60, 180), HAND_S_Y, profile="official")


@pytest.mark.parametrize("y", [np.array([3]), np.zeros(4, dtype=int), np.arange(4)], ids=["m=1", "one-class", "singletons"])
def test_official_refuses_degenerate_batches(y):
    # Where the paper profile gives 0 or a finite value (tests/losses/test_binomial_deviance.py), the code
    # fails (NaN mean over no positive), so the official profile refuses, naming the labels.
    with raises("labels", "every anchor needs a"):
        gpwref.compute("binomial_deviance", angles_to_rows(0, 50, 130, 200)[: len(y)], y, profile="official")
