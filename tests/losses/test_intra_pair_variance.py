"""intra_pair_variance: hand-derived batches, PML's pair-count rule and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest

import gpwref

from ._helpers import HAND_S, HAND_S_Y, _pml, _torch, angles_to_rows, raises


def test_intra_pair_variance_hand_derived():
    # HAND_S, labels [0, 0, 1], eps = 0.01 for both kinds.
    #   positives (0,1), (1,0): S = 0.8 both, mean 0.8, h = [0.99 * 0.8 - 0.8]_+ = 0 -> no positive term, G = 0.
    #   negatives (0,2), (2,0) at 0.1 and (1,2), (2,1) at -0.5: mean -0.2, threshold 1.01 * -0.2 = -0.202,
    #   h = 0.302 at the 0.1 pairs, 0 at the -0.5 pairs; H_N = 0.604, |N| = 4.
    #   L = (0.302^2 + 0.302^2) / 4 = 0.045602
    #   G = (2/4) (h - 1.01 * 0.604 / 4): 0.5 * (0.302 - 0.15251) = 0.074745 at 0.1, -0.076255 at -0.5
    #   (an easy negative is pulled up through the mean: the GPW sign rule does not hold).
    r = gpwref.from_similarity("intra_pair_variance", HAND_S, HAND_S_Y, profile="pml")
    assert r.loss == pytest.approx(0.045602, rel=1e-12)
    want = np.zeros((3, 3))
    want[[0, 2], [2, 0]] = 0.074745
    want[[1, 2], [2, 1]] = -0.076255
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-12, atol=1e-16)
    np.testing.assert_array_equal(r.pos_used, np.zeros((3, 3), bool))
    np.testing.assert_array_equal(r.neg_used, HAND_S_Y[:, None] != HAND_S_Y[None, :])


def test_intra_pair_variance_positive_spread():
    # Labels [0, 0, 0] (no negatives), S01 = S10 = 0.9, S02 = S20 = 0.5, S12 = S21 = 0.4, pos_eps = 0.
    #   mean of the six positives 0.6; h = [0.6 - s]_+ = 0.1 at 0.5, 0.2 at 0.4, 0 at 0.9; H = 0.6.
    #   L = (2 * 0.01 + 2 * 0.04) / 6 = 1/60
    #   G = (2/6) (H/6 - h) = (1/3)(0.1 - h): 0 at 0.5, -1/30 at 0.4, +1/30 at 0.9 (pushed down to the mean).
    S = np.array([[1.0, 0.9, 0.5], [0.9, 1.0, 0.4], [0.5, 0.4, 1.0]])
    r = gpwref.from_similarity("intra_pair_variance", S, np.array([0, 0, 0]), profile="pml", pos_eps=0.0)
    assert r.loss == pytest.approx(1 / 60, rel=1e-12)
    want = np.array([[0.0, 1 / 30, 0.0], [1 / 30, 0.0, -1 / 30], [0.0, -1 / 30, 0.0]])
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-12, atol=1e-15)


def test_intra_pair_variance_pml_pair_count_rule():
    # One anchor at 0 deg; reference rows at 120 deg (label 0, S = -0.5) and at acos(0.3) (label 1).
    # Without PML's rule the lone positive would give [(0.99 - 1)(-0.5)]_+^2 = 0.005^2 = 2.5e-5; with one
    # positive and one negative pair GenericPairLoss returns 0, and so does gpwref under pml.
    X = angles_to_rows(0.0)
    R = angles_to_rows(120.0, np.degrees(np.arccos(0.3)))
    r = gpwref.compute("intra_pair_variance", X, [0], ref=R, ref_labels=[0, 1], profile="pml")
    assert r.loss == 0.0 and not r.grad_sim.any()
    import torch

    value = _pml("IntraPairVarianceLoss")(_torch(X), torch.tensor([0]), None, _torch(R), torch.tensor([0, 1]))
    assert float(value) == 0.0


@pytest.mark.parametrize("name, value", [("pos_eps", 1.0), ("pos_eps", -0.1), ("neg_eps", float("nan")), ("neg_eps", True)])
def test_intra_pair_variance_bad_hyper(name, value):
    with raises(name, "in \\[0, 1\\)"):
        gpwref.from_similarity("intra_pair_variance", HAND_S, HAND_S_Y, profile="pml", **{name: value})


def test_intra_pair_variance_has_no_paper_profile():
    with raises("profile", "pml"):
        gpwref.from_similarity("intra_pair_variance", HAND_S, HAND_S_Y, profile="paper")
