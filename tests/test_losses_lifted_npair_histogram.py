"""Lifted structure, N-pair and histogram losses: batches derived by hand, bad hyper-parameters, and
one test per pytorch-metric-learning (PML) rule the oracle models.

Every expected number below comes from the arithmetic written in the test (cosines of chosen angles
plugged into the closed forms), never from gpwref's code.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import gpwref


def angles_to_rows(*degrees):
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def raises(argument: str, pattern: str = ""):
    return pytest.raises(gpwref.GpwrefError, match=rf"^{argument}: .*{pattern}")


# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# N-pair

# Unit vectors at 0, 53.13, 90, 126.87 and 180 degrees: (1,0), (.6,.8), (0,1), (-.6,.8), (-1,0);
# labels [0, 0, 1, 1, 2] (class 2 is a singleton). Chosen pairs (PML: first ordered positive pair per
# label): (0, 1) and (2, 3). Logits Z = [[S01, S03], [S21, S23]] = [[.6, -.6], [.8, .8]].
NPAIR_X = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8], [-1.0, 0.0]])
NPAIR_Y = np.array([0, 0, 1, 1, 2])


def test_npair_hand_derived():
    # CE_0 = log(e^.6 + e^-.6) - .6 = log(1 + e^-1.2); CE_1 = log(2 e^.8) - .8 = log 2; L = mean.
    # pi_0 = (1, e^-1.2) / (1 + e^-1.2), pi_1 = (1/2, 1/2); G_{a_i p_j} = (pi_ij - [i = j]) / 2.
    ce0, ce1 = math.log1p(math.exp(-1.2)), math.log(2.0)
    pi01 = math.exp(-1.2) / (1 + math.exp(-1.2))
    want_G = np.zeros((5, 5))
    want_G[0, 1], want_G[0, 3] = -pi01 / 2, pi01 / 2  # -(1 - pi00)/2 = -pi01/2
    want_G[2, 1], want_G[2, 3] = 0.25, -0.25
    for profile in ("paper", "pml"):
        result = gpwref.compute("npair", NPAIR_X, NPAIR_Y, profile=profile)
        np.testing.assert_allclose(result.loss, (ce0 + ce1) / 2, rtol=1e-14)
        np.testing.assert_allclose(result.grad_sim, want_G, rtol=1e-13, atol=0)
        np.testing.assert_allclose(result.per_anchor, [ce0 / 2, 0, ce1 / 2, 0, 0], rtol=1e-14)
        pos = np.zeros((5, 5), bool)
        pos[0, 1] = pos[2, 3] = True
        neg = np.zeros((5, 5), bool)
        neg[0, 3] = neg[2, 1] = True
        np.testing.assert_array_equal(result.pos_used, pos)
        np.testing.assert_array_equal(result.neg_used, neg)


def test_npair_pair_choice_and_value_match_pml():
    # Labels interleaved: class 0 = {0, 2, 4}, class 1 = {1, 3}. PML's np.unique(labels[a], return_index)
    # on the row-major list of ordered positive pairs keeps (0, 2) and (1, 3).
    from pytorch_metric_learning.losses import NPairsLoss

    rng = np.random.default_rng(11)
    X = rng.normal(size=(5, 3))
    y = np.array([0, 1, 0, 1, 0])
    result = gpwref.compute("npair", X, y, profile="pml")
    assert set(zip(*np.nonzero(result.pos_used))) == {(0, 2), (1, 3)}
    Xt = torch.tensor(X, requires_grad=True)
    value = NPairsLoss()(Xt, torch.tensor(y))
    value.backward()
    np.testing.assert_allclose(result.loss, value.item(), rtol=1e-13)
    np.testing.assert_allclose(result.grad_emb, Xt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_npair_fewer_than_two_pairs_is_zero():
    # One chosen pair has no negative: PML's cross-entropy over a 1 x 1 matrix is exactly 0.
    from pytorch_metric_learning.losses import NPairsLoss

    X = angles_to_rows(0, 40, 100)
    y = np.array([0, 0, 1])
    result = gpwref.compute("npair", X, y, profile="pml")
    assert result.loss == 0.0 and not result.grad_sim.any() and not result.pos_used.any()
    assert NPairsLoss()(torch.tensor(X), torch.tensor(y)).item() == 0.0


def test_npair_bad_hyper_parameters_and_reference_set():
    with raises("temperature", "not a hyper-parameter"):
        gpwref.compute("npair", NPAIR_X, NPAIR_Y, temperature=0.1)
    with raises("ref", "batch only"):
        gpwref.compute("npair", NPAIR_X, NPAIR_Y, ref=NPAIR_X, ref_labels=NPAIR_Y)
    with raises("profile", "no 'official' convention"):
        gpwref.compute("npair", NPAIR_X, NPAIR_Y, profile="official")


# ------------------------------------------------------------------------------------------------
# Histogram

# Unit vectors at 0, 40, 110 and 165 degrees, labels [0, 0, 1, 1]; n_bins = 4: nodes -1, -.5, 0, .5, 1
# (Delta = 1/2). Cosines: positives s01 = cos 40, s23 = cos 55; negatives s02 = cos 110,
# s03 = cos 165, s12 = cos 70, s13 = cos 125. None lies on a node.
HIST_X = angles_to_rows(0, 40, 110, 165)
HIST_Y = np.array([0, 0, 1, 1])


def cos_deg(a):
    return math.cos(math.radians(a))


def test_histogram_hand_derived():
    # A pair s in [t_r, t_{r+1}) gives (t_{r+1} - s)/Delta to node r and (s - t_r)/Delta to node r+1.
    # Positives (|P| = 2), both in bin 3 = [.5, 1): node 3 gets 2(1 - s), node 4 gets 2(s - .5):
    p01, p23 = cos_deg(40), cos_deg(55)  # .766, .574
    h_pos = [0, 0, 0, (2 * (1 - p01) + 2 * (1 - p23)) / 2, (2 * (p01 - 0.5) + 2 * (p23 - 0.5)) / 2]
    phi = np.cumsum(h_pos)  # [0, 0, 0, h+_3, 1]
    # Negatives (|N| = 4): s02 = -.342 (bin 1), s03 = -.966 (bin 0), s13 = -.574 (bin 0) put weight on
    # nodes 0..2 only, where Phi+ = 0; s12 = cos 70 = .342 in bin 2 = [0, .5): node 2 gets 2(.5 - s),
    # node 3 gets 2 s. So L = h-_3 Phi+_3 = (2 s12 / 4) h+_3.
    s12 = cos_deg(70)
    want_loss = (2 * s12 / 4) * phi[3]
    # dL/ds, negative in bin r: h+_{r+1} / (Delta |N|); only (1,2) has h+_{r+1} != 0: h+_3 / 2.
    # Positive in bin r: -h-_r / (Delta |P|) = -h-_3 = -(2 s12 / 4). Each unordered pair's dL/ds is split
    # half onto G_ij and half onto G_ji.
    want_G = np.zeros((4, 4))
    want_G[1, 2] = want_G[2, 1] = (h_pos[3] / 2) / 2
    for i, j in ((0, 1), (2, 3)):
        want_G[i, j] = want_G[j, i] = -(2 * s12 / 4) / 2
    for profile in ("paper", "pml"):
        result = gpwref.compute("histogram", HIST_X, HIST_Y, profile=profile, n_bins=4)
        np.testing.assert_allclose(result.loss, want_loss, rtol=1e-13)
        np.testing.assert_allclose(result.grad_sim, want_G, rtol=1e-12, atol=1e-16)
        # per_anchor: the only non-zero negative term, (1,2)'s, split half to each end
        np.testing.assert_allclose(result.per_anchor, [0, want_loss / 2, want_loss / 2, 0], rtol=1e-13, atol=1e-17)
        assert result.pos_used.sum() == 4 and result.neg_used.sum() == 8


def _hist_S(pos_s, neg_s):
    """S for labels [0, 0, 1, 1] with both positive pairs at pos_s and all four negative pairs at neg_s."""
    S = np.full((4, 4), neg_s)
    S[0, 1] = S[1, 0] = S[2, 3] = S[3, 2] = pos_s
    np.fill_diagonal(S, 1.0)
    return S


def test_histogram_similarity_on_a_node_takes_the_bin_starting_there():
    # n_bins = 4. Both positives exactly on the node s = 0.5: all their weight goes to node 3, and their
    # slope is that of bin 3 = [.5, 1). The negatives at 0.375 (bin 2 = [0, .5)) put 2(.5 - .375) = 1/4 on
    # node 2 and 3/4 on node 3, so the two candidate bins give different slopes: bin 3: -h-_3/(Delta|P|)
    # = -3/4, bin 2: -h-_2/(Delta|P|) = -1/4.
    S = _hist_S(0.5, 0.375)
    result = gpwref.from_similarity("histogram", S, HIST_Y, n_bins=4)
    # h+ = node 3: 1. Phi+ = [0, 0, 0, 1, 1]. L = h-_3 * 1 + h-_4 * 1 = 3/4.
    np.testing.assert_allclose(result.loss, 0.75, rtol=1e-15)
    # positive slope, bin 3: -h-_3 / (1/2 * 2) = -3/4 (bin 2 would give -h-_2 = -1/4); half on each of G_ij, G_ji
    np.testing.assert_allclose(result.grad_sim[0, 1], -0.375, rtol=1e-15)
    # negative slope, bin 2: h+_3 / (1/2 * 4) = 1/2, half each way
    np.testing.assert_allclose(result.grad_sim[0, 2], 0.25, rtol=1e-15)


def test_histogram_similarity_one_lies_in_the_last_bin_where_pml_fails():
    # Duplicated rows: s = 1 exactly. The oracle puts it in the last bin (all weight on node R); PML's
    # node index reaches R + 1 and its scatter_add_ fails (histogram_loss.py:70-74).
    from pytorch_metric_learning.losses import HistogramLoss

    X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    y = np.array([0, 0, 1, 1])
    result = gpwref.compute("histogram", X, y, profile="pml", n_bins=4)
    # positives: s01 = 1 (node 4), s23 = .8 (bin 3: node 3 .4, node 4 .6) -> h+ = [0,0,0,.2,.8]
    # negatives: s02 = 0 (node 2), s03 = .6 (node 3 .8, node 4 .2), s12 = 0, s13 = .6 -> h- = [0,0,.5,.4,.1]
    # L = .4 * .2 + .1 * 1 = .18
    np.testing.assert_allclose(result.loss, 0.18, rtol=1e-14)  # Delta = 1/2: float32 node offsets are exact
    with pytest.raises(RuntimeError, match="out of bounds"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PML indexes with a list (a torch deprecation warning)
        HistogramLoss(n_bins=4)(torch.tensor(X), torch.tensor(y))


def test_histogram_pml_pairs_come_from_triplets():
    # Labels [0, 0, 7, 8]: 7 and 8 are singletons. PML builds all triplets (anchor with a positive and a
    # negative) and de-duplicates their pairs: the negative pair {2, 3} between two singletons is in no
    # triplet, so it is not histogrammed; the paper's rule ("all") keeps it.
    # Angles 0, 50, 30, 155: the positive s01 = cos 50 = .64; negatives s02 = .87 and s12 = .94 lie above
    # it, s03 = -.91, s13 = -.26 and the singleton pair s23 = -.57 below. So PML's L ~ 2/4 (two of its four
    # negatives beat the positive) while the paper rule's L ~ 2/5.
    from pytorch_metric_learning.losses import HistogramLoss

    X = angles_to_rows(0, 50, 30, 155)
    y = np.array([0, 0, 7, 8])
    pml = gpwref.compute("histogram", X, y, profile="pml")
    paper = gpwref.compute("histogram", X, y, profile="paper")
    assert not pml.neg_used[2, 3] and paper.neg_used[2, 3]
    assert pml.neg_used.sum() == 8 and paper.neg_used.sum() == 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PML indexes with a list (a torch deprecation warning)
        want = HistogramLoss()(torch.tensor(X), torch.tensor(y)).item()
    np.testing.assert_allclose(pml.loss, want, rtol=1e-12)
    # Every negative is far from the positive's bins, so Phi+ is 0 or 1 at its nodes. PML's float32 node
    # offsets make a pair's weights sum to 1 only to ~2e-6 (see test_histogram_pml_float32_nodes).
    np.testing.assert_allclose(pml.loss, 2 / 4, rtol=1e-5)
    np.testing.assert_allclose(paper.loss, 2 / 5, rtol=1e-14)


def test_histogram_pml_float32_nodes():
    # PML computes the node index in float32 and the node offsets r * Delta as float32 (a long tensor
    # times a Python float), so its pairs' weights do not sum to exactly 1 for Delta = 0.02: its value
    # differs from the float64 rule by ~1e-7 relative, and the oracle's "float32" rule reproduces it.
    from pytorch_metric_learning.losses import HistogramLoss

    rng = np.random.default_rng(5)
    X = rng.normal(size=(12, 3))
    y = np.repeat(np.arange(4), 3)
    X[:, 0] += y
    pml = gpwref.compute("histogram", X, y, profile="pml")
    exact = gpwref.compute("histogram", X, y, profile="pml", node_precision="float64")
    Xt = torch.tensor(X, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = HistogramLoss()(Xt, torch.tensor(y))
    value.backward()
    np.testing.assert_allclose(pml.loss, value.item(), rtol=1e-13)
    np.testing.assert_allclose(pml.grad_emb, Xt.grad.numpy(), rtol=1e-11, atol=1e-15)
    gap = abs(exact.loss - value.item()) / value.item()
    assert 1e-9 < gap < 1e-5


def test_histogram_no_triplet_or_no_pair_of_one_kind_is_zero():
    # One class: no negative pair, no triplet (PML returns zero); all singletons: no positive pair.
    for y in (np.array([4, 4, 4]), np.array([1, 2, 3])):
        for profile in ("paper", "pml"):
            result = gpwref.compute("histogram", angles_to_rows(0, 30, 100), y, profile=profile)
            assert result.loss == 0.0 and not result.grad_sim.any()


def test_histogram_reference_set_uses_the_ordered_pairs_as_given():
    # Batch rows 0, 1 (labels 0, 1) against a reference set of three rows (labels 0, 1, 1): pairs are the
    # m x n entries: positives (0,0), (1,1), (1,2); negatives (0,1), (0,2), (1,0). No symmetrisation.
    X = angles_to_rows(0, 90)
    R = angles_to_rows(20, 70, 200)
    result = gpwref.compute("histogram", X, np.array([0, 1]), ref=R, ref_labels=np.array([0, 1, 1]), n_bins=4)
    np.testing.assert_array_equal(result.pos_used, [[True, False, False], [False, True, True]])
    np.testing.assert_array_equal(result.neg_used, [[False, True, True], [True, False, False]])
    assert result.grad_ref is not None


def test_histogram_bad_input():
    with raises("n_bins", "integer >= 1"):
        gpwref.compute("histogram", HIST_X, HIST_Y, n_bins=0)
    with raises("n_bins", "integer >= 1"):
        gpwref.compute("histogram", HIST_X, HIST_Y, n_bins=2.5)
    with raises("pair_rule", "one of"):
        gpwref.compute("histogram", HIST_X, HIST_Y, pair_rule="pairs")
    with raises("node_precision", "one of"):
        gpwref.compute("histogram", HIST_X, HIST_Y, node_precision="float16")
    # similarities that are not cosines (rows of norm 2, used as given)
    with raises("S", r"\[-1, 1\]"):
        gpwref.compute("histogram", 2 * HIST_X, HIST_Y, normalize=False)
