"""Contrastive, triplet and binomial deviance: hand-derived batches, bad hyper-parameters, PML quirks.

The drawn-batch proofs (autograd, finite differences, loops, PML) run over the whole catalog in
tests/test_catalog.py; here each loss gets a batch small enough to derive by hand, every bad
hyper-parameter gets its error, and every pytorch-metric-learning rule we model is shown to matter
(each against the PML class itself where PML can express it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from verification.common import NotApplicable


def angles_to_rows(*degrees):
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# Four unit vectors at 0, 60, 90 and 180 degrees, labels [0, 0, 1, 1]. Cosines S_ij = cos(angle difference):
#   S01 = 1/2, S02 = 0, S03 = -1, S12 = sqrt(3)/2, S13 = -1/2, S23 = 0.
# Unit-sphere distances d = sqrt(2 - 2S) = 2 sin(angle/2):
#   d01 = 1, d02 = sqrt(2), d03 = 2, d12 = 2 sin 15deg = sqrt(2 - sqrt(3)), d13 = sqrt(3), d23 = sqrt(2).
# Ordered positive pairs: (0,1), (1,0), (2,3), (3,2); the other 8 off-diagonal pairs are negatives.
HAND_X = angles_to_rows(0, 60, 90, 180)
HAND_Y = np.array([0, 0, 1, 1])
C = math.sqrt(3) / 2
D12 = math.sqrt(2 - math.sqrt(3))
R2 = math.sqrt(2)


def _pml(cls, **kwargs):
    from pytorch_metric_learning import losses

    return getattr(losses, cls)(**kwargs)


def _torch(X):
    return torch.tensor(np.asarray(X, dtype=np.float64))


# ---------------------------------------------------------------------------------------------- contrastive


def test_contrastive_paper_hand_derived():
    # Paper profile: positives 1 - S (weight 1), negatives [S - 0.5]_+, summed per anchor, divided by m = 4.
    #   positive terms: (0,1), (1,0): 1 - 1/2 = 1/2 each; (2,3), (3,2): 1 - 0 = 1 each      -> 3
    #   negatives above 0.5: only (1,2), (2,1) with S = sqrt(3)/2: sqrt(3)/2 - 1/2 each      -> sqrt(3) - 1
    #   L = (3 + sqrt(3) - 1) / 4 = (2 + sqrt(3)) / 4
    # G = -1/4 on the four positives, +1/4 on (1,2) and (2,1), 0 elsewhere.
    r = gpwref.compute("contrastive", HAND_X, HAND_Y)
    np.testing.assert_allclose(r.loss, (2 + math.sqrt(3)) / 4, rtol=1e-14)
    np.testing.assert_allclose(r.per_anchor, np.array([0.5, C, 1 + C - 0.5, 1.0]) / 4, rtol=1e-14)
    want = np.zeros((4, 4))
    want[[0, 1, 2, 3], [1, 0, 3, 2]] = -0.25
    want[[1, 2], [2, 1]] = 0.25
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(r.neg_used, want > 0)


def test_contrastive_pml_hand_derived_and_pml_agrees():
    # PML profile: d from S, positives [d - 0]_+, negatives [1 - d]_+, each sub-loss averaged over its
    # terms > 0, the two summed.
    #   positives: d = 1, 1, sqrt(2), sqrt(2), all > 0: Z_pos = 4, mean (1 + sqrt(2)) / 2
    #   negatives: only d12 = 0.5176 < 1 ((1,2) and (2,1)): Z_neg = 2, mean 1 - d12
    # G (dd/dS = -1/d): positives -1/(4 d): -1/4 at (0,1), (1,0); -1/(4 sqrt(2)) at (2,3), (3,2);
    #   negatives +1/(2 d12) at (1,2), (2,1).
    r = gpwref.compute("contrastive", HAND_X, HAND_Y, profile="pml")
    want_value = (1 + R2) / 2 + 1 - D12
    np.testing.assert_allclose(r.loss, want_value, rtol=1e-14)
    want = np.zeros((4, 4))
    want[[0, 1], [1, 0]] = -1 / 4
    want[[2, 3], [3, 2]] = -1 / (4 * R2)
    want[[1, 2], [2, 1]] = 1 / (2 * D12)
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=0)
    X = _torch(HAND_X).requires_grad_()
    value = _pml("ContrastiveLoss")(X, torch.as_tensor(HAND_Y))
    value.backward()
    np.testing.assert_allclose(value.item(), want_value, rtol=1e-13)
    np.testing.assert_allclose(r.grad_emb, X.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_pml_avg_nonzero_averages_over_nonzero_pairs_only():
    # The negative sub-loss is the mean over the 2 negative terms > 0, not over all 8 negative pairs;
    # adding a negative far away (a zero term) changes neither gpwref nor PML.
    r = gpwref.compute("contrastive", HAND_X, HAND_Y, profile="pml")
    over_nonzero = (1 + R2) / 2 + (1 - D12)
    over_all_pairs = (1 + R2) / 2 + 2 * (1 - D12) / 8
    assert r.extras["active_neg_pairs"] == 2
    np.testing.assert_allclose(r.loss, over_nonzero, rtol=1e-14)
    assert abs(r.loss - over_all_pairs) > 0.1
    X = np.concatenate([HAND_X, angles_to_rows(250)])  # 70+ degrees from everyone: d > 1 to all
    y = np.append(HAND_Y, 2)
    wider = gpwref.compute("contrastive", X, y, profile="pml")
    np.testing.assert_allclose(wider.loss, r.loss, rtol=1e-14)
    np.testing.assert_allclose(_pml("ContrastiveLoss")(_torch(X), torch.as_tensor(y)).item(), r.loss, rtol=1e-13)


def test_pml_contrastive_is_zero_with_at_most_one_pair_of_each_kind_but_triplet_is_not():
    # One anchor at 0deg against a reference set: a positive at 50deg and a negative at 20deg. One pair
    # of each kind: PML's GenericPairLoss (ContrastiveLoss) returns 0; TripletMarginLoss is not a
    # GenericPairLoss and scores the triplet: d_ap - d_an + 0.05 = 2 sin 25 - 2 sin 10 + 0.05.
    X, y = angles_to_rows(0), np.array([0])
    ref, ref_y = angles_to_rows(50, 20), np.array([0, 1])
    kwargs = dict(ref=ref, ref_labels=ref_y)
    assert gpwref.compute("contrastive", X, y, profile="pml", **kwargs).loss == 0.0
    assert gpwref.compute("contrastive", X, y, profile="paper", **kwargs).loss > 0.0
    triplet = gpwref.compute("triplet", X, y, profile="pml", **kwargs)
    want = 2 * math.sin(math.radians(25)) - 2 * math.sin(math.radians(10)) + 0.05
    np.testing.assert_allclose(triplet.loss, want, rtol=1e-13)
    args = (_torch(X), torch.as_tensor(y), None, _torch(ref), torch.as_tensor(ref_y))
    assert _pml("ContrastiveLoss")(*args).item() == 0.0
    np.testing.assert_allclose(_pml("TripletMarginLoss")(*args).item(), want, rtol=1e-13)


def _duplicate_with_rounded_self_similarity():
    """Rows [v, v, w] (labels 0, 0, 1) for which gpwref's computed S01 is below 1 (1 - ulp)."""
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 1])
    for _ in range(1000):
        X = rng.normal(size=(3, 5))
        X[1] = X[0]
        if gpwref.compute("binomial_deviance", X, y).sim[0, 1] < 1.0:
            return X, y
    raise AssertionError("no rounding example found")


def test_duplicates_sit_exactly_at_similarity_one():
    # A duplicated positive has S = 1 - ulp here; a hinge at S = 1 (cosine pos_margin=1) or at d = 0
    # must not count it, or AvgNonZero's divisor would depend on rounding.
    X, y = _duplicate_with_rounded_self_similarity()
    r = gpwref.compute("contrastive", X, y, profile="pml", distance="cosine", pos_margin=1.0, neg_margin=0.5)
    assert r.sim[0, 1] < 1.0
    assert not r.pos_used[0, 1] and r.grad_sim[0, 1] == 0.0
    e = gpwref.compute("contrastive", X, y, profile="pml")
    assert not e.pos_used[0, 1] and e.grad_sim[0, 1] == 0.0
    d, slope = gpwref.losses.contrastive.unit_distance(r.sim)
    assert d[0, 1] == 0.0 and slope[0, 1] == 0.0


def test_cdist_above_25_rows_is_not_zero_for_duplicates_so_pml_is_not_comparable():
    # torch.cdist switches to the matmul formula above 25 rows: a duplicated pair then gets d = 0 or
    # ~1e-8 depending on rounding, and PML's AvgNonZero counts it in the latter case. gpwref keeps
    # d = 0; the PML reference refuses such batches.
    from verification.refs import contrastive as refs

    rng = np.random.default_rng(1)
    for _ in range(100):
        X = rng.normal(size=(30, 4))
        X[1] = X[0]
        U = torch.nn.functional.normalize(_torch(X), dim=1)
        if torch.cdist(U, U)[0, 1].item() > 0.0:
            break
    assert 0.0 < torch.cdist(U, U)[0, 1].item() < 1e-7
    assert torch.cdist(U[:20], U[:20])[0, 1].item() == 0.0  # the direct formula below 25 rows
    y = np.arange(30) // 2
    assert not gpwref.compute("contrastive", X, y, profile="pml").pos_used[0, 1]
    with pytest.raises(NotApplicable, match="25 rows"):
        refs.pml(_torch(X), y, None, None, None, True, distance="euclidean", pos_margin=0.0, neg_margin=1.0, reduction="avg_nonzero")


# ---------------------------------------------------------------------------------------------- triplet

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


# ---------------------------------------------------------------------------------------------- binomial


def _softplus(z):
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _sigma(z):
    return 1 / (1 + math.exp(-z))


def test_binomial_deviance_hand_derived():
    # alpha = 2, beta = 40, lam = 0.5; every anchor has one positive and two negatives, m = 4:
    #   anchor 0: log(1 + e^{2(0.5-0.5)}) = log 2;   negatives S = 0, -1:   [sp(-20) + sp(-60)] / 2
    #   anchor 1: log 2;                              negatives S = C, -1/2: [sp(40(C-0.5)) + sp(-40)] / 2
    #   anchor 2: sp(2 * 0.5) = sp(1);                negatives S = 0, C:    [sp(-20) + sp(40(C-0.5))] / 2
    #   anchor 3: sp(1);                              negatives S = -1, -1/2: [sp(-60) + sp(-40)] / 2
    # G: positive -(2 / (4 * 1)) sigma(2(0.5 - S)), negative +(40 / (4 * 2)) sigma(40(S - 0.5)).
    r = gpwref.compute("binomial_deviance", HAND_X, HAND_Y)
    sp, big = _softplus, 40 * (C - 0.5)
    per_anchor = np.array([
        math.log(2) + (sp(-20) + sp(-60)) / 2,
        math.log(2) + (sp(big) + sp(-40)) / 2,
        sp(1) + (sp(-20) + sp(big)) / 2,
        sp(1) + (sp(-60) + sp(-40)) / 2,
    ]) / 4
    np.testing.assert_allclose(r.per_anchor, per_anchor, rtol=1e-13)
    np.testing.assert_allclose(r.loss, per_anchor.sum(), rtol=1e-13)
    S = np.array([[1, 0.5, 0, -1], [0.5, 1, C, -0.5], [0, C, 1, 0], [-1, -0.5, 0, 1]])
    want = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            if HAND_Y[i] == HAND_Y[j]:
                want[i, j] = -(2 / 4) * _sigma(2 * (0.5 - S[i, j]))
            else:
                want[i, j] = (40 / 8) * _sigma(40 * (S[i, j] - 0.5))
    # rtol: the computed S differ from the exact cosines by ~1e-16, times beta = 40 in the exponent
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-12, atol=0)
    assert gpwref.get_entry("binomial_deviance").similarities == ("self",)


def test_binomial_deviance_large_scales_stay_finite():
    # alpha = beta = 200 and similarities at +-1: exponents of +-100 and -300 (softplus(100) = 100 + e^-100).
    S = np.array([[1.0, 1.0, -1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    y = np.array([0, 0, 1])
    with np.errstate(all="raise"):
        r = gpwref.from_similarity("binomial_deviance", S, y, alpha=200.0, beta=200.0, lam=0.5)
    # anchor 0: P {1: S=1}: sp(-100); N {2: S=-1}: sp(-300). anchor 1: P {0: 1}: sp(-100); N {2: 1}: sp(100).
    # anchor 2: no positive; N {0: -1, 1: 1}: [sp(-300) + sp(100)] / 2.
    want = (_softplus(-100) + _softplus(-300) + _softplus(-100) + _softplus(100) + (_softplus(-300) + _softplus(100)) / 2) / 3
    np.testing.assert_allclose(r.loss, want, rtol=1e-15)
    np.testing.assert_allclose(r.grad_sim[1, 2], 200 * _sigma(100) / 3, rtol=1e-15)
    np.testing.assert_allclose(r.grad_sim[0, 2], 200 * math.exp(-300) / 3, rtol=1e-13)
    assert np.all(np.isfinite(r.grad_sim))


# ---------------------------------------------------------------------------------------------- all three

MINE = ("contrastive", "triplet", "binomial_deviance")
ROWS = [
    pytest.param(entry.name, profile, dict(variant), id=f"{entry.name}-{profile}-{'-'.join(f'{k}={v}' for k, v in variant.items()) or 'default'}")
    for entry in gpwref.CATALOG
    if entry.name in MINE
    for profile in entry.defaults
    for variant in entry.variants
]


@pytest.mark.parametrize("loss,profile,variant", ROWS)
def test_degenerate_batches_give_zero_or_finite(loss, profile, variant):
    # m = 1: no pair at all -> loss 0, G 0.
    one = gpwref.compute(loss, angles_to_rows(10), np.array([3]), profile=profile, **variant)
    assert one.loss == 0.0 and not one.grad_sim.any() and not one.per_anchor.any()
    # one class (no negative) and all singletons (no positive): finite; no triplet exists.
    X = angles_to_rows(0, 50, 130, 200)
    for y in (np.zeros(4, dtype=int), np.arange(4)):
        r = gpwref.compute(loss, X, y, profile=profile, **variant)
        assert np.isfinite(r.loss) and np.all(np.isfinite(r.grad_sim)) and np.all(np.isfinite(r.grad_emb))
        if loss == "triplet":
            assert r.loss == 0.0 and not r.grad_sim.any()
    # all rows identical (every pair tied): finite everywhere.
    tied = gpwref.compute(loss, np.ones((4, 3)), np.array([0, 0, 1, 1]), profile=profile, **variant)
    assert np.isfinite(tied.loss) and np.all(np.isfinite(tied.grad_emb))


@pytest.mark.parametrize(
    "loss,hyper,argument",
    [
        ("contrastive", {"distance": "manhattan"}, "distance"),
        ("contrastive", {"reduction": "mean"}, "reduction"),
        ("contrastive", {"neg_margin": None}, "neg_margin"),
        ("contrastive", {"neg_margin": float("nan")}, "neg_margin"),
        ("contrastive", {"pos_margin": "1"}, "pos_margin"),
        ("contrastive", {"distance": "euclidean", "neg_margin": -0.5}, "neg_margin"),
        ("contrastive", {"distance": "euclidean", "pos_margin": -0.1, "neg_margin": 1.0}, "pos_margin"),
        ("contrastive", {"margin": 0.5}, "margin"),
        ("triplet", {"mining": "hard"}, "mining"),
        ("triplet", {"margin": -0.1}, "margin"),
        ("triplet", {"margin": float("inf")}, "margin"),
        ("triplet", {"miner_margin": -0.2}, "miner_margin"),
        ("triplet", {"semi_hard_bound": "open"}, "semi_hard_bound"),
        ("triplet", {"reduction": "sum"}, "reduction"),
        ("triplet", {"distance": "squared"}, "distance"),
        ("binomial_deviance", {"alpha": 0.0}, "alpha"),
        ("binomial_deviance", {"beta": -40.0}, "beta"),
        ("binomial_deviance", {"alpha": True}, "alpha"),
        ("binomial_deviance", {"lam": float("inf")}, "lam"),
    ],
)
def test_bad_hyper_parameter_names_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as caught:
        gpwref.compute(loss, HAND_X, HAND_Y, **hyper)
    assert caught.value.argument == argument
    assert argument in str(caught.value)


def test_binomial_deviance_has_no_pml_convention():
    with pytest.raises(gpwref.GpwrefError, match="no 'pml' convention") as caught:
        gpwref.compute("binomial_deviance", HAND_X, HAND_Y, profile="pml")
    assert caught.value.argument == "profile"


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
