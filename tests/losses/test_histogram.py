"""histogram: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import angles_to_rows, raises


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
