"""contrastive: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref_verification.common import NotApplicable

from ._helpers import C, D12, HAND_X, HAND_Y, R2, _pml, _torch, angles_to_rows, profile_variant_rows, degenerate_batches_give_zero_or_finite


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
    from gpwref_verification.refs import contrastive as refs

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


@pytest.mark.parametrize("loss,profile,variant", profile_variant_rows("contrastive"))
def test_degenerate_batches_give_zero_or_finite(loss, profile, variant):
    degenerate_batches_give_zero_or_finite(loss, profile, variant)

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
    ],
)
def test_bad_hyper_parameter_names_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as caught:
        gpwref.compute(loss, HAND_X, HAND_Y, **hyper)
    assert caught.value.argument == argument
    assert argument in str(caught.value)
