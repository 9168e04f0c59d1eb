"""lvm_med_matching: hand-derived matchings and blackbox gradients, solver limits, bad input
(drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest

import gpwref
from gpwref.losses import lvm_med_matching as lvm
from gpwref.testing import Batch
from gpwref_verification.harness import check_case

# First order, two items, aligned S = [[0.1, 0.9], [0.8, 0.2]]: the identity scores 0.3, the swap
# 1.7, so the solver swaps (Hamming 4, "sum"). The perturbed costs S + lam (2I - 1) score the
# identity 0.3 + 2 lam and the swap 1.7 - 2 lam: it is the identity iff 4 lam > 1.4.
#   lam = 80:  y_lam = I, G = (y - I) / 80 = [[-1, 1], [1, -1]] / 80, f_lam = 0 + (1.7 - 0.3) / 80
#   lam = 0.3: y_lam = y, G = 0, f_lam = L = 4


def test_first_order_two_items_hand_derived():
    S = np.array([[0.1, 0.9], [0.8, 0.2]])
    ids = np.array([0, 1])
    r = gpwref.from_similarity("lvm_med_matching", S, ids, ids, lam=80.0)
    assert r.loss == 4.0
    np.testing.assert_allclose(r.grad_sim, np.array([[-1, 1], [1, -1]]) / 80, rtol=1e-15)
    assert r.extras["interpolated"] == pytest.approx(1.4 / 80, rel=1e-13)
    small = gpwref.from_similarity("lvm_med_matching", S, ids, ids, lam=0.3)
    assert small.loss == 4.0 and not small.grad_sim.any()
    assert small.extras["interpolated"] == pytest.approx(4.0, rel=1e-13)
    # "mean": L = 4 / 2, the perturbation lam / 2 (2I - 1): identity iff 2 lam > 1.4
    mean = gpwref.from_similarity("lvm_med_matching", S, ids, ids, lam=0.8, hamming="mean")
    assert mean.loss == 2.0
    np.testing.assert_allclose(mean.grad_sim, np.array([[-1, 1], [1, -1]]) / 0.8, rtol=1e-15)
    # the second view's columns in another order: the matching follows the item ids
    swapped = gpwref.from_similarity("lvm_med_matching", S[:, ::-1], ids, ids[::-1], lam=80.0)
    np.testing.assert_array_equal(swapped.grad_sim, r.grad_sim[:, ::-1])


def test_cost_margin_hand_derived():
    # S = [[0.9, 0.2], [0.3, 0.8]]: identity 1.7, swap 0.5. The margin lowers the true pairs: the
    # identity scores 1.7 - 2 margin, so the solver swaps once margin > 0.6.
    S = np.array([[0.9, 0.2], [0.3, 0.8]])
    ids = np.array([0, 1])
    kept = gpwref.from_similarity("lvm_med_matching", S, ids, ids, margin=0.5)
    assert kept.loss == 0.0 and not kept.grad_sim.any()
    swapped = gpwref.from_similarity("lvm_med_matching", S, ids, ids, margin=0.7)
    assert swapped.loss == 4.0
    np.testing.assert_allclose(swapped.grad_sim, np.array([[-1, 1], [1, -1]]) / 80, rtol=1e-15)
    assert swapped.extras["interpolated"] == pytest.approx((0.5 - (1.7 - 1.4)) / 80, rel=1e-12)


# Second order, three items, c = 0 except c_01 = 0.1; edges A_01 = A_10 = 1, B_12 = B_21 = 1, all
# else 0; edge_weight 1, so a = 1 / (n - 1) = 1/2 and the edge term of i -> p(i) is
# a * 2 [ {p(0), p(1)} = {1, 2} ]. Objectives O(p) and perturbed O(p) + lam (2 F(p) - 3) (F = fixed points):
#   (0,1,2): 0, +3lam   (1,2,0): 1.1, -3lam   (2,1,0): 1, -lam   (1,0,2): 0.1, -lam
#   (0,2,1): 0, -lam    (2,0,1): 0, -3lam
# y = (1,2,0), Hamming 6. lam = 0.1: y_lam = (2,1,0) (0.9 against 0.8 and 0.3), so
# G = (y - y_lam)/0.1 pulls (1,1) and the negative (0,2), pushes (0,1), (1,2): outside GPW's sign rule;
# both matchings map edge {0,1} onto {1,2}, so the edge gradients vanish; f_lam = 4 + (1.1 - 1)/0.1 = 5.
# lam = 80: y_lam = I, G = (y - I)/80, dA = (a/80) [y B y^T - B] = (1/160) (+1 at {0,1}, -1 at {1,2}),
# dB = (a/80) [y^T A y - A] = (1/160) (+1 at {1,2}, -1 at {0,1}), f_lam = (1.1 - 0)/80.


def _three_item_problem():
    c = np.zeros((3, 3))
    c[0, 1] = 0.1
    A = np.zeros((3, 3))
    A[0, 1] = A[1, 0] = 1.0
    B = np.zeros((3, 3))
    B[1, 2] = B[2, 1] = 1.0
    return c, A, B


def test_second_order_three_items_hand_derived():
    c, A, B = _three_item_problem()
    settings = dict(hamming="sum", order="second", solver="exact", edge_weight=1.0, margin=0.0)
    small = lvm.blackbox(c, A, B, lam=0.1, **settings)
    np.testing.assert_array_equal(small["y"], np.eye(3)[[1, 2, 0]])
    np.testing.assert_array_equal(small["y_lam"], np.eye(3)[[2, 1, 0]])
    want = np.array([[0, 1, -1], [0, -1, 1], [0, 0, 0]]) / 0.1
    np.testing.assert_allclose(small["grad_c"], want, rtol=1e-15)
    assert small["per_anchor"].sum() == 6.0
    assert not small["grad_A"].any() and not small["grad_B"].any()
    assert small["interpolated"] == pytest.approx(5.0, rel=1e-13)

    large = lvm.blackbox(c, A, B, lam=80.0, **settings)
    np.testing.assert_allclose(large["grad_c"], (np.eye(3)[[1, 2, 0]] - np.eye(3)) / 80, rtol=1e-15)
    dA = np.array([[0, 1, 0], [1, 0, -1], [0, -1, 0]]) / 160
    dB = np.array([[0, -1, 0], [-1, 0, 1], [0, 1, 0]]) / 160
    np.testing.assert_allclose(large["grad_A"], dA, rtol=1e-15)
    np.testing.assert_allclose(large["grad_B"], dB, rtol=1e-15)
    assert large["interpolated"] == pytest.approx(1.1 / 80, rel=1e-13)


def test_spectral_solver_finds_a_clear_matching_and_takes_larger_batches():
    c, A, B = _three_item_problem()
    # the spectral matching of the three-item problem: the edge term dominates, as for the exact one
    got = lvm.solve(c, A, B, order="second", solver="spectral", edge_weight=1.0)
    np.testing.assert_array_equal(got, [1, 2, 0])
    rng = np.random.default_rng(1)
    X = rng.normal(size=(10, 6))
    ids = np.arange(10)
    with pytest.raises(gpwref.GpwrefError, match="at most 8 items"):
        gpwref.compute("lvm_med_matching", X, ids, ref=X + 0.01, ref_labels=ids, order="second")
    r = gpwref.compute("lvm_med_matching", X, ids, ref=X + 0.01 * rng.normal(size=X.shape), ref_labels=ids,
                       order="second", solver="spectral")
    np.testing.assert_array_equal(r.extras["matching"], np.eye(10))  # nearly identical views
    assert r.loss == 0.0 and not r.grad_sim.any()


def test_refuses_what_is_not_two_matched_views_or_a_valid_solver():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 2))
    ids = np.arange(3)
    with pytest.raises(gpwref.GpwrefError, match="second view"):
        gpwref.compute("lvm_med_matching", X, ids)
    with pytest.raises(gpwref.GpwrefError, match="exactly once"):
        gpwref.compute("lvm_med_matching", X, np.array([0, 0, 1]), ref=X + 1, ref_labels=ids)
    with pytest.raises(gpwref.GpwrefError, match="not S alone"):
        gpwref.from_similarity("lvm_med_matching", X @ X.T, ids, ids, order="second")
    with pytest.raises(gpwref.GpwrefError, match="solver"):
        gpwref.compute("lvm_med_matching", X, ids, ref=X + 1, ref_labels=ids, solver="spectral")
    with pytest.raises(gpwref.GpwrefError, match="lam"):
        gpwref.compute("lvm_med_matching", X, ids, ref=X + 1, ref_labels=ids, lam=0.0)


@pytest.mark.parametrize("hyper", [{}, {"order": "second", "lam": 0.5}, {"order": "second", "solver": "spectral"}])
def test_check_case_runs_every_check(hyper):
    rng = np.random.default_rng(7)
    batch = Batch(rng.normal(size=(5, 3)), np.zeros(5, dtype=np.int64))
    report = check_case("lvm_med_matching", "paper", hyper, batch)
    assert not report.failures(), report.errors
    for name in ("autograd:G", "autograd:dX", "autograd:dX_ref", "fd:interpolated"):
        assert name in report.errors, report.skipped


def test_difference_edge_affinity_is_degenerate_on_complete_graphs():
    # The module doc's reason for the product edge affinity: with edge features u_i - u_k, v_j - v_l,
    # the edge term of every matching p is 2n sum_i S_i,p(i) - 2 sum_ij S_ij (plain loops here).
    from itertools import permutations
    rng = np.random.default_rng(3)
    U, V = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    S = U @ V.T
    for p in permutations(range(4)):
        edges = sum(float((U[i] - U[k]) @ (V[p[i]] - V[p[k]])) for i in range(4) for k in range(4) if i != k)
        trace = sum(S[i, p[i]] for i in range(4))
        assert edges == pytest.approx(2 * 4 * trace - 2 * S.sum(), rel=1e-12, abs=1e-12)


def test_spectral_dense_and_lanczos_paths_agree(monkeypatch):
    # n^2 = 144 takes the dense eigh; with the dense limit at 0 the same call goes through Lanczos.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(12, 6))
    Y = X + 0.8 * rng.normal(size=X.shape)
    ids = np.arange(12)
    hyper = dict(order="second", solver="spectral", lam=0.5)
    dense = gpwref.compute("lvm_med_matching", X, ids, ref=Y, ref_labels=ids, **hyper)
    monkeypatch.setattr(lvm, "DENSE_SPECTRAL_SIZE", 0)
    lanczos = gpwref.compute("lvm_med_matching", X, ids, ref=Y, ref_labels=ids, **hyper)
    assert dense.loss > 0 and dense.grad_sim.any()  # a case with wrong matchings and nonzero weights
    np.testing.assert_array_equal(lanczos.extras["matching"], dense.extras["matching"])
    np.testing.assert_array_equal(lanczos.grad_sim, dense.grad_sim)
