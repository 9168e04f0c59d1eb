"""contrastive_ms_mining: hand-derived batches, Deep_Metric's conventions, bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpwref
from gpwref.testing import Batch
from gpwref_verification.common import NotApplicable
from gpwref_verification.harness import check_case
from gpwref_verification.refs.contrastive_ms_mining import deep_metric

from ._helpers import HAND_S, HAND_S_Y, angles_to_rows, raises


def test_contrastive_ms_mining_hand_derived_on_hand_s():
    # margin = 0.75 on HAND_S (labels [0, 0, 1]):
    # anchor 0: min_P = 0.8, max_N = 0.1; negative 2 kept (0.1 > 0.8 - 0.75 = 0.05), positive 1 kept
    #   (0.8 < 0.1 + 0.75 = 0.85): l0 = (1 - 0.8) + 0.1 = 0.3.
    # anchor 1: min_P = 0.8, max_N = -0.5; -0.5 > 0.05 fails, 0.8 < 0.25 fails: l1 = 0.
    # anchor 2: no positive: nothing kept. L = 0.3 / 3 = 0.1; G_01 = -1/3, G_02 = +1/3.
    r = gpwref.from_similarity("contrastive_ms_mining", HAND_S, HAND_S_Y, margin=0.75)
    assert r.loss == pytest.approx(0.1, rel=1e-14)
    want = np.zeros((3, 3))
    want[0, 1], want[0, 2] = -1 / 3, 1 / 3
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-15, atol=0)


def test_contrastive_ms_mining_means_over_kept_pairs_and_strict_boundary():
    # One anchor (label 0) against references labelled [0, 0, 1, 1], S = [0.9, 0.5, 0.45, 0]:
    # min_P = 0.5, max_N = 0.45.
    # margin 0.1: negatives kept iff S > 0.4 -> {0.45}; positives kept iff S < 0.55 -> {0.5}:
    #   L = (1 - 0.5) + 0.45 = 0.95, G = [0, -1, 1, 0].
    # margin 0.5: negatives iff S > 0 -> {0.45} (0 sits exactly on the boundary: dropped);
    #   positives iff S < 0.95 -> {0.9, 0.5}: L = ((1 - 0.9) + (1 - 0.5)) / 2 + 0.45 = 0.75,
    #   G = [-1/2, -1/2, 1, 0].
    S = np.array([[0.9, 0.5, 0.45, 0.0]])
    refs = [0, 0, 1, 1]
    r = gpwref.from_similarity("contrastive_ms_mining", S, [0], ref_labels=refs, margin=0.1)
    assert r.loss == pytest.approx(0.95, rel=1e-15) and r.grad_sim.tolist() == [[0.0, -1.0, 1.0, 0.0]]
    r = gpwref.from_similarity("contrastive_ms_mining", S, [0], ref_labels=refs, margin=0.5)
    assert r.loss == pytest.approx(0.75, rel=1e-15) and r.grad_sim.tolist() == [[-0.5, -0.5, 1.0, 0.0]]
    assert not r.neg_used[0, 3]


def _pk_batches(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        X = rng.normal(size=(8, 4))
        yield Batch(X / np.linalg.norm(X, axis=1, keepdims=True), np.repeat(np.arange(4), 2))


def test_contrastive_ms_mining_matches_deep_metric_under_official():
    # Deep_Metric's rules run where they can express the batch (x.x exactly 1 on every row); count them.
    compared = 0
    for batch in _pk_batches(12):
        report = check_case("contrastive_ms_mining", "official", {}, batch, fd=False)
        assert not report.failures(), report.failures()
        compared += "real:Deep_Metric HardMiningLoss rules value" in report.errors
    assert compared >= 4


def test_deep_metric_keeps_the_self_pair_when_x_dot_x_rounds_below_one():
    # Its self rule is S < 1: a row whose x.x rounds to 1 - 2^-53 keeps itself as a positive
    # (1 - S ~ 1e-16, but one more pair in the mean); the transcription refuses such batches.
    for batch in _pk_batches(40, seed=1):
        U = torch.nn.functional.normalize(torch.tensor(batch.embeddings), dim=1)
        if bool(((U * U).sum(dim=1) < 1).any()) and bool((torch.diag(U @ U.T) < 1).any()):
            with pytest.raises(NotApplicable, match="self pair"):
                deep_metric(torch.tensor(batch.embeddings), batch.labels, None, None, None, True, margin=0.1)
            return
    pytest.fail("no drawn batch had x.x < 1")


def test_official_profile_refuses_anchors_without_positives():
    # Deep_Metric indexes the hardest positive: an anchor without one raises there, and under `official`.
    with raises("labels", "every anchor needs a positive"):
        gpwref.compute("contrastive_ms_mining", angles_to_rows(0, 60, 180), HAND_S_Y, profile="official")


@pytest.mark.parametrize("hyper, argument", [({"margin": -0.1}, "margin"), ({"eps": 0.1}, "eps")])
def test_contrastive_ms_mining_bad_hyper_parameters_name_the_argument(hyper, argument):
    with raises(argument):
        gpwref.compute("contrastive_ms_mining", angles_to_rows(0, 60, 180), HAND_S_Y, **hyper)


def test_contrastive_ms_mining_is_comparable_in_the_oracle():
    # An independent torch formulation on X (rows normalised, index self rule) as a candidate.
    from gpwref.testing import assert_loss_matches
    from gpwref_verification.refs.contrastive_ms_mining import torch_loss

    def candidate(X, y):
        U = torch.nn.functional.normalize(X, dim=1)
        same = y[:, None] == y[None, :]
        return torch_loss(U @ U.T, same & ~torch.eye(len(y), dtype=torch.bool), ~same, "paper", **{"margin": 0.1})

    assert assert_loss_matches(candidate, "contrastive_ms_mining", batches={"with_ref": False}, examples=6).compared == 6
