"""lifted_structure: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

import gpwref

from ._helpers import angles_to_rows, raises


# Lifted structure

# Three unit vectors at 0, 90 and 180 degrees, labels [0, 0, 1]: exact cosines
#   S01 = 0, S02 = -1, S12 = 0; unit-sphere distances D = sqrt(2 - 2S): D01 = D12 = sqrt 2, D02 = 2.
LIFTED_X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
LIFTED_Y = np.array([0, 0, 1])
R2 = math.sqrt(2.0)


def test_lifted_song_hand_derived():
    # Song, margin 1 (neg_margin), pos_margin 0. Ordered positive pairs (0,1), (1,0): Q = 2.
    # N_0 = N_1 = {2}. E_01 = E_10 = e^{1 - D02} + e^{1 - D12} = e^{-1} + e^{1 - sqrt2}.
    E = math.exp(-1.0) + math.exp(1.0 - R2)
    J = math.log(E) + R2  # J_01 = J_10 = log E + D01 - 0 = 1.4426.. > 0
    want_loss = (J**2 / 2 + J**2 / 2) / 2
    # dL/dJ_ap = J / Q = J/2 for both ordered pairs; dD/dS = -1/D.
    #   G_01 = G_10 = (J/2) * (-1/D01).
    #   Row 0's negative (0,2) sits in E_01 (0 as anchor) and E_10 (0 as the positive):
    #     G_02 = (J/2 + J/2) * (-e^{1 - D02}/E) * (-1/D02) = J e^{-1} / (2 E).
    #   Row 1's negative (1,2) likewise: G_12 = J e^{1 - sqrt2} / (E sqrt2). Row 2 is in no positive pair.
    want_G = np.zeros((3, 3))
    want_G[0, 1] = want_G[1, 0] = -(J / 2) / R2
    want_G[0, 2] = J * math.exp(-1.0) / (2 * E)
    want_G[1, 2] = J * math.exp(1.0 - R2) / (E * R2)
    for profile in ("paper", "pml"):
        result = gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, profile=profile, form="song")
        np.testing.assert_allclose(result.loss, want_loss, rtol=1e-13)
        np.testing.assert_allclose(result.grad_sim, want_G, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(result.per_anchor, [J**2 / 4, J**2 / 4, 0.0], rtol=1e-13)
        np.testing.assert_array_equal(result.pos_used, want_G < 0)
        np.testing.assert_array_equal(result.neg_used, want_G > 0)


def test_lifted_generalized_paper_hand_derived():
    # MS paper form, lam = 1: A_i = log sum_{P_i} e^{1 - S} + log sum_{N_i} e^{S}, L = (1/3) sum [A_i]_+.
    #   anchor 0: (1 - S01) + S02 = 1 - 1 = 0: the hinge at exactly 0 has weight 0 (torch's relu).
    #   anchor 1: (1 - S10) + S12 = 1 > 0: G_10 = -(1/3) * 1 (softmax over one positive), G_12 = +1/3.
    #   anchor 2: no positive: log of an empty sum is -inf under the paper profile, contributes 0.
    S = LIFTED_X @ LIFTED_X.T
    result = gpwref.from_similarity("lifted_structure", S, LIFTED_Y, form="generalized")
    want_G = np.zeros((3, 3))
    want_G[1, 0], want_G[1, 2] = -1 / 3, 1 / 3
    np.testing.assert_allclose(result.loss, 1 / 3, rtol=1e-15)
    np.testing.assert_allclose(result.grad_sim, want_G, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(result.per_anchor, [0.0, 1 / 3, 0.0])


def test_lifted_generalized_pml_anchor_without_positive_still_counts():
    # PML's masked logsumexp returns 0 for an empty set (profile rule empty_lse="zero"), so anchor 2
    # (no positive) contributes [0 + log(e^{S20} + e^{S21})]_+ = log(e^{-1} + 1) with cosine margins 1 / 0;
    # its weights are the softmax over {0: S=-1, 1: S=0}, divided by m = 3.
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.losses import GeneralizedLiftedStructureLoss

    hyper = dict(form="generalized", distance="cosine", pos_margin=1.0, neg_margin=0.0)
    result = gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, profile="pml", **hyper)
    anchor2 = math.log(math.exp(-1.0) + 1.0)
    np.testing.assert_allclose(result.loss, (1.0 + anchor2) / 3, rtol=1e-14)
    np.testing.assert_allclose(result.grad_sim[2], [math.exp(-1) / (1 + math.exp(-1)) / 3, 1 / (1 + math.exp(-1)) / 3, 0.0], rtol=1e-13)
    paper_rule = gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, profile="paper", **hyper)
    assert paper_rule.per_anchor[2] == 0.0 and np.all(paper_rule.grad_sim[2] == 0.0)
    X = torch.tensor(LIFTED_X)
    pml_value = GeneralizedLiftedStructureLoss(neg_margin=0.0, pos_margin=1.0, distance=CosineSimilarity())(X, torch.tensor(LIFTED_Y))
    np.testing.assert_allclose(result.loss, pml_value.item(), rtol=1e-14)


def test_lifted_song_equals_pml_on_ordered_pairs_with_both_negative_sets():
    # PML's LiftedStructureLoss: every ordered positive pair (a, p) takes the negatives of a AND of p
    # (lifted_structure_loss.py:23-28), relu(.)^2 / 2, mean over ordered positive pairs.
    from pytorch_metric_learning.losses import LiftedStructureLoss

    rng = np.random.default_rng(7)
    X = rng.normal(size=(9, 4))
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    X[:, 0] += 0.8 * y  # classes apart but overlapping: some terms active, some not
    result = gpwref.compute("lifted_structure", X, y, profile="pml")
    Xt = torch.tensor(X, requires_grad=True)
    value = LiftedStructureLoss(neg_margin=1, pos_margin=0)(Xt, torch.tensor(y))
    value.backward()
    np.testing.assert_allclose(result.loss, value.item(), rtol=1e-12)
    np.testing.assert_allclose(result.grad_emb, Xt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_lifted_duplicate_pair_has_distance_zero_and_no_weight():
    # Two copies of one unit vector: S01 = 1 up to round-off; the rule reads 2 - 2S <= 1e-12 as D = 0
    # with zero slope, as PML's cdist (exactly 0 for equal rows, zero gradient there).
    X = np.array([[0.6, 0.8], [0.6, 0.8], [0.8, -0.6]])
    y = np.array([0, 0, 1])
    S = X @ X.T
    for s01 in (1.0, 1.0 - 2**-53, 1.0 + 2**-52):
        S_dup = S.copy()
        S_dup[0, 1] = S_dup[1, 0] = s01
        result = gpwref.from_similarity("lifted_structure", S_dup, y, form="song")
        # J_01 = log(e^{1 - D02} + e^{1 - D12}) + 0 with D02 = D12 = sqrt(2 - 2 * 0) = sqrt 2.
        J = math.log(2 * math.exp(1 - R2))
        np.testing.assert_allclose(result.loss, J**2 / 2, rtol=1e-14)
        assert result.grad_sim[0, 1] == 0.0 and result.grad_sim[1, 0] == 0.0
        assert not result.pos_used.any()
        assert np.all(np.isfinite(result.grad_sim))


def test_lifted_no_pair_gives_zero():
    # m = 1 (PML: every pair list has length <= 1, generic_pair_loss.py:18-19) and one class without
    # negatives (no lifted term for song) are both exactly 0, with zero weights.
    for X, y in ((np.array([[1.0, 0.0]]), np.array([3])), (angles_to_rows(0, 30, 70), np.array([1, 1, 1]))):
        for profile in ("paper", "pml"):
            result = gpwref.compute("lifted_structure", X, y, profile=profile, form="song")
            assert result.loss == 0.0 and not result.grad_sim.any()


def test_lifted_bad_hyper_parameters_and_reference_set():
    with raises("form", "one of"):
        gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, form="hermans")
    with raises("distance", "euclidean"):
        gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, distance="manhattan")
    with raises("pos_margin", "finite number"):
        gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, pos_margin=float("nan"))
    with raises("neg_margin", "mapping"):
        gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, neg_margin={"song": 1.0})
    with raises("ref", "batch only"):
        gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, ref=LIFTED_X, ref_labels=LIFTED_Y)
    # a plain value applies to whichever form is chosen
    result = gpwref.compute("lifted_structure", LIFTED_X, LIFTED_Y, form="generalized", distance="euclidean", pos_margin=0.0, neg_margin=1.0)
    assert result.hyper["distance"] == "euclidean"
