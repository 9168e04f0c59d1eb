"""pairwise_hinge: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import Y_RANK


# Pairwise hinge on dyadic similarities (exact in floating point): anchor 0's triple sits exactly
# on the hinge, anchor 1's violates it by 1/8.
S_HINGE = np.array([[1.0, 0.5, 0.375], [0.5, 1.0, 0.5], [0.375, 0.5, 1.0]])


def test_pairwise_hinge_kink_and_reductions():
    m = 0.125
    # anchor 0: relu(0.375 - 0.5 + 0.125) = relu(0) = 0, weight 0 (relu'(0) = 0)
    # anchor 1: relu(0.5 - 0.5 + 0.125) = 0.125, weight 1
    mean = gpwref.from_similarity("pairwise_hinge", S_HINGE, Y_RANK, margin=m, reduction="mean")
    assert mean.loss == 0.125 / 2  # paper profile: every triple counts in the divisor
    np.testing.assert_array_equal(mean.grad_sim, [[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]])
    assert not mean.pos_used[0].any() and not mean.neg_used[0].any()  # the tied triple carries no weight
    nonzero = gpwref.from_similarity("pairwise_hinge", S_HINGE, Y_RANK, profile="pml", margin=m)
    assert nonzero.loss == 0.125  # pml: AvgNonZeroReducer divides by the 1 violating triple
    np.testing.assert_array_equal(nonzero.grad_sim, [[0, 0, 0], [-1, 0, 1], [0, 0, 0]])


def test_ranking_losses_match_pml_triplet_margin_loss():
    # The real code, directly: PML TripletMarginLoss on cosine similarities of a small batch.
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.losses import TripletMarginLoss

    rng = np.random.default_rng(3)
    X = rng.normal(size=(7, 3))
    y = np.array([0, 0, 1, 1, 1, 2, 2])
    Xt = torch.tensor(X, requires_grad=True)
    want = TripletMarginLoss(margin=0.05, distance=CosineSimilarity())(Xt, torch.as_tensor(y))
    want.backward()
    got = gpwref.compute("pairwise_hinge", X, y, profile="pml")
    assert got.loss == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(got.grad_emb, Xt.grad.numpy(), rtol=1e-10, atol=1e-14)
