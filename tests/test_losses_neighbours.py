"""Pairwise losses of the neighbouring papers: hand-derived batches and one test per convention rule.

ranknet, pairwise_hinge, bpr, dpsh, pce_bound, m3g, pixel_affinity, paired_domain_transfer. Every
expected number is derived in the comments from the formula (math on the listed similarities), not
read from gpwref.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.losses import m3g as m3g_module
from gpwref.losses.pixel_affinity import neighbours
from gpwref.testing import Batch
from verification.harness import check_case


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------
# Ranking losses. Three samples, labels [0, 0, 1], the batch its own reference set. S (ordered
# rows) is given directly; only these entries matter:
#   anchor 0: positive 1 (S01 = 0.5), negative 2 (S02 = 0.1)
#   anchor 1: positive 0 (S10 = 0.5), negative 2 (S12 = 0.3)
#   anchor 2: no positive, so no triple. Two triples, gaps S_in - S_ip = -0.4 and -0.2.

S_RANK = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
Y_RANK = np.array([0, 0, 1])


def test_ranknet_hand_derived():
    # L = (softplus(sigma (-0.4)) + softplus(sigma (-0.2))) / 2 (mean over the 2 triples);
    # G_0,1 = -sigma sigmoid(-0.4 sigma) / 2 = -G_0,2; G_1,0 = -sigma sigmoid(-0.2 sigma) / 2 = -G_1,2.
    sigma = 2.0
    r = gpwref.from_similarity("ranknet", S_RANK, Y_RANK, sigma=sigma)
    assert r.loss == pytest.approx((softplus(-0.8) + softplus(-0.4)) / 2, rel=1e-14)
    w0, w1 = sigma * sigmoid(-0.8) / 2, sigma * sigmoid(-0.4) / 2
    want = np.array([[0, -w0, w0], [-w1, 0, w1], [0, 0, 0]])
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(r.pos_used, [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(r.neg_used, [[0, 0, 1], [0, 0, 1], [0, 0, 0]])


def test_bpr_is_a_sum_of_minus_log_sigmoid():
    # BPR-Opt: L = -ln sigmoid(S01 - S02) - ln sigmoid(S10 - S12) (sum, no 1/2); weights sigmoid(gap).
    r = gpwref.from_similarity("bpr", S_RANK, Y_RANK)
    assert r.loss == pytest.approx(-math.log(sigmoid(0.4)) - math.log(sigmoid(0.2)), rel=1e-14)
    assert r.grad_sim[0, 1] == pytest.approx(-sigmoid(-0.4), rel=1e-14)
    assert r.grad_sim[1, 2] == pytest.approx(sigmoid(-0.2), rel=1e-14)
    mean = gpwref.from_similarity("bpr", S_RANK, Y_RANK, reduction="mean")
    assert mean.loss == pytest.approx(r.loss / 2, rel=1e-14)


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


# ---------------------------------------------------------------------------------------------
# DPSH. Two raw codes u0 = (1, 1), u1 = (1, -1) (normalize=False): S01 = 0, S00 = S11 = 2 (self
# pairs never count). Different labels: two negative pairs at Theta = 0: L = 2 log 2 (sum),
# G = sigmoid(0)/2 = 1/4 on both. Same labels: two positives: L = 2 (log 2 - 0) = 2 log 2,
# G = (1/2 - 1)/2 = -1/4.


def test_dpsh_hand_derived_on_raw_codes():
    U = np.array([[1.0, 1.0], [1.0, -1.0]])
    neg = gpwref.compute("dpsh", U, np.array([0, 1]), normalize=False)
    assert neg.loss == pytest.approx(2 * math.log(2), rel=1e-15)
    np.testing.assert_allclose(neg.grad_sim, [[0, 0.25], [0.25, 0]], rtol=1e-15)
    pos = gpwref.compute("dpsh", U, np.array([5, 5]), normalize=False)
    assert pos.loss == pytest.approx(2 * math.log(2), rel=1e-15)
    np.testing.assert_allclose(pos.grad_sim, [[0, -0.25], [-0.25, 0]], rtol=1e-15)
    # Theta = S/2 = 3/2 on a positive: softplus(1.5) - 1.5; weight (sigmoid(1.5) - 1)/2
    r = gpwref.from_similarity("dpsh", np.array([[0.0, 3.0], [3.0, 0.0]]), np.array([1, 1]), reduction="mean")
    assert r.loss == pytest.approx(softplus(1.5) - 1.5, rel=1e-14)
    assert r.grad_sim[0, 1] == pytest.approx((sigmoid(1.5) - 1) / 2 / 2, rel=1e-14)


def test_dpsh_matches_the_released_code_on_a_memory_bank():
    # The released code's rule: batch x bank (bank without the batch), divided by bank x batch.
    rng = np.random.default_rng(0)
    batch = Batch(rng.normal(size=(4, 3)), np.array([0, 1, 1, 2]), rng.normal(size=(6, 3)),
                  np.array([0, 0, 1, 2, 2, 3]), None, False)
    report = check_case("dpsh", "paper", {"reduction": "mean"}, batch)
    assert report.errors["real:DPSH-pytorch code rules value"] <= 1e-12
    assert report.errors["real:DPSH-pytorch code rules dX"] <= 1e-12
    assert not report.failures()


# ---------------------------------------------------------------------------------------------
# PCE bound. n = 2, labels [0, 1], S01 = S10 = s, self-similarities 1. Classes have one member:
# c_k = z_k / 2, ||c_k||^2 = 1/4, B_k = ||c_k||^2 / (2 lam) = 1/(8 lam). Textbook form:
#   tightness = -(1/(2 lam 4)) (S00 + S11) = -1/(4 lam)
#   row 0 logits: [1/(2 lam) - 1/(8 lam), s/(2 lam) - 1/(8 lam)] (row 1 mirrored)
#   L = -1/(4 lam) + [-1/(8 lam) + log(e^{1/(2 lam)} + e^{s/(2 lam)})]
#     = 1/(8 lam) + log(1 + e^{(s - 1)/(2 lam)})
#   negative weight G01 = pi_{0,1} / (lam n^2) = sigmoid((s - 1)/(2 lam)) / (4 lam)


def test_pce_bound_hand_derived():
    lam, s = 0.5, 0.3
    S = np.array([[1.0, s], [s, 1.0]])
    r = gpwref.from_similarity("pce_bound", S, np.array([0, 1]), lam=lam)
    assert r.loss == pytest.approx(1 / (8 * lam) + math.log1p(math.exp((s - 1) / (2 * lam))), rel=1e-14)
    want = sigmoid((s - 1) / (2 * lam)) / (4 * lam)
    np.testing.assert_allclose(r.grad_sim, [[0, want], [want, 0]], rtol=1e-14)


def test_pce_bound_is_exactly_zero_on_one_class():
    # One class: pi = 1, pi_bar = 1: G = 1/(lam n^2) - 2/(2 lam n^2) = 0, and L = 0 (both terms of
    # the cancellation-free form vanish).
    rng = np.random.default_rng(1)
    r = gpwref.compute("pce_bound", rng.normal(size=(5, 3)), np.zeros(5, dtype=np.int64))
    assert r.loss == 0.0
    assert np.all(r.grad_sim == 0.0)


def test_pce_bound_forms_agree():
    from verification.refs.pce_bound import paper_form

    rng = np.random.default_rng(2)
    for _ in range(20):
        X = rng.normal(size=(7, 3))
        y = rng.integers(0, 3, size=7)
        lam = float(rng.choice([0.1, 1.0, 3.0]))
        r = gpwref.compute("pce_bound", X, y, lam=lam)
        S = torch.tensor(r.sim)
        same = torch.as_tensor(y[:, None] == y[None, :])
        pos = same & ~torch.eye(7, dtype=torch.bool)
        assert paper_form(S, pos, ~same, "paper", lam=lam).item() == pytest.approx(r.loss, abs=1e-12)


def test_pce_bound_pushes_positives_for_small_lam():
    # Three well-separated classes: for small lam the class softmax is nearly one-hot, pi_{i,y_i} ~ 1
    # and pi_bar_k ~ 1/3, so a positive's weight (2 pi - 1 - pi_bar)/(2 lam n^2) > 0: a push.
    rng = np.random.default_rng(0)
    X = np.repeat(np.eye(3), 3, axis=0) + 0.1 * rng.normal(size=(9, 3))
    y = np.repeat(np.arange(3), 3)
    assert gpwref.compute("pce_bound", X, y, lam=1.0).grad_sim[0, 1] < 0
    assert gpwref.compute("pce_bound", X, y, lam=0.01).grad_sim[0, 1] > 0
    assert not gpwref.get_entry("pce_bound").gpw_sign


def test_pce_bound_is_not_below_cross_entropy_in_the_readings_tried():
    # Z = [e1, e1, e2, e2], labels [0, 0, 1, 1], lam = 0.1 (unit rows). c_0 = (1/2, 0): B = 0.25/0.2 = 1.25.
    # Cancellation-free form: sum_k (1 - 1/2) B + mean log(1 + e^Delta), Delta = (0 - 1.25) - (2/0.4 - 1.25) = -5:
    #   L_PCE = 1.25 + log(1 + e^-5).
    # The classifier theta_k = 1.2 e_k: CE = log(1 + e^-1.2), weight decay lam/2 ||theta||^2 = 0.05 * 2 * 1.44.
    # Their sum, 0.407, is below L_PCE: neither CE + lam/2 ||theta||^2 >= L_PCE for every theta nor
    # CE >= L_PCE holds for this form, so the bound of catalog.md 2.18 is not confirmed.
    Z = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    r = gpwref.compute("pce_bound", Z, np.array([0, 0, 1, 1]), lam=0.1)
    assert r.loss == pytest.approx(1.25 + math.log1p(math.exp(-5)), rel=1e-13)
    ce_plus_decay = math.log1p(math.exp(-1.2)) + 0.05 * 2 * 1.44
    assert ce_plus_decay < r.loss


def test_pce_bound_refuses_non_unit_rows():
    with pytest.raises(gpwref.GpwrefError, match="unit rows"):
        gpwref.compute("pce_bound", np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), normalize=False)


# ---------------------------------------------------------------------------------------------
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
    # The refs module's own check_case on one drawn-like batch: eps large enough for plain Sinkhorn.
    rng = np.random.default_rng(5)
    batch = Batch(rng.normal(size=(5, 3)), np.zeros(5, dtype=np.int64))
    report = check_case("m3g", "paper", {"eps": 0.5}, batch)
    assert not report.failures(), report.errors
    for name in ("autograd:G", "loop:G", "loop:certificate", "fd:G", "autograd:k3 dviews", "fd:k3 dviews"):
        assert name in report.errors


# ---------------------------------------------------------------------------------------------
# Pixel affinity. A 2 x 2 image (width 2), kernel 3, dilation 1: every pixel neighbours the three
# others. Labels (colour regions) [0, 0, 1, 1]: used pairs (0,1), (1,0), (2,3), (3,2). Rows are
# binary mask probabilities (m, 1 - m), m = [0.9, 0.8, 0.3, 0.1]:
#   S01 = 0.9*0.8 + 0.1*0.2 = 0.74,  S23 = 0.3*0.1 + 0.7*0.9 = 0.66
#   L = -(2 log 0.74 + 2 log 0.66) / 4,  G01 = -1/(4 * 0.74),  G23 = -1/(4 * 0.66)

M_PIXELS = np.array([0.9, 0.8, 0.3, 0.1])
P_PIXELS = np.stack([M_PIXELS, 1 - M_PIXELS], axis=1)


def test_pixel_affinity_hand_derived():
    r = gpwref.compute("pixel_affinity", P_PIXELS, np.array([0, 0, 1, 1]), normalize=False, width=2, affinity="probability")
    assert r.loss == pytest.approx(-(2 * math.log(0.74) + 2 * math.log(0.66)) / 4, rel=1e-14)
    want = np.zeros((4, 4))
    want[0, 1] = want[1, 0] = -1 / (4 * 0.74)
    want[2, 3] = want[3, 2] = -1 / (4 * 0.66)
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-14, atol=0)
    assert not r.neg_used.any()


def test_pixel_affinity_matches_boxsnake_code():
    from verification.refs.pixel_affinity import boxsnake_code

    rng = np.random.default_rng(0)
    m = rng.uniform(0.05, 0.95, size=12)
    P = np.stack([m, 1 - m], axis=1)
    labels = (np.arange(12) % 4 >= 2).astype(np.int64) + 2 * (np.arange(12) >= 8)  # 3 x 4 image
    for dilation in (1, 2):
        X = torch.tensor(P, requires_grad=True)
        want = boxsnake_code(X, labels, None, None, None, False, width=4, kernel_size=3, dilation=dilation, affinity="probability")
        want.backward()
        got = gpwref.compute("pixel_affinity", P, labels, normalize=False, width=4, dilation=dilation, affinity="probability")
        assert got.loss == pytest.approx(want.item(), rel=1e-12)
        np.testing.assert_allclose(got.grad_emb, X.grad.numpy(), rtol=1e-10, atol=1e-14)
        # the code's own parameter is m alone (it forms 1 - m): dL/dm = dL/dX0 - dL/dX1
        m_leaf = torch.tensor(m, requires_grad=True)
        code = boxsnake_code(torch.stack([m_leaf, 1 - m_leaf], dim=1), labels, None, None, None, False, width=4,
                             kernel_size=3, dilation=dilation, affinity="probability")
        code.backward()
        np.testing.assert_allclose(got.grad_emb[:, 0] - got.grad_emb[:, 1], m_leaf.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_pixel_neighbourhoods():
    # 3 x 3 image, dilation 2: pixel 0 = (0, 0) reaches (0, 2), (2, 0), (2, 2) = 2, 6, 8.
    assert np.nonzero(neighbours(9, 3, 3, 2)[0])[0].tolist() == [2, 6, 8]
    # 5 pixels, width 3 (last row partial): pixel 4 = (1, 1) sees 0, 1, 2, 3 and not (1, 2), absent.
    assert np.nonzero(neighbours(5, 3, 3, 1)[4])[0].tolist() == [0, 1, 2, 3]
    # width None: one row, kernel 3: only left and right.
    assert np.nonzero(neighbours(4, None, 3, 1)[1])[0].tolist() == [0, 2]


def test_pixel_affinity_refuses_an_infinite_term():
    # probability rows (1, 0) and (0, 1) in one region: P(same) = 0, -log 0 = inf
    with pytest.raises(gpwref.GpwrefError, match="affinity > 0"):
        gpwref.compute("pixel_affinity", np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), normalize=False,
                       affinity="probability")


# ---------------------------------------------------------------------------------------------
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
