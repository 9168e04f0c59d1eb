"""npair: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

import gpwref

from ._helpers import angles_to_rows, raises


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
