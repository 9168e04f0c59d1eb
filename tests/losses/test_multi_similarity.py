"""MS loss: a batch derived by hand, and one test per profile rule (each rule shown to matter)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given

import gpwref
from gpwref.testing import batches

from ._helpers import C, HAND_X, HAND_Y, angles_to_rows

# Four unit vectors at 0, 60, 90 and 180 degrees, labels [0, 0, 1, 1]. Cosines (row i, column j):
#   S01 = 1/2, S02 = 0, S03 = -1, S12 = sqrt(3)/2, S13 = -1/2, S23 = 0.
# Paper mining, eps = 0.1:
#   anchor 0: P = {1: 0.5}, N = {2: 0, 3: -1}. Keep negatives with S > 0.5 - 0.1 = 0.4: none.
#             Keep positives with S < max_neg + 0.1 = 0.1: none. Contributes 0.
#   anchor 1: P = {0: 0.5}, N = {2: 0.866, 3: -0.5}. Negatives > 0.4: {2}. Positives < 0.966: {0}.
#   anchor 2: P = {3: 0}, N = {0: 0, 1: 0.866}. Negatives > -0.1: {0, 1}. Positives < 0.966: {3}.
#   anchor 3: P = {2: 0}, N = {0: -1, 1: -0.5}. Negatives > -0.1: none. Positives < -0.4: none.
# (HAND_X = angles_to_rows(0, 60, 90, 180), HAND_Y = [0, 0, 1, 1], C = sqrt(3)/2: from _helpers.)


def hand_value_and_grad(alpha, beta, lam):
    m = 4
    t1 = math.log(1 + math.exp(-alpha * (0.5 - lam))) / alpha + math.log(1 + math.exp(beta * (C - lam))) / beta
    t2 = math.log(1 + math.exp(-alpha * (0.0 - lam))) / alpha + math.log(1 + math.exp(beta * (0.0 - lam)) + math.exp(beta * (C - lam))) / beta
    G = np.zeros((4, 4))
    # paper's w+ = 1 / (exp(alpha (S_ij - lam)) + sum_{k in P'} exp(-alpha (S_ik - S_ij))), one positive each
    G[1, 0] = -1 / (math.exp(alpha * (0.5 - lam)) + 1) / m
    G[2, 3] = -1 / (math.exp(alpha * (0.0 - lam)) + 1) / m
    # anchor 1, one kept negative: w- = 1 / (exp(beta (lam - S)) + 1)
    G[1, 2] = 1 / (math.exp(beta * (lam - C)) + 1) / m
    # anchor 2, kept negatives {0: S=0, 1: S=C}
    G[2, 0] = 1 / (math.exp(beta * lam) + 1 + math.exp(beta * C)) / m
    G[2, 1] = 1 / (math.exp(beta * (lam - C)) + math.exp(-beta * C) + 1) / m
    return (t1 + t2) / m, G


@pytest.mark.parametrize("profile,beta", [("paper", 50.0), ("official", 40.0)])
def test_hand_derived_batch(profile, beta):
    result = gpwref.compute("multi_similarity", HAND_X, HAND_Y, profile=profile)
    want_value, want_G = hand_value_and_grad(2.0, beta, 0.5)
    assert result.hyper["beta"] == beta
    np.testing.assert_allclose(result.loss, want_value, rtol=1e-13)
    np.testing.assert_allclose(result.grad_sim, want_G, rtol=1e-12, atol=0)
    assert result.per_anchor[0] == 0 and result.per_anchor[3] == 0
    np.testing.assert_array_equal(result.pos_used, want_G < 0)
    np.testing.assert_array_equal(result.neg_used, want_G > 0)


def test_hand_derived_batch_without_mining():
    # eps=None keeps every pair; anchor 0: P={1: 0.5}, N={2: 0, 3: -1} gives
    # (1/2) log(1 + e^0) + (1/50) log(1 + e^{-25} + e^{-75}).
    result = gpwref.compute("multi_similarity", HAND_X, HAND_Y, eps=None)
    want = math.log(2) / 2 + math.log(1 + math.exp(-25) + math.exp(-75)) / 50
    np.testing.assert_allclose(result.per_anchor[0] * 4, want, rtol=1e-14)


def test_weights_equal_the_papers_closed_form_and_gradient_through_normalisation():
    # dL/dX for unit rows equals (G + G^T) X projected onto each row's tangent space.
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 5))
    y = np.repeat(np.arange(5), 2)
    r = gpwref.compute("multi_similarity", X, y)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    raw = (r.grad_sim + r.grad_sim.T) @ U
    tangent = raw - U * np.sum(raw * U, axis=1, keepdims=True)
    np.testing.assert_allclose(r.grad_emb, tangent / np.linalg.norm(X, axis=1, keepdims=True), rtol=1e-12, atol=1e-16)


@given(batch=batches(m=(2, 10), on_boundary=False, ties=False, duplicates=False))
def test_ms_mining_keeps_a_positive_iff_it_keeps_a_negative(batch):
    # With min_pos = S_ip*, a negative n is kept iff S_n > S_ip* - eps iff p* < S_n + eps <= max_neg + eps,
    # so the empty-mined-set rule (official: skip the anchor) never changes the value in exact arithmetic.
    r = gpwref.compute("multi_similarity", batch.embeddings, batch.labels, **batch.compute_kwargs())
    np.testing.assert_array_equal(r.pos_used.any(axis=1), r.neg_used.any(axis=1))


def test_official_self_rule_drops_duplicated_positives_paper_keeps_them():
    # Rows 0 and 1 are the same vector with the same label: S01 = 1 >= 1 - 1e-5.
    X = angles_to_rows(10, 10, 40, 100, 120)
    y = np.array([0, 0, 0, 1, 1])
    paper = gpwref.compute("multi_similarity", X, y, profile="paper", eps=None)
    official = gpwref.compute("multi_similarity", X, y, profile="official", eps=None)
    assert paper.pos_used[0, 1] and paper.pos_used[1, 0]
    assert not official.pos_used[0, 1] and not official.pos_used[1, 0]
    assert official.grad_sim[0, 1] == 0.0


def test_official_profile_raises_like_the_official_code_on_an_anchor_without_positive():
    X = angles_to_rows(0, 30, 100)
    y = np.array([0, 0, 1])  # anchor 2 is a singleton
    with pytest.raises(gpwref.GpwrefError, match="official.*positive"):
        gpwref.compute("multi_similarity", X, y, profile="official")
    assert np.isfinite(gpwref.compute("multi_similarity", X, y, profile="paper").loss)


def test_pml_zero_loss_when_at_most_one_pair_of_each_kind():
    # One anchor against a reference set of one positive and one negative: one pair of each kind.
    X = angles_to_rows(0)
    ref = angles_to_rows(20, 50)
    kwargs = dict(ref=ref, ref_labels=np.array([0, 1]))
    pml = gpwref.compute("multi_similarity", X, np.array([0]), profile="pml", **kwargs)
    paper = gpwref.compute("multi_similarity", X, np.array([0]), profile="paper", eps=None, **kwargs)
    assert pml.loss == 0.0 and not pml.pos_used.any() and not pml.neg_used.any()
    assert paper.loss > 0.0


def test_mining_compare_rule_matters_exactly_on_the_boundary():
    # Anchor 0: one positive at 0.85 (so min_pos = 0.85) and one negative at fl(0.85 - 0.3) = 0.55,
    # eps = 0.3: exactly on the boundary. The paper's form tests 0.55 > fl(0.85 - 0.3) = 0.55: False.
    # The official/PML form tests fl(0.55 + 0.3) = 0.8500000000000001 > 0.85: True. So the profiles'
    # mining_compare rule decides whether this pair is mined.
    # (Samples 1-3 give anchor 1 two more mined pairs, so PML's at-most-one-pair zero rule stays out.)
    s_neg = 0.85 - 0.3
    S = np.array([[1.0, 0.85, s_neg, -0.5], [0.85, 1.0, 0.7, -0.5], [s_neg, 0.7, 1.0, 0.9], [-0.5, -0.5, 0.9, 1.0]])
    y = np.array([0, 0, 1, 1])
    assert not (s_neg > 0.85 - 0.3) and (s_neg + 0.3 > 0.85)
    paper = gpwref.multi_similarity(S, y, profile="paper", eps=0.3)
    pml = gpwref.multi_similarity(S, y, profile="pml", eps=0.3)
    assert not paper.neg_used[0, 2]
    assert pml.neg_used[0, 2]


def test_stable_for_large_scales_and_extreme_similarities():
    S = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    y = np.array([0, 0, 1])
    r = gpwref.multi_similarity(S, y, alpha=200.0, beta=200.0, eps=None)
    assert np.isfinite(r.loss) and np.all(np.isfinite(r.grad_sim))
    # anchor 0: positive at -1 gives (1/200) log(1 + e^{300}) = 1.5 + O(e^-300)
    assert r.per_anchor[0] * 3 == pytest.approx(1.5 + math.log1p(math.exp(-300)) / 200 + math.log1p(math.exp(100)) / 200, rel=1e-14)
