"""lifted_structure_scaled: hand-derived batches, Deep_Metric's conventions, bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.testing import Batch
from gpwref_verification.harness import check_case

from ._helpers import HAND_S, HAND_S_Y, angles_to_rows, raises


def test_lifted_structure_scaled_hand_derived_on_hand_s():
    # One positive and one negative per anchor: (2/beta) log e^{-beta S_p} = -2 S_p and
    # (2/alpha) log e^{alpha S_n} = 2 S_n whatever the scales (defaults alpha 40, beta 2).
    # anchor 0: -2 (0.8) + 2 (0.1) = -1.4;  anchor 1: -2 (0.8) + 2 (-0.5) = -2.6;  anchor 2: no positive, 0.
    # L = (-1.4 - 2.6) / 3 = -4/3; each used weight is a one-element softmax times 2/m: -+2/3.
    r = gpwref.from_similarity("lifted_structure_scaled", HAND_S, HAND_S_Y)
    assert r.loss == pytest.approx(-4 / 3, rel=1e-14)
    want = np.array([[0, -2 / 3, 2 / 3], [-2 / 3, 0, 2 / 3], [0, 0, 0]])
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)


def test_lifted_structure_scaled_softmax_weights_and_mining():
    # One anchor (label 0) against references [0, 0, 1, 1], S = [0.5, 0.25, 0, -0.5], alpha = beta = 2:
    #   L = log(e^{-1} + e^{-0.5}) + log(e^0 + e^{-1});
    #   G_p = -2 e^{-2 S_p} / (e^{-1} + e^{-0.5}),  G_n = 2 e^{2 S_n} / (1 + e^{-1}).
    S = np.array([[0.5, 0.25, 0.0, -0.5]])
    refs = [0, 0, 1, 1]
    r = gpwref.from_similarity("lifted_structure_scaled", S, [0], ref_labels=refs, alpha=2.0, beta=2.0)
    pos_sum, neg_sum = math.exp(-1) + math.exp(-0.5), 1 + math.exp(-1)
    assert r.loss == pytest.approx(math.log(pos_sum) + math.log(neg_sum), rel=1e-14)
    want = [[-2 * math.exp(-1) / pos_sum, -2 * math.exp(-0.5) / pos_sum, 2 / neg_sum, 2 * math.exp(-1) / neg_sum]]
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    # mining_margin 0.3: min_P = 0.25, max_N = 0; negatives kept iff S > -0.05 -> {0}, positives iff
    # S < 0.3 -> {0.25}: L = -2 (0.25) + 2 (0) = -0.5, G = [0, -2, 2, 0].
    r = gpwref.from_similarity("lifted_structure_scaled", S, [0], ref_labels=refs, alpha=2.0, beta=2.0, mining_margin=0.3)
    assert r.loss == pytest.approx(-0.5, rel=1e-15) and r.grad_sim.tolist() == [[0.0, -2.0, 2.0, 0.0]]


@pytest.mark.parametrize("variant", [{}, {"mining_margin": 0.1}])
def test_lifted_structure_scaled_matches_deep_metric_under_official(variant):
    # Deep_Metric's rules run where they can express the batch (x.x exactly 1 on every row); count them.
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(12):
        X = rng.normal(size=(8, 4))
        batch = Batch(X / np.linalg.norm(X, axis=1, keepdims=True), np.repeat(np.arange(4), 2))
        report = check_case("lifted_structure_scaled", "official", variant, batch, fd=False)
        assert not report.failures(), report.failures()
        compared += "real:Deep_Metric LiftedStructureLoss rules value" in report.errors
    assert compared >= 4


def test_official_profile_refuses_anchors_without_positives():
    # Deep_Metric's value is -inf there (log of an empty sum); `official` raises, `paper` gives 0.
    with raises("labels", "every anchor needs a positive"):
        gpwref.compute("lifted_structure_scaled", angles_to_rows(0, 60, 180), HAND_S_Y, profile="official")
    assert gpwref.compute("lifted_structure_scaled", angles_to_rows(0, 60, 180), HAND_S_Y).per_anchor[2] == 0.0


@pytest.mark.parametrize("hyper, argument", [({"alpha": 0.0}, "alpha"), ({"beta": -2.0}, "beta"),
                                             ({"mining_margin": -0.1}, "mining_margin")])
def test_lifted_structure_scaled_bad_hyper_parameters_name_the_argument(hyper, argument):
    with raises(argument):
        gpwref.compute("lifted_structure_scaled", angles_to_rows(0, 60, 180), HAND_S_Y, **hyper)


def test_lifted_structure_scaled_is_comparable_in_the_oracle():
    # An independent torch formulation on X (rows normalised, index self rule) as a candidate.
    from gpwref.testing import assert_loss_matches
    from gpwref_verification.refs.lifted_structure_scaled import torch_loss

    def candidate(X, y):
        U = torch.nn.functional.normalize(X, dim=1)
        same = y[:, None] == y[None, :]
        return torch_loss(U @ U.T, same & ~torch.eye(len(y), dtype=torch.bool), ~same, "paper", **{"alpha": 40.0, "beta": 2.0, "mining_margin": None})

    assert assert_loss_matches(candidate, "lifted_structure_scaled", batches={"with_ref": False}, examples=6).compared == 6
