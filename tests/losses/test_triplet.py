"""triplet: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import D12, HAND_X, HAND_Y, R2, _pml, _torch, angles_to_rows, profile_variant_rows, degenerate_batches_give_zero_or_finite


# Triplets of HAND_X (one positive per anchor, two negatives): violations S_an - S_ap + 0.1 (paper):
#   anchor 0 (p=1, S=1/2):  n=2: 0 - 1/2 + 0.1 < 0;          n=3: -1 - 1/2 + 0.1 < 0
#   anchor 1 (p=0, S=1/2):  n=2: sqrt(3)/2 - 0.4 > 0 (active); n=3: -1/2 - 1/2 + 0.1 < 0
#   anchor 2 (p=3, S=0):    n=0: 0 - 0 + 0.1 = 0.1 (active; S20 = S23 up to rounding, a tie);
#                           n=1: sqrt(3)/2 + 0.1 (active)
#   anchor 3 (p=2, S=0):    n=0: -1 + 0.1 < 0;              n=1: -1/2 + 0.1 < 0
# Active sum: (sqrt(3)/2 - 0.4) + 0.1 + (sqrt(3)/2 + 0.1) = sqrt(3) - 0.2, over 8 triplets (3 active).


def test_triplet_paper_all_hand_derived():
    # mean over all 8 triplets; per active triplet -1/8 on its positive, +1/8 on its negative:
    #   (1,0) -1/8, (1,2) +1/8; (2,3) -2/8 (two active triplets), (2,0) +1/8, (2,1) +1/8.
    r = gpwref.compute("triplet", HAND_X, HAND_Y)
    np.testing.assert_allclose(r.loss, (math.sqrt(3) - 0.2) / 8, rtol=1e-14)
    want = np.zeros((4, 4))
    want[1, 0], want[1, 2] = -1 / 8, 1 / 8
    want[2, 3], want[2, 0], want[2, 1] = -2 / 8, 1 / 8, 1 / 8
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    assert (r.extras["triplets"], r.extras["active_triplets"]) == (8, 3)


def test_triplet_paper_batch_hard_hand_derived():
    # Hardest positive = the only one; hardest negative = max S: anchor 0 -> 2 (0 > -1), 1 -> 2,
    # 2 -> 1, 3 -> 1 (-1/2 > -1). Violations: anchor 0: -0.4 -> 0; anchor 1: sqrt(3)/2 - 0.4;
    # anchor 2: sqrt(3)/2 + 0.1; anchor 3: -1/2 + 0.1 -> 0. Mean over the 4 anchors: (sqrt(3) - 0.3)/4.
    r = gpwref.compute("triplet", HAND_X, HAND_Y, mining="batch_hard")
    np.testing.assert_allclose(r.loss, (math.sqrt(3) - 0.3) / 4, rtol=1e-14)
    np.testing.assert_array_equal(r.extras["hardest_positive"], [1, 0, 3, 2])
    np.testing.assert_array_equal(r.extras["hardest_negative"], [2, 2, 1, 1])
    want = np.zeros((4, 4))
    want[1, 0], want[1, 2], want[2, 3], want[2, 1] = -1 / 4, 1 / 4, -1 / 4, 1 / 4
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)


def test_triplet_pml_hand_derived():
    # PML: [d_ap - d_an + 0.05]_+ on unit-sphere distances, mean over the triplets with loss > 0.
    #   (1,0,2): 1 - d12 + 0.05;  (2,3,0): sqrt(2) - sqrt(2) + 0.05 = 0.05;  (2,3,1): sqrt(2) - d12 + 0.05
    #   the other five are < 0.   L = (1.15 + sqrt(2) - 2 d12) / 3.
    # G: dL/dS_ap = -1/(3 d_ap), dL/dS_an = +1/(3 d_an) per active triplet:
    #   (1,0) -1/3, (1,2) +1/(3 d12), (2,3) -2/(3 sqrt(2)), (2,0) +1/(3 sqrt(2)), (2,1) +1/(3 d12).
    r = gpwref.compute("triplet", HAND_X, HAND_Y, profile="pml")
    want_value = (1.15 + R2 - 2 * D12) / 3
    np.testing.assert_allclose(r.loss, want_value, rtol=1e-13)
    want = np.zeros((4, 4))
    want[1, 0], want[1, 2] = -1 / 3, 1 / (3 * D12)
    want[2, 3], want[2, 0], want[2, 1] = -2 / (3 * R2), 1 / (3 * R2), 1 / (3 * D12)
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=0)
    np.testing.assert_allclose(_pml("TripletMarginLoss")(_torch(HAND_X), torch.as_tensor(HAND_Y)).item(), want_value, rtol=1e-13)


def test_triplet_mean_counts_zero_triplets_avg_nonzero_does_not():
    # Same cosine triplets, margin 0.1: the paper's mean divides by 8 triplets, PML's AvgNonZero by the
    # 3 with loss > 0. PML with CosineSimilarity shows both (its default reducer and MeanReducer).
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.reducers import MeanReducer

    kwargs = dict(profile="pml", distance="cosine", margin=0.1)
    nonzero = gpwref.compute("triplet", HAND_X, HAND_Y, **kwargs).loss
    mean = gpwref.compute("triplet", HAND_X, HAND_Y, reduction="mean", **kwargs).loss
    np.testing.assert_allclose(nonzero, (math.sqrt(3) - 0.2) / 3, rtol=1e-14)
    np.testing.assert_allclose(mean, (math.sqrt(3) - 0.2) / 8, rtol=1e-14)
    X, y = _torch(HAND_X), torch.as_tensor(HAND_Y)
    np.testing.assert_allclose(_pml("TripletMarginLoss", margin=0.1, distance=CosineSimilarity())(X, y).item(), nonzero, rtol=1e-13)
    pml_mean = _pml("TripletMarginLoss", margin=0.1, distance=CosineSimilarity(), reducer=MeanReducer())(X, y).item()
    np.testing.assert_allclose(pml_mean, mean, rtol=1e-13)


def test_semi_hard_window_bound_strict_paper_inclusive_pml():
    # Hand S (exact dyadic values), labels [0, 0, 1]. Anchor 0: positive 1 at 0.75, negative 2 at 0.5:
    # gap S_ap - S_an = 0.25 exactly = miner_margin. The paper's window 0 < gap < w drops it; PML's
    # TripletMarginMiner keeps triplet_margin <= margin (miners/triplet_margin_miner.py, "semihard").
    # Anchor 1: gap 0.75 - 0.25 = 0.5 > w: never. With margin 0.3 the kept triplet has loss 0.3 - 0.25.
    S = np.array([[1.0, 0.75, 0.5], [0.75, 1.0, 0.25], [0.5, 0.25, 1.0]])
    y = np.array([0, 0, 1])
    common = dict(profile="paper", mining="semi_hard", distance="cosine", margin=0.3, miner_margin=0.25)
    strict = gpwref.from_similarity("triplet", S, y, semi_hard_bound="strict", **common)
    inclusive = gpwref.from_similarity("triplet", S, y, semi_hard_bound="inclusive", **common)
    assert strict.loss == 0.0 and strict.extras["triplets"] == 0
    assert inclusive.extras["triplets"] == 1
    np.testing.assert_allclose(inclusive.loss, 0.3 - 0.25, rtol=1e-15)
    assert inclusive.grad_sim[0, 1] == -1.0 and inclusive.grad_sim[0, 2] == 1.0
    assert gpwref.get_entry("triplet").defaults["pml"]["semi_hard_bound"] == "inclusive"


def test_semi_hard_treats_gaps_within_rounding_as_ties():
    # A negative that copies the positive under another label has S_an = S_ap in exact arithmetic, but
    # the two computed similarities may differ by an ulp. Here S_02 = S_01 - 1 ulp: a gap of 5.6e-17
    # is a tie (gap 0), so the triplet is not semi-hard; a genuine gap of 0.125 is.
    y = np.array([0, 0, 1])
    for s02, kept in ((np.nextafter(0.5, 0.0), 0), (0.375, 1)):
        S = np.array([[1.0, 0.5, s02], [0.5, 1.0, -1.0], [s02, -1.0, 1.0]])
        r = gpwref.from_similarity("triplet", S, y, mining="semi_hard", margin=0.2)
        assert r.extras["triplets"] == kept, s02
    # the same rule makes batch-hard ties exact: the lower index wins over a copy 1 ulp harder
    S = np.array([[1.0, 0.5, np.nextafter(0.5, 0.0), -0.3], [0.5, 1.0, 0.5, 0.0], [0.5, 0.5, 1.0, 0.0], [-0.3, 0.0, 0.0, 1.0]])
    r = gpwref.from_similarity("triplet", S, np.array([0, 0, 0, 1]), mining="batch_hard")
    assert r.extras["hardest_positive"][0] == 1


def test_pml_batch_hard_ties_go_to_the_lowest_index_like_batch_hard_miner():
    # Anchor 0 at 0deg; positives 1 and 2 are the same point (100deg), negatives 3 and 4 the same point
    # (40deg): both hardest pairs are tied, PML's torch.max/min and gpwref pick the lower index.
    from pytorch_metric_learning.miners import BatchHardMiner

    X = angles_to_rows(0, 100, 100, 40, 40, 200)
    y = np.array([0, 0, 0, 1, 1, 1])
    r = gpwref.compute("triplet", X, y, profile="pml", mining="batch_hard")
    assert r.extras["hardest_positive"][0] == 1 and r.extras["hardest_negative"][0] == 3
    assert r.grad_sim[0, 1] < 0 and r.grad_sim[0, 2] == 0 and r.grad_sim[0, 3] > 0 and r.grad_sim[0, 4] == 0
    a, p, n = BatchHardMiner()(_torch(X), torch.as_tensor(y))
    row = list(a.numpy()).index(0)
    assert (int(p[row]), int(n[row])) == (1, 3)


@pytest.mark.parametrize("loss,profile,variant", profile_variant_rows("triplet"))
def test_degenerate_batches_give_zero_or_finite(loss, profile, variant):
    degenerate_batches_give_zero_or_finite(loss, profile, variant)

@pytest.mark.parametrize(
    "loss,hyper,argument",
    [
        ("triplet", {"mining": "hard"}, "mining"),
        ("triplet", {"margin": -0.1}, "margin"),
        ("triplet", {"margin": float("inf")}, "margin"),
        ("triplet", {"miner_margin": -0.2}, "miner_margin"),
        ("triplet", {"semi_hard_bound": "open"}, "semi_hard_bound"),
        ("triplet", {"reduction": "sum"}, "reduction"),
        ("triplet", {"distance": "squared"}, "distance"),
    ],
)
def test_bad_hyper_parameter_names_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as caught:
        gpwref.compute(loss, HAND_X, HAND_Y, **hyper)
    assert caught.value.argument == argument
    assert argument in str(caught.value)


@pytest.mark.parametrize("mining", ["all", "semi_hard"])
def test_triplet_blocks_of_positives_give_the_same_result(mining, monkeypatch):
    # all/semi_hard work on (positives x negatives) blocks per anchor; one positive per block must agree.
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(9, 3)), np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    whole = gpwref.compute("triplet", X, y, mining=mining, margin=0.3)
    monkeypatch.setattr(gpwref.losses.triplet, "_BLOCK_ENTRIES", 1)
    blocked = gpwref.compute("triplet", X, y, mining=mining, margin=0.3)
    assert whole.extras["triplets"] == blocked.extras["triplets"] > 0
    np.testing.assert_allclose(blocked.loss, whole.loss, rtol=1e-14)
    np.testing.assert_array_equal(blocked.grad_sim, whole.grad_sim)
