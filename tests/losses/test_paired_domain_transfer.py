"""paired_domain_transfer: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest

import gpwref


# Paired domain transfer. Two items seen in two domains, S = [[0.8, 0.4], [0.1, 0.6]] (rows: domain
# B, columns: domain A), pair ids [0, 1] both sides: positives on the diagonal.
#   L = ((2 - 1.6) + (2 - 1.2)) / 2 = 0.6, G_ii = -2/2 = -1.
#   margin 0.3: negatives (0,1) S = 0.4 > 0.3 (push 0.1/2, weight 1/2), (1,0) S = 0.1 (inactive).


def test_paired_domain_transfer_hand_derived():
    S = np.array([[0.8, 0.4], [0.1, 0.6]])
    ids = np.array([0, 1])
    r = gpwref.from_similarity("paired_domain_transfer", S, ids, ids)
    assert r.loss == pytest.approx(0.6, rel=1e-15)
    np.testing.assert_array_equal(r.grad_sim, [[-1, 0], [0, -1]])
    pushed = gpwref.from_similarity("paired_domain_transfer", S, ids, ids, margin=0.3)
    assert pushed.loss == pytest.approx(0.6 + 0.1 / 2, rel=1e-14)
    np.testing.assert_array_equal(pushed.grad_sim, [[-1, 0.5], [0, -1]])
    np.testing.assert_array_equal(pushed.neg_used, [[False, True], [False, False]])


def test_paired_domain_transfer_is_the_squared_distance_of_unit_rows():
    # L = mean over pairs of ||u_i - v_i||^2 computed from the embeddings themselves
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    ids = np.arange(5)
    r = gpwref.compute("paired_domain_transfer", B, ids, ref=A, ref_labels=ids)
    U = B / np.linalg.norm(B, axis=1, keepdims=True)
    V = A / np.linalg.norm(A, axis=1, keepdims=True)
    assert r.loss == pytest.approx(np.mean(((U - V) ** 2).sum(axis=1)), rel=1e-14)
