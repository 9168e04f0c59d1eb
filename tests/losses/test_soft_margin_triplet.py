"""soft_margin_triplet: hand-derived batches, fast-reid's conventions, the oracle, bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.testing import assert_loss_matches
from gpwref_verification.refs.soft_margin_triplet import fast_reid

from ._helpers import D12, HAND_X, HAND_Y, R2, raises, sigmoid, softplus

R3 = math.sqrt(3)


def test_soft_margin_triplet_batch_hard_hand_derived():
    # HAND_X (0, 60, 90, 180 degrees; labels [0, 0, 1, 1]), distances d01 = 1, d02 = sqrt2, d03 = 2,
    # d12 = D12 = sqrt(2 - sqrt3), d13 = sqrt3, d23 = sqrt2. One positive per anchor; hardest negative:
    #   anchor 0: n = 2 (sqrt2 < 2),  gap0 = d01 - d02 = 1 - sqrt2
    #   anchor 1: n = 2 (D12 < sqrt3), gap1 = 1 - D12
    #   anchor 2: n = 1 (D12 < sqrt2), gap2 = sqrt2 - D12
    #   anchor 3: n = 1 (sqrt3 < 2),  gap3 = sqrt2 - sqrt3
    # L = (1/4) sum softplus(gap); G_ip = -(1/4) sigma(gap) / d_ip, G_in = +(1/4) sigma(gap) / d_in.
    gaps = [1 - R2, 1 - D12, R2 - D12, R2 - R3]
    r = gpwref.compute("soft_margin_triplet", HAND_X, HAND_Y)
    assert r.loss == pytest.approx(sum(softplus(g) for g in gaps) / 4, rel=1e-14)
    want = np.zeros((4, 4))
    for i, p, n, d_p, d_n, g in [(0, 1, 2, 1, R2, gaps[0]), (1, 0, 2, 1, D12, gaps[1]),
                                 (2, 3, 1, R2, D12, gaps[2]), (3, 2, 1, R2, R3, gaps[3])]:
        want[i, p] = -sigmoid(g) / d_p / 4
        want[i, n] = sigmoid(g) / d_n / 4
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-12, atol=1e-15)
    assert r.neg_used.sum() == 4 and not r.neg_used[0, 3]


def test_soft_margin_triplet_batch_all_hand_derived():
    # mining="all": all 8 triplets (4 anchors x 1 positive x 2 negatives), Z = 8:
    #   anchor 0: 1 - sqrt2, 1 - 2;  anchor 1: 1 - D12, 1 - sqrt3;
    #   anchor 2: sqrt2 - sqrt2 = 0, sqrt2 - D12;  anchor 3: sqrt2 - 2, sqrt2 - sqrt3.
    gaps = [1 - R2, -1.0, 1 - D12, 1 - R3, 0.0, R2 - D12, R2 - 2, R2 - R3]
    r = gpwref.compute("soft_margin_triplet", HAND_X, HAND_Y, mining="all")
    assert r.loss == pytest.approx(sum(softplus(g) for g in gaps) / 8, rel=1e-13)
    # G_01 = -(1/8) (sigma(1 - sqrt2) + sigma(-1)) / d01
    assert r.grad_sim[0, 1] == pytest.approx(-(sigmoid(1 - R2) + sigmoid(-1.0)) / 8, rel=1e-13)
    assert r.extras["triplets"] == 8


def test_soft_margin_triplet_never_zero_unlike_the_hinge():
    # A well separated batch: hinge triplet (margin 0) gives 0, the soft margin log(1 + e^{d_ap - d_an}) > 0.
    # Anchor 0 at 0 deg, positive at 10 deg, negatives at 170 and 180 deg.
    angles = np.radians([0, 10, 170, 180])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 0, 1, 1])
    hinge = gpwref.compute("triplet", X, y, mining="batch_hard", margin=0.0, distance="euclidean")
    soft = gpwref.compute("soft_margin_triplet", X, y)
    assert hinge.loss == 0.0 and soft.loss > 0.0
    # anchor 0: d01 = 2 sin 5deg, hardest negative at 170 deg: d = 2 sin 85deg
    g0 = 2 * math.sin(math.radians(5)) - 2 * math.sin(math.radians(85))
    assert soft.per_anchor[0] == pytest.approx(softplus(g0) / 4, rel=1e-13)


def _fast_reid_candidate(X, y):
    return fast_reid(X, y.numpy(), None, None, None, True, mining="batch_hard")


def test_soft_margin_triplet_matches_fast_reid_on_pk_batches():
    # fast-reid's rules need P x K batches (K >= 2); there self-as-positive and the clamp do not matter.
    summary = assert_loss_matches(_fast_reid_candidate, "soft_margin_triplet",
                                  batches={"pk": (4, 3), "with_ref": False, "duplicates": False}, examples=8)
    assert summary.compared == 8


def test_fast_reid_takes_the_anchor_as_its_own_positive():
    # A singleton class (label 2): fast-reid's only "positive" of anchor 4 is itself at sqrt(1e-12) = 1e-6
    # (and its per-row view needs equal class counts, so this batch errors there); gpwref's anchor 4 has
    # no triplet and the mean runs over the 4 anchors that have one. The transcription refuses the batch.
    angles = np.radians([0, 20, 100, 120, 250])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 0, 1, 1, 2])
    from gpwref_verification.common import NotApplicable

    with pytest.raises(NotApplicable):
        fast_reid(torch.tensor(X), y, None, None, None, True, mining="batch_hard")
    ours = gpwref.compute("soft_margin_triplet", X, y)
    assert ours.per_anchor[4] == 0.0 and ours.extras["triplets"] == 4


@pytest.mark.parametrize("hyper, argument", [({"mining": "semi_hard"}, "mining"), ({"margin": 0.1}, "margin")])
def test_soft_margin_triplet_bad_hyper_parameters_name_the_argument(hyper, argument):
    with raises(argument):
        gpwref.compute("soft_margin_triplet", HAND_X, HAND_Y, **hyper)
