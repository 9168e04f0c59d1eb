"""pairwise_cosface: hand-derived batches, fast-reid's conventions, the oracle, bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref
from gpwref.testing import assert_loss_matches
from gpwref_verification.refs.pairwise_cosface import fast_reid

from ._helpers import HAND_S, HAND_S_Y, angles_to_rows, raises, sigmoid, softplus


def test_pairwise_cosface_hand_derived():
    # gamma = 2, margin = 0.25 on HAND_S (labels [0, 0, 1]); one (p, n) pair per anchor, so
    #   x_i = gamma (S_in - S_ip + margin).
    # Anchor 0: p = 1 (0.8), n = 2 (0.1):  x0 = 2 (0.1 - 0.8 + 0.25) = -0.9.
    # Anchor 1: p = 0 (0.8), n = 2 (-0.5): x1 = 2 (-0.5 - 0.8 + 0.25) = -2.1.
    # Anchor 2: no positive: l = 0, yet it counts in the mean: L = (sp(x0) + sp(x1)) / 3.
    # Weights: G_ip = -(gamma / 3) sigma(x_i) (softmax over one positive is 1), G_in = +(gamma / 3) sigma(x_i).
    r = gpwref.from_similarity("pairwise_cosface", HAND_S, HAND_S_Y, gamma=2.0, margin=0.25)
    assert r.loss == pytest.approx((softplus(-0.9) + softplus(-2.1)) / 3, rel=1e-14)
    want = np.zeros((3, 3))
    want[0, 1], want[0, 2] = -2 / 3 * sigmoid(-0.9), 2 / 3 * sigmoid(-0.9)
    want[1, 0], want[1, 2] = -2 / 3 * sigmoid(-2.1), 2 / 3 * sigmoid(-2.1)
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=0)
    assert r.per_anchor[2] == 0.0 and not r.pos_used[2].any()


def test_pairwise_cosface_sums_over_every_positive_negative_pair():
    # Anchor 0 against a reference set with labels [0, 0, 1, 1], gamma = 1, margin = 0:
    # S_0 = [1/2, 1/4, 0, -1/2]; the (p, n) exponents S_n - S_p are -1/2, -1/4, -1, -3/4, so
    #   l_0 = log(1 + e^-1/2 + e^-1/4 + e^-1 + e^-3/4)  (the proxy form would be
    #   log(1 + (e^0 + e^-1/2) / (e^1/2 + e^1/4)), a different number).
    # G_0p = -(e^{-S_p} (e^0 + e^-1/2)) / (1 + sum), G_0n = e^{S_n} (e^-1/2 + e^-1/4) / (1 + sum).
    S = np.array([[0.5, 0.25, 0.0, -0.5]])
    r = gpwref.from_similarity("pairwise_cosface", S, [0], ref_labels=[0, 0, 1, 1], gamma=1.0, margin=0.0)
    total = 1 + math.exp(-0.5) + math.exp(-0.25) + math.exp(-1) + math.exp(-0.75)
    assert r.loss == pytest.approx(math.log(total), rel=1e-14)
    assert r.loss != pytest.approx(math.log(1 + (1 + math.exp(-0.5)) / (math.exp(0.5) + math.exp(0.25))), rel=1e-3)
    negatives = 1 + math.exp(-0.5)
    positives = math.exp(-0.5) + math.exp(-0.25)
    want = np.array([[-math.exp(-0.5) * negatives, -math.exp(-0.25) * negatives, positives, math.exp(-0.5) * positives]]) / total
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=0)


def test_pairwise_cosface_torch_softplus_threshold_is_linear_above_it():
    # One anchor, one (p, n) pair, gamma = 100, margin = 0.25: S_p = 0, S_n = 0 gives x = 25 > 20.
    # softplus_threshold = 20 makes l = x = 25 and G = -+gamma (slope 1); exact: l = 25 + log1p(e^-25).
    S = np.array([[0.0, 0.0]])
    linear = gpwref.from_similarity("pairwise_cosface", S, [0], ref_labels=[0, 1], gamma=100.0, softplus_threshold=20.0)
    exact = gpwref.from_similarity("pairwise_cosface", S, [0], ref_labels=[0, 1], gamma=100.0)
    assert linear.loss == 25.0 and linear.grad_sim.tolist() == [[-100.0, 100.0]]
    assert exact.loss == pytest.approx(25 + math.log1p(math.exp(-25)), rel=1e-15) and exact.loss > 25.0


def test_pairwise_cosface_matches_fast_reid_in_the_oracle():
    # fast-reid's rules (torch softplus, -99999999 masking, mean over rows) as a candidate of the oracle.
    def candidate(X, y):
        return fast_reid(X, y.numpy(), None, None, None, True, gamma=128.0, margin=0.25, softplus_threshold=20.0)

    summary = assert_loss_matches(candidate, "pairwise_cosface", hyper={"softplus_threshold": 20.0},
                                  batches={"with_ref": False}, examples=8)
    assert summary.compared == 8


def test_pairwise_cosface_fast_reid_rows_without_positives_still_count():
    # Labels [0, 0, 1]: fast-reid's mean divides by 3 although anchor 2 has no positive.
    X = angles_to_rows(0, 40, 150)
    y = np.array([0, 0, 1])
    import torch

    theirs = fast_reid(torch.tensor(X), y, None, None, None, True, gamma=2.0, margin=0.25, softplus_threshold=20.0)
    ours = gpwref.compute("pairwise_cosface", X, y, gamma=2.0, margin=0.25, softplus_threshold=20.0)
    assert ours.loss == pytest.approx(theirs.item(), rel=1e-13)
    assert ours.per_anchor[2] == 0.0


@pytest.mark.parametrize(
    "hyper, argument",
    [({"gamma": 0.0}, "gamma"), ({"margin": math.inf}, "margin"), ({"softplus_threshold": "20"}, "softplus_threshold"),
     ({"scale": 64.0}, "scale")],
)
def test_pairwise_cosface_bad_hyper_parameters_name_the_argument(hyper, argument):
    with raises(argument):
        gpwref.compute("pairwise_cosface", angles_to_rows(0, 60, 180), HAND_S_Y, **hyper)
