"""m3g: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref
from gpwref.losses import m3g as m3g_module
from gpwref.testing import Batch
from gpwref_verification.harness import check_case

from ._helpers import sigmoid


# M3G, two views of two items with S = [[s, t], [t, s]]: C = 2 - 2S = [[c, e], [e, c]]. By symmetry
# P = [[p, 1/2 - p], [1/2 - p, p]]; d/dp [2pc + (1 - 2p) e + eps (2p log 4p + (1 - 2p) log 4(1/2 - p))] = 0
# gives log(p / (1/2 - p)) = (e - c)/eps, p = sigmoid((e - c)/eps) / 2.
#   M3G = c - [2pc + (1 - 2p) e + eps (2p log 4p + (1 - 2p) log(4 (1/2 - p)))]
#   G_ii = -2 (1/2 - p), G_ij = 2 (1/2 - p)


def test_m3g_two_items_hand_derived():
    s, t, eps = 0.9, 0.2, 0.5
    c, e = 2 - 2 * s, 2 - 2 * t
    p = sigmoid((e - c) / eps) / 2
    q = 0.5 - p
    ot = 2 * p * c + 2 * q * e + eps * (2 * p * math.log(4 * p) + 2 * q * math.log(4 * q))
    S = np.array([[s, t], [t, s]])
    ids = np.array([0, 1])
    r = gpwref.from_similarity("m3g", S, ids, ids, eps=eps)
    assert r.loss == pytest.approx(c - ot, rel=1e-12)
    np.testing.assert_allclose(r.grad_sim, [[-2 * q, 2 * q], [2 * q, -2 * q]], rtol=1e-11)
    # item ids in another order: the matching follows the ids, not the positions
    swapped = gpwref.from_similarity("m3g", S[:, ::-1], ids, ids[::-1], eps=eps)
    assert swapped.loss == pytest.approx(r.loss, rel=1e-12)


def test_m3g_small_eps_needs_newton_and_still_converges():
    # Costs 0 on the matching and ~2 off it with eps = 0.05: Sinkhorn's contraction factor is
    # tanh(Delta / (4 eps))^2 ~ 1 - 1e-8, so plain passes stall; the solver must still reach tol.
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 4))
    B = A + 0.3 * rng.normal(size=(6, 4))
    ids = np.arange(6)
    r = gpwref.compute("m3g", A, ids, ref=B, ref_labels=ids, eps=0.05)
    assert r.extras["marginal_error"] <= 1e-13
    P = r.extras["coupling"]
    np.testing.assert_allclose(P.sum(axis=0), 1 / 6, atol=1e-13)
    np.testing.assert_allclose(P.sum(axis=1), 1 / 6, atol=1e-13)


def test_m3g_equals_the_squared_euclidean_cost_on_raw_rows():
    # Separable terms cancel: with raw rows, cost 2 - 2 S and ||x - y||^2 give the same gap.
    rng = np.random.default_rng(4)
    views = [rng.normal(size=(4, 3)) * rng.uniform(0.5, 2.0, size=(4, 1)) for _ in range(3)]
    got = m3g_module.matching_gap(views, eps=0.5, normalize=False)
    n = 4
    cost = np.zeros((n, n, n))
    for a, b, shape in ((0, 1, (n, n, 1)), (0, 2, (n, 1, n)), (1, 2, (1, n, n))):
        d2 = ((views[a][:, None, :] - views[b][None, :, :]) ** 2).sum(axis=2)
        cost = cost + d2.reshape(shape)
    transport = m3g_module.sinkhorn(cost, eps=0.5, tol=1e-13, max_iter=1000)
    want = np.mean([cost[i, i, i] for i in range(n)]) - transport.value
    assert got.loss == pytest.approx(want, rel=1e-11, abs=1e-12)


def test_m3g_refuses_what_is_not_two_matched_views():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 2))
    with pytest.raises(gpwref.GpwrefError, match="second view"):
        gpwref.compute("m3g", X, np.arange(3))
    with pytest.raises(gpwref.GpwrefError, match="exactly once"):
        gpwref.compute("m3g", X, np.array([0, 0, 1]), ref=X + 1, ref_labels=np.array([0, 1, 2]))


def test_m3g_check_case_runs_every_check():
    # The harness's check_case (m3g's driver) on one drawn-like batch: eps large enough for plain Sinkhorn.
    rng = np.random.default_rng(5)
    batch = Batch(rng.normal(size=(5, 3)), np.zeros(5, dtype=np.int64))
    report = check_case("m3g", "paper", {"eps": 0.5}, batch)
    assert not report.failures(), report.errors
    for name in ("autograd:G", "loop:G", "loop:certificate", "fd:G", "autograd:k3 dviews", "fd:k3 dviews"):
        assert name in report.errors
