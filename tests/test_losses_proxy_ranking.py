"""Sample-to-proxy and ranking-surrogate losses: hand-derived batches, one test per convention rule,
and the proxies' gradient dL/dW against pytorch-metric-learning's own parameter gradient.

Every expected number below is derived in the comments from the formula, not read from gpwref.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from verification.refs.proxy_anchor import pml_labels, proxy_batch


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# Proxy-Anchor. Two samples e0, e1 (labels 0, 1) and two proxies e0, e1 (classes 0, 1): S = I.
# Both proxies have a positive (|P+| = 2, n = 2). Proxy 0: positive sample 0 (S = 1), negative
# sample 1 (S = 0); proxy 1 likewise. With a = alpha, d = margin:
#   L = (1/2) 2 log(1 + e^{-a(1-d)}) + (1/2) 2 log(1 + e^{a d})
#   G_00 = G_11 = -(a/2) e^{-a(1-d)} / (1 + e^{-a(1-d)}),  G_01 = G_10 = (a/2) e^{a d} / (1 + e^{a d}).


def test_proxy_anchor_hand_derived():
    a, d = 2.0, 0.1
    r = gpwref.from_similarity("proxy_anchor", np.eye(2), np.array([0, 1]), np.array([0, 1]), alpha=a, margin=d)
    want = math.log1p(math.exp(-a * (1 - d))) + math.log1p(math.exp(a * d))
    assert r.loss == pytest.approx(want, rel=1e-14)
    g_pos = -(a / 2) * sigmoid(-a * (1 - d))
    g_neg = (a / 2) * sigmoid(a * d)
    np.testing.assert_allclose(r.grad_sim, [[g_pos, g_neg], [g_neg, g_pos]], rtol=1e-14)
    assert r.per_anchor.shape == (2,)  # one entry per proxy


def test_proxy_anchor_proxy_without_samples_counts_only_in_the_negative_divisor():
    # Add a proxy of class 7 (no sample): |P+| stays 2, n becomes 3; its column holds two negatives
    # with S = 0: its negative term is log(1 + 2 e^{a d}) / 3.
    a, d = 2.0, 0.1
    S = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    r = gpwref.from_similarity("proxy_anchor", S, np.array([0, 1]), np.array([0, 1, 7]), alpha=a, margin=d)
    want = math.log1p(math.exp(-a * (1 - d))) + (2 * math.log1p(math.exp(a * d)) + math.log1p(2 * math.exp(a * d))) / 3
    assert r.loss == pytest.approx(want, rel=1e-14)
    np.testing.assert_allclose(r.grad_sim[:, 2], a / 3 * math.exp(a * d) / (1 + 2 * math.exp(a * d)), rtol=1e-14)


@pytest.mark.parametrize("loss", ["proxy_anchor", "proxy_nca", "normalized_softmax", "cosface", "arcface", "soft_triple"])
def test_proxy_losses_need_the_proxies(loss):
    with pytest.raises(gpwref.GpwrefError, match="proxies"):
        gpwref.compute(loss, np.eye(3), np.array([0, 0, 1]))


# ---------------------------------------------------------------------------------------------
# Cross-entropy family, one sample (class 0) and two proxies (classes 0, 1) with cosines c1, c2:
# L = log(1 + e^{z2 - z1}), dL/dz1 = -sigma(z2 - z1), dL/dz2 = +sigma(z2 - z1), G = dL/dz dz/dS.


def test_normalized_softmax_hand_derived():
    # T = 0.5, c = (1/2, 1/4): z = (1, 1/2). L = log(1 + e^{-1/2}), G = -+ 2 sigma(-1/2).
    r = gpwref.from_similarity("normalized_softmax", np.array([[0.5, 0.25]]), np.array([0]), np.array([0, 1]), temperature=0.5)
    assert r.loss == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-2 * sigmoid(-0.5), 2 * sigmoid(-0.5)]], rtol=1e-14)


def test_cosface_hand_derived():
    # s = 2, m = 1/2, c = (1/2, 1/4): z = (2 (1/2 - 1/2), 2/4) = (0, 1/2).
    r = gpwref.from_similarity("cosface", np.array([[0.5, 0.25]]), np.array([0]), np.array([0, 1]), scale=2.0, margin=0.5)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-2 * sigmoid(0.5), 2 * sigmoid(0.5)]], rtol=1e-14)


def test_arcface_hand_derived():
    # c1 = cos 60 deg, margin 30 deg: psi = cos 90 deg = 0, psi' = sin(90)/sin(60) = 2/sqrt(3).
    # s = 2, c2 = 1/4: z = (0, 1/2); G_0 = -2 (2/sqrt 3) sigma(1/2), G_1 = 2 sigma(1/2).
    r = gpwref.from_similarity("arcface", np.array([[0.5, 0.25]]), np.array([0]), np.array([0, 1]), scale=2.0, margin=math.pi / 6)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-4 / math.sqrt(3) * sigmoid(0.5), 2 * sigmoid(0.5)]], rtol=1e-14)


def test_arcface_monotone_fix_keeps_the_gpw_sign():
    # theta = 170 deg > pi - m (m = 0.5 rad = 28.6 deg). Bare formula: psi = cos(theta + m),
    # psi' = sin(theta + m) / sin(theta) < 0 since theta + m > pi: the positive pair gets G > 0.
    # With the fix psi = cos(theta) - m sin(m), psi' = 1: G < 0.
    S = np.array([[math.cos(math.radians(170)), 0.0]])
    fixed = gpwref.from_similarity("arcface", S, np.array([0]), np.array([0, 1]), scale=2.0, margin=0.5)
    bare = gpwref.from_similarity("arcface", S, np.array([0]), np.array([0, 1]), scale=2.0, margin=0.5, monotone_fix=False)
    assert fixed.grad_sim[0, 0] < 0 < bare.grad_sim[0, 0]
    theta = math.radians(170)
    z1_fixed = 2 * (math.cos(theta) - 0.5 * math.sin(0.5))
    assert fixed.loss == pytest.approx(math.log1p(math.exp(-z1_fixed)), rel=1e-14)
    z1_bare = 2 * math.cos(theta + 0.5)
    want = -2 * math.sin(theta + 0.5) / math.sin(theta) * sigmoid(-z1_bare)
    assert bare.grad_sim[0, 0] == pytest.approx(want, rel=1e-12)


def test_arcface_refuses_theta_zero():
    with pytest.raises(gpwref.GpwrefError, match="theta = 0"):
        gpwref.from_similarity("arcface", np.array([[1.0, 0.0]]), np.array([0]), np.array([0, 1]))


def test_cross_entropy_rules_for_several_and_missing_proxies():
    # Sample 0 (class 0) has two positive proxies (S = 0.5, 0.25) and one negative (S = 0):
    # L_0 = -log((e^{z1} + e^{z2}) / (e^{z1} + e^{z2} + e^{z3})). Sample 1 (class 9) has no proxy:
    # no term, and not counted (m' = 1). T = 1: z = S.
    S = np.array([[0.5, 0.25, 0.0], [0.1, 0.2, 0.3]])
    r = gpwref.from_similarity("normalized_softmax", S, np.array([0, 9]), np.array([0, 0, 1]), temperature=1.0)
    e = np.exp([0.5, 0.25, 0.0])
    assert r.loss == pytest.approx(math.log(e.sum() / e[:2].sum()), rel=1e-14)
    assert r.per_anchor[1] == 0 and not r.pos_used[1].any() and not r.grad_sim[1].any()
    # dL/dz_j = p_j - q_j: p = e / sum e, q = positives' share among positives.
    p, q = e / e.sum(), np.array([e[0], e[1], 0.0]) / e[:2].sum()
    np.testing.assert_allclose(r.grad_sim[0], p - q, rtol=1e-13)


def test_cross_entropy_keeps_tiny_losses_accurate():
    # CosFace s = 64: a confidently classified sample has L = log(1 + e^{z2 - z1}) ~ e^{-64 * 1.35}
    # = 2.9e-38; a difference of log-sum-exps would round it to 0.
    r = gpwref.from_similarity("cosface", np.array([[1.0, -0.7]]), np.array([0]), np.array([0, 1]))
    want = math.log1p(math.exp(64 * (-0.7) - 64 * (1.0 - 0.35)))
    assert r.loss == pytest.approx(want, rel=1e-13)
    assert r.grad_sim[0, 1] == pytest.approx(64 * want, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# ProxyNCA. One sample at the positive proxy (S = 1, d2 = 0) and two negative proxies with S = 0
# (d2 = 2), scale 1: z = -d2 = (0, -2, -2).
#   paper (positive excluded): L = 0 + log(2 e^{-2}) = log 2 - 2; G = dz/dS (-q, w, w) = 2 (-1, 1/2, 1/2).
#   include_positive: L = log(1 + r), r = 2 e^{-2}; G = 2 (-r, r/2, r/2) / (1 + r).


def test_proxy_nca_hand_derived_and_the_positive_in_the_denominator():
    S = np.array([[1.0, 0.0, 0.0]])
    y, yr = np.array([0]), np.array([0, 1, 2])
    paper = gpwref.from_similarity("proxy_nca", S, y, yr)
    assert paper.loss == pytest.approx(math.log(2) - 2, rel=1e-14)
    np.testing.assert_allclose(paper.grad_sim, [[-2.0, 1.0, 1.0]], rtol=1e-14)
    pml = gpwref.from_similarity("proxy_nca", S, y, yr, profile="pml")
    r = 2 * math.exp(-2)
    assert pml.loss == pytest.approx(math.log1p(r), rel=1e-14)
    np.testing.assert_allclose(pml.grad_sim, [[-2 * r / (1 + r), r / (1 + r), r / (1 + r)]], rtol=1e-14)


def test_proxy_nca_conventions_match_their_codes():
    # catalog.md section 3 item 18: PML = positive included, scale 1; RDML = positive excluded, 3x
    # on both sides (scale 9). Each code agrees with its own rule and not with the other.
    from verification.refs import proxy_nca as ref

    b = proxy_batch(np.random.default_rng(5), m=6, classes=3, singletons=False, one_class=False)
    X = torch.tensor(b.embeddings, requires_grad=True)
    R = torch.tensor(b.ref)
    pml_value = ref.pml(X, b.labels, R, b.ref_labels, None, True, scale=1.0, include_positive=True).item()
    rdml_value = ref.rdml(X, b.labels, R, b.ref_labels, None, True, scale=9.0, include_positive=False).item()
    kw = dict(ref=b.ref, ref_labels=b.ref_labels)
    as_pml = gpwref.compute("proxy_nca", b.embeddings, b.labels, profile="pml", **kw).loss
    as_rdml = gpwref.compute("proxy_nca", b.embeddings, b.labels, scale=9.0, **kw).loss
    assert as_pml == pytest.approx(pml_value, rel=1e-12) and as_rdml == pytest.approx(rdml_value, rel=1e-12)
    assert abs(as_pml - as_rdml) > 1e-3


# ---------------------------------------------------------------------------------------------
# SoftTriple. One sample (class 0); class 0 has centers with S = 0.5, 0.3, class 1 one center with
# S = 0.1. gamma = 0.1: a = softmax(5, 3) = (sigma(2), sigma(-2)); S'_0 = 0.5 sigma(2) + 0.3 sigma(-2),
# S'_1 = 0.1. z = la (S'_0 - margin, S'_1); L = log(1 + e^{z1 - z0}); g = la (-sigma(z1 - z0), sigma(z1 - z0)).
# G_j = g_c a_j (1 + (S_j - S'_c) / gamma): for the 0.3 center 1 + (0.3 - 0.476)/0.1 < 0, so this
# POSITIVE center gets G > 0 (the sign rule fails per center; it holds for S').


def test_soft_triple_hand_derived_and_the_center_sign():
    la, gamma, margin = 20.0, 0.1, 0.01
    S = np.array([[0.5, 0.3, 0.1]])
    r = gpwref.from_similarity("soft_triple", S, np.array([0]), np.array([0, 0, 1]), la=la, gamma=gamma, margin=margin)
    a0, a1 = sigmoid(2.0), sigmoid(-2.0)
    s0 = 0.5 * a0 + 0.3 * a1
    gap = la * 0.1 - la * (s0 - margin)
    assert r.loss == pytest.approx(math.log1p(math.exp(gap)), rel=1e-13)
    g0, g1 = -la * sigmoid(gap), la * sigmoid(gap)
    want = [g0 * a0 * (1 + (0.5 - s0) / gamma), g0 * a1 * (1 + (0.3 - s0) / gamma), g1 * 1.0 * (1 + 0.0)]
    np.testing.assert_allclose(r.grad_sim, [want], rtol=1e-12)
    assert r.grad_sim[0, 1] > 0 and r.pos_used[0, 1]


def test_soft_triple_rdml_softmax_over_classes():
    # catalog.md section 3 item 19: RDML's softmax runs over the classes for each center index.
    # Written out with NumPy for a 2-class x 2-center grid (centers in ref order per class).
    S = np.array([[0.5, 0.3, 0.1, 0.4], [0.2, -0.1, 0.6, 0.0]])
    y, yr = np.array([0, 1]), np.array([0, 0, 1, 1])
    gamma, la, margin = 10.0, 8.0, 0.01
    grid = S.reshape(2, 2, 2)  # sample, class, center
    b = np.exp(grid / gamma) / np.exp(grid / gamma).sum(axis=1, keepdims=True)  # over classes
    relaxed = (b * grid).sum(axis=2)
    z = la * (relaxed - margin * np.eye(2))
    want = np.mean(np.log(np.exp(z).sum(axis=1)) - z[[0, 1], [0, 1]])
    rdml = gpwref.from_similarity("soft_triple", S, y, yr, la=la, gamma=gamma, margin=margin, center_softmax="classes")
    paper = gpwref.from_similarity("soft_triple", S, y, yr, la=la, gamma=gamma, margin=margin)
    assert rdml.loss == pytest.approx(want, rel=1e-13)
    assert abs(paper.loss - rdml.loss) > 1e-4
    with pytest.raises(gpwref.GpwrefError, match="same number of centers"):
        gpwref.from_similarity("soft_triple", S[:, :3], y, yr[:3], center_softmax="classes")


# ---------------------------------------------------------------------------------------------
# dL/dW against PML's own proxy parameter gradient (the harness compares value and dL/dX only).

PROXY_PARAMS = {
    "proxy_anchor": dict(alpha=32.0, margin=0.1),
    "proxy_nca": dict(scale=1.0),
    "normalized_softmax": dict(temperature=0.05),
    "cosface": dict(scale=64.0, margin=0.35),
    "arcface": dict(scale=64.0, margin=math.radians(28.6)),
}


@pytest.mark.parametrize("loss", sorted(PROXY_PARAMS) + ["soft_triple"])
@pytest.mark.parametrize("seed", range(6))
def test_proxy_gradient_matches_pml_parameter_gradient(loss, seed):
    import importlib

    ref = importlib.import_module(f"verification.refs.{loss}")
    per_class = 2 if loss == "soft_triple" else 1
    b = proxy_batch(np.random.default_rng(seed), per_class=per_class)
    ours = gpwref.compute(loss, b.embeddings, b.labels, profile="pml", ref=b.ref, ref_labels=b.ref_labels)
    X = torch.tensor(b.embeddings, requires_grad=True)
    R = torch.tensor(b.ref)
    if loss == "soft_triple":
        module, classes, order = ref.pml_module(R, b.ref_labels, la=20.0, gamma=0.1, margin=0.01)
        y = torch.as_tensor([classes.index(int(c)) for c in b.labels])
        module(X, y).backward()
        grad_W = np.zeros_like(b.ref)
        grad_W[order.numpy()] = module.fc.grad.numpy().T
    else:
        y = pml_labels(b.labels, R, b.ref_labels, None, True, every_sample_has_proxy=loss != "proxy_nca")
        if loss == "proxy_anchor":
            module, name = ref.pml_module(R, **PROXY_PARAMS[loss]), "proxies"
        else:
            module, name = ref.pml_module(R, **PROXY_PARAMS[loss])
        module(X, y).backward()
        grad = getattr(module, name).grad.numpy()
        grad_W = grad if name == "proxies" else grad.T
    scale = max(np.abs(grad_W).max(), 1e-300)
    assert np.max(np.abs(ours.grad_ref - grad_W)) / scale < 1e-9
    assert np.max(np.abs(ours.grad_emb - X.grad.numpy())) / max(np.abs(X.grad.numpy()).max(), 1e-300) < 1e-9


# ---------------------------------------------------------------------------------------------
# FastAP. One anchor (class 0) against a reference set of one positive and one negative, B = 2 bins
# of width 2 (z = 0, 2, 4). Positive at S = 0.75 (d = 0.5), negative at S = 0 (d = 2):
#   K(0.5) = (0.75, 0.25, 0), K(2) = (0, 1, 0): h+ = (0.75, 0.25, 0), h- = (0, 1, 0);
#   H+ = (0.75, 1, 1), H = (0.75, 2, 2), H- = (0, 1, 1).
#   FastAP = 0.75 * 0.75 / 0.75 + 0.25 * 1 / 2 = 0.875; L = 0.125.
#   dFastAP/dh+ = ((H+_0 H_0 + h+_0 H-_0)/H_0^2 + h+_1 H-_1/H_1^2, (H+_1 H_1 + h+_1 H-_1)/H_1^2, ...)
#              = (1 + 0.0625, (2 + 0.25)/4, 0) = (1.0625, 0.5625, 0)
#   dFastAP/dh-_1 = -(h+_1 H+_1/H_1^2 + h+_2 H+_2/H_2^2) = -0.0625.
#   K' at d = 0.5: bin 0 -1/2, bin 1 +1/2. At d = 2 (bin 1's centre, bin 0's right foot, bin 2's left
#   foot): "zero" gives 0 for all three; "left" (slope from below in d) gives bin 0 -1/2, bin 1 +1/2, bin 2 0.
#   dFastAP/dh-_0 = -(h+_0 H+_0/H_0^2 + h+_1 H+_1/H_1^2) = -(1 + 0.0625) = -1.0625.
#   G = 2 sum_l dFastAP/dh_l K'_l:  G_pos = 2 (1.0625 (-1/2) + 0.5625 (1/2)) = -0.5;
#   G_neg = 0 ("zero") or 2 (-1.0625 (-1/2) - 0.0625 (1/2)) = 1.0 ("left").


def test_fast_ap_hand_derived_and_the_kink_rule():
    S = np.array([[0.75, 0.0]])
    y, yr = np.array([0]), np.array([0, 1])
    zero = gpwref.from_similarity("fast_ap", S, y, yr, num_bins=2)
    assert zero.loss == pytest.approx(0.125, rel=1e-14)
    np.testing.assert_allclose(zero.grad_sim, [[-0.5, 0.0]], rtol=1e-14, atol=0)
    left = gpwref.from_similarity("fast_ap", S, y, yr, num_bins=2, kink_slope="left")
    np.testing.assert_allclose(left.grad_sim, [[-0.5, 1.0]], rtol=1e-14)


def test_fast_ap_weights_can_break_the_gpw_sign():
    # A drawn batch with a positive pair whose G > 0 (or a negative with G < 0), confirmed by a
    # central difference of the loss itself: FastAP is not a GPW-signed loss (gpw_sign=False).
    for seed in range(50):
        rng = np.random.default_rng(seed)
        X, y = rng.normal(size=(6, 3)), np.array([0, 0, 0, 1, 1, 2])
        r = gpwref.compute("fast_ap", X, y)
        same = y[:, None] == y[None, :]
        wrong = np.argwhere(((r.grad_sim > 1e-3) & same) | ((r.grad_sim < -1e-3) & ~same))
        if len(wrong):
            i, j = wrong[0]
            up, down = r.sim.copy(), r.sim.copy()
            up[i, j] += 1e-6
            down[i, j] -= 1e-6
            fd = (gpwref.from_similarity("fast_ap", up, y).loss - gpwref.from_similarity("fast_ap", down, y).loss) / 2e-6
            assert fd == pytest.approx(r.grad_sim[i, j], rel=1e-5)
            return
    pytest.fail("no sign violation found")


def test_fast_ap_official_backward_is_n_alive_over_two_times_the_gradient():
    # catalog.md section 3 item 13: the official hand-written backward returns (N'/2) dL/dX.
    from verification.refs.fast_ap import _OfficialFastAP

    rng = np.random.default_rng(2)
    X = rng.normal(size=(8, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 3])  # anchor 7 has no positive: N' = 7
    ours = gpwref.compute("fast_ap", X, y, normalize=False, kink_slope="left")
    Xt = torch.tensor(X, requires_grad=True)
    value = _OfficialFastAP.apply(Xt, torch.as_tensor(y), 10, 1.0)
    value.backward()
    assert value.item() == pytest.approx(ours.loss, rel=1e-13)
    assert ours.extras["official_backward_scale"] == 3.5
    np.testing.assert_allclose(Xt.grad.numpy(), 3.5 * ours.grad_emb, rtol=1e-10, atol=1e-14)


def test_fast_ap_duplicates_sit_at_distance_zero():
    # 1 - S of a copy is a few ulps either way; within 64 ulps it is d = 0 (bin 0's centre), no weight.
    S = np.array([[1.0 - 2.0**-52, 0.3], [0.3, 1.0 + 2.0**-51]])
    r = gpwref.from_similarity("fast_ap", S, np.array([0, 1]), np.array([0, 1]))
    assert r.grad_sim[0, 0] == 0.0 and r.grad_sim[1, 1] == 0.0


# A kink with a tiny slope jump (issue 6's root cause). B = 10 (Delta = 0.4, t = d B/4 = 2.5 d), one
# anchor (class 0) against a reference set: negatives at S = 0, -1/16, 5/8, positives at S = -1/8, 3/8.
#   t: neg 5 (exactly bin 5's centre), neg 5.3125, neg 1.875, pos 5.625, pos 3.125.
#   h+ = (bin 3: 7/8, bin 4: 1/8, bin 5: 3/8, bin 6: 5/8), h- = (bin 1: 1/8, bin 2: 7/8, bin 5: 1 + 11/16,
#   bin 6: 5/16); H+_4 = 1, H_4 = 2, H+_5 = 11/8, H_5 = 65/16.
# For a negative, dL/dh-_m = (1/|P|) sum_{l >= m} T_l with T_l = h+_l H+_l / H_l^2, and dd/dS = -2, so
# G = -2 (1/2) sum_l (dL/dh-_l) K_l'(d) with K' = +-1/Delta = +-2.5 on the triangle's two sides:
#   from above in S (d from below): K_4' = -2.5, K_5' = +2.5:  G = -2.5 (-T_4) / 2 * 2 = 2.5 T_4
#       = 2.5 (1/8)(1)/4 = 5/64;
#   from below in S (d from above): K_5' = -2.5, K_6' = +2.5:  G = 2.5 T_5 = 2.5 (3/8)(11/8)/(65/16)^2 = 66/845.
# "left" takes the first (the slope from below in d); "zero" takes 0 (torch's |x|'(0) = relu'(0) = 0).
# The two one-sided slopes differ by 5/64 - 66/845 = 1.8e-5, i.e. 3.4e-5 of max|G| (0.539): the generic
# harness's kink detector (a jump of G above 1e-3 max|G|) does not see it, so it compared the central
# difference there -- the mean of the two slopes, 9e-6 (1.7e-5 max|G|) from "left" and 0.078 from
# "zero" -- against the fd tolerance 1e-6. verification/refs/fast_ap.py skips a step that crosses the
# grid (its regime is each pair's grid cell floor(t)) and compares every other entry.
FAST_AP_KINK_S = np.array([[0.0, -0.125, -0.0625, 0.375, 0.625]])
FAST_AP_KINK_LABELS = (np.array([0]), np.array([1, 0, 1, 0, 1]))


def _one_sided_slope(S, labels, ref_labels, entry, step, **hyper):
    """Richardson-extrapolated one-sided difference of gpwref's value along +step (error O(step^2))."""
    def at(k):
        moved = S.copy()
        moved[entry] += k * step
        return gpwref.from_similarity("fast_ap", moved, labels, ref_labels, **hyper).loss

    base = at(0)
    return 2 * (at(1) - base) / step - (at(2) - base) / (2 * step)


def test_fast_ap_kink_with_a_tiny_slope_jump():
    y, yr = FAST_AP_KINK_LABELS
    left = gpwref.from_similarity("fast_ap", FAST_AP_KINK_S, y, yr, kink_slope="left")
    zero = gpwref.from_similarity("fast_ap", FAST_AP_KINK_S, y, yr)
    assert left.grad_sim[0, 0] == pytest.approx(5 / 64, rel=1e-14)
    assert zero.grad_sim[0, 0] == 0.0
    # "left" is the exact one-sided derivative from above in S; the other side is 66/845.
    assert _one_sided_slope(FAST_AP_KINK_S, y, yr, (0, 0), 1e-5) == pytest.approx(5 / 64, rel=1e-8)
    assert _one_sided_slope(FAST_AP_KINK_S, y, yr, (0, 0), -1e-5) == pytest.approx(66 / 845, rel=1e-8)
    scale = np.abs(left.grad_sim).max()
    assert (5 / 64 - 66 / 845) / scale < 1e-3  # below the generic detector's threshold
    assert (5 / 64 - 66 / 845) / 2 / scale > 1e-5  # a central difference there is off by far more than 1e-6


def test_fast_ap_fd_check_skips_grid_crossings_and_still_fails_a_wrong_gradient():
    from types import SimpleNamespace

    from verification.refs import fast_ap as ref
    from verification.harness import frozen_fd_error

    y, yr = FAST_AP_KINK_LABELS
    pos, neg = yr[None, :] == y[:, None], yr[None, :] != y[:, None]
    S = FAST_AP_KINK_S
    for kink_slope in ("zero", "left"):
        params = {"num_bins": 10, "kink_slope": kink_slope}
        r = gpwref.from_similarity("fast_ap", S, y, yr, kink_slope=kink_slope)
        ours = SimpleNamespace(sim=S, grad_sim=r.grad_sim)
        err, compared = frozen_fd_error(ref.REFS, "paper", params, ours, pos, neg)
        assert compared == 4 and err < 1e-8  # every entry but the one on bin 5's centre
        # the regime is what protects the kink: without it the comparison at the kink fails
        cells = ref.grid_cells
        try:
            ref.grid_cells = lambda *args: ()
            assert frozen_fd_error(ref.REFS, "paper", params, ours, pos, neg)[0] > 1e-5
        finally:
            ref.grid_cells = cells
        # and a wrong weight away from the grid is still caught: 1% off on the positive at t = 3.125
        wrong = SimpleNamespace(sim=S, grad_sim=r.grad_sim * np.where(np.arange(5) == 3, 1.01, 1.0))
        assert frozen_fd_error(ref.REFS, "paper", params, wrong, pos, neg)[0] > 1e-3


# An exact bin centre seen by the real codes. B = 4 (Delta = 1, z_l = l: torch.linspace is exact), rows
# a = (1,1,1,1,0)/2 and b = (1,1,1,-1,0)/2 of one class: a.b = 1/2, so d = 1 = z_1 exactly, also in
# PML's cdist(a, b)**2 = 1**2. Rows c near a and e near b keep bin 0 filled for both anchors (the
# official backward's 0/0 -> 0 is exact only there). PML (autograd) must give gpwref's "zero" rule and
# the official hand-written backward (divided by its N'/2, N' = 6) its "left" rule, and the two rules
# must differ on this batch (else the comparison could not tell them apart).
def test_fast_ap_exact_bin_centre_in_pml_and_the_official_code():
    from pytorch_metric_learning.losses import FastAPLoss

    from verification.refs.fast_ap import _OfficialFastAP

    rng = np.random.default_rng(0)
    a, b = np.array([0.5, 0.5, 0.5, 0.5, 0.0]), np.array([0.5, 0.5, 0.5, -0.5, 0.0])
    X = np.stack([a, b, a + 0.15 * rng.normal(size=5), b + 0.15 * rng.normal(size=5), *rng.normal(size=(3, 5))])
    X[2:] /= np.linalg.norm(X[2:], axis=1, keepdims=True)
    y = np.array([0, 0, 1, 0, 1, 1, 2])
    # PML normalises the (unit) rows, so its dX holds the normalisation's projection; the official
    # code takes the rows as given (normalize=False).
    zero, left = (gpwref.compute("fast_ap", X, y, num_bins=4, kink_slope=rule) for rule in ("zero", "left"))
    assert 2 - 2 * zero.sim[0, 1] == 1.0 and zero.grad_sim[0, 1] == 0.0 and zero.grad_sim[1, 0] == 0.0
    assert left.grad_sim[0, 1] != 0.0 and left.grad_sim[1, 0] != 0.0

    Xt = torch.tensor(X, requires_grad=True)
    value = FastAPLoss(num_bins=4)(Xt, torch.as_tensor(y))
    value.backward()
    theirs = Xt.grad.numpy()
    assert value.item() == pytest.approx(zero.loss, rel=1e-13)
    assert np.abs(theirs - zero.grad_emb).max() < 1e-12 * np.abs(theirs).max()
    assert np.abs(theirs - left.grad_emb).max() > 1e-2 * np.abs(theirs).max()

    zero, left = (gpwref.compute("fast_ap", X, y, num_bins=4, normalize=False, kink_slope=rule) for rule in ("zero", "left"))
    Xt = torch.tensor(X, requires_grad=True)
    value = _OfficialFastAP.apply(Xt, torch.as_tensor(y), 4, 1.0)
    value.backward()
    theirs = Xt.grad.numpy() / left.extras["official_backward_scale"]
    assert left.extras["official_backward_scale"] == 3.0
    assert value.item() == pytest.approx(left.loss, rel=1e-13)
    assert np.abs(theirs - left.grad_emb).max() < 1e-12 * np.abs(theirs).max()
    assert np.abs(theirs - zero.grad_emb).max() > 1e-2 * np.abs(theirs).max()


# ---------------------------------------------------------------------------------------------
# Smooth-AP. One query (class 0), a positive at s_p and a negative at s_n (reference set):
# R_P = 1, R_N = g = sigmoid((s_n - s_p)/tau); 1 - AP = g / (1 + g). d/ds_n = g' / (1 + g)^2 with
# g' = g (1 - g) / tau, and d/ds_p = -g' / (1 + g)^2.


def test_smooth_ap_hand_derived():
    tau, sp, sn = 0.1, 0.5, 0.4
    g = sigmoid((sn - sp) / tau)
    r = gpwref.from_similarity("smooth_ap", np.array([[sp, sn]]), np.array([0]), np.array([0, 1]), temperature=tau)
    assert r.loss == pytest.approx(g / (1 + g), rel=1e-14)
    w = g * (1 - g) / tau / (1 + g) ** 2
    np.testing.assert_allclose(r.grad_sim, [[-w, w]], rtol=1e-13)


def test_smooth_ap_query_in_its_own_ranking_set():
    # include_query adds the query (score 1) as a relevant item: P' = {p, q}, Omega' = {p, n, q}.
    #   R_P(p) = 1 + G(1 - s_p), R_N(p) = G(s_n - s_p); R_P(q) = 1 + G(s_p - 1), R_N(q) = G(s_n - 1)
    #   1 - AP = (1/2) [R_N(p) / (R_P(p) + R_N(p)) + R_N(q) / (R_P(q) + R_N(q))].
    tau, sp, sn = 0.1, 0.5, 0.4
    G = lambda x: sigmoid(x / tau)  # noqa: E731
    want = 0.5 * (G(sn - sp) / (1 + G(1 - sp) + G(sn - sp)) + G(sn - 1) / (1 + G(sp - 1) + G(sn - 1)))
    r = gpwref.from_similarity("smooth_ap", np.array([[sp, sn]]), np.array([0]), np.array([0, 1]), temperature=tau, include_query=True)
    assert r.loss == pytest.approx(want, rel=1e-14)


def test_smooth_ap_pml_groups_the_batch_in_blocks_of_the_class_count():
    # PML 2.9 SmoothAPLoss views the batch as (samples per class) blocks of C consecutive items (C =
    # number of classes). With 2 classes x 3 samples it ranks with the blocks {0,1}, {2,3}, {4,5} as
    # classes: its value equals gpwref's on those labels, and differs from the true class structure.
    from pytorch_metric_learning.losses import SmoothAPLoss

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    y = np.array([0, 0, 0, 1, 1, 1])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = SmoothAPLoss(temperature=0.01)(torch.tensor(X), torch.as_tensor(y)).item()
    finally:
        torch.set_default_dtype(previous)
    as_blocks = gpwref.compute("smooth_ap", X, np.array([0, 0, 1, 1, 2, 2]), profile="pml").loss
    as_classes = gpwref.compute("smooth_ap", X, y, profile="pml").loss
    assert got == pytest.approx(as_blocks, rel=1e-12)
    assert abs(got - as_classes) > 1e-3


def test_smooth_ap_official_rules_on_a_class_sorted_batch():
    from verification.refs import smooth_ap as ref

    b = ref.grouped_batch(np.random.default_rng(4), square=False)
    X = torch.tensor(b.embeddings, requires_grad=True)
    official = ref.official(X, b.labels, None, None, None, True, temperature=0.01, include_query=True, sigmoid_clamp=50.0)
    ours = gpwref.compute("smooth_ap", b.embeddings, b.labels, include_query=True, sigmoid_clamp=50.0)
    official.backward()
    assert official.item() == pytest.approx(ours.loss, abs=1e-13)
    np.testing.assert_allclose(X.grad.numpy(), ours.grad_emb, rtol=1e-9, atol=1e-13)
    plain = gpwref.compute("smooth_ap", b.embeddings, b.labels)
    assert abs(plain.loss - ours.loss) > 1e-3  # the query in its own set matters (catalog item 14)


# ---------------------------------------------------------------------------------------------
# PNP. One query, positives at s1, s2 and one negative at s_n: R(p) = sigmoid((s_n - s_p)/a).
# Variant O: L = (R1 + R2)/2; G_n = (R1' + R2')/2, G_p = -R_p'/2 with R' = R (1 - R)/a.


def test_pnp_hand_derived_variants():
    a, s1, s2, sn = 0.1, 0.5, 0.3, 0.35
    S = np.array([[s1, s2, sn]])
    y, yr = np.array([0]), np.array([0, 0, 1])
    R = np.array([sigmoid((sn - s1) / a), sigmoid((sn - s2) / a)])
    dR = R * (1 - R) / a
    o = gpwref.from_similarity("pnp", S, y, yr, anneal=a)
    assert o.loss == pytest.approx(R.mean(), rel=1e-14)
    np.testing.assert_allclose(o.grad_sim, [[-dR[0] / 2, -dR[1] / 2, dR.sum() / 2]], rtol=1e-13)
    dq = gpwref.from_similarity("pnp", S, y, yr, anneal=a, variant="Dq", alpha=2.0)
    assert dq.loss == pytest.approx(np.mean(1 - (1 + R) ** -2.0), rel=1e-13)
    ib = gpwref.from_similarity("pnp", S, y, yr, anneal=a, variant="Ib", b=2.0)
    assert ib.loss == pytest.approx(np.mean((2 * R - np.log1p(2 * R)) / 4), rel=1e-13)
    # Ib stays accurate for tiny R (x - log1p(x) by its series): R ~ 1e-9 -> F ~ R^2 / 2.
    tiny = gpwref.from_similarity("pnp", np.array([[0.9, 0.7]]), y, np.array([0, 1]), anneal=0.01, variant="Ib", b=2.0)
    r = sigmoid((0.7 - 0.9) / 0.01)
    assert tiny.loss == pytest.approx((2 * r) ** 2 / 2 / 4 - (2 * r) ** 3 / 3 / 4, rel=1e-12)


def test_pnp_pml_counts_the_query_only_when_it_has_a_positive():
    from pytorch_metric_learning.losses import PNPLoss

    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, 3))
    y = np.array([0, 0, 1, 2, 3])  # three singletons: PML sets the diagonal only for anchors 0 and 1
    got = PNPLoss()(torch.tensor(X), torch.as_tensor(y)).item()
    ours = gpwref.compute("pnp", X, y, profile="pml")
    assert ours.loss == pytest.approx(got, rel=1e-12)
    assert not ours.pos_used[2:].any()


# ---------------------------------------------------------------------------------------------
# RS@k. One query, a positive at s_p and a negative at s_n, K = (1,): r = 1 + g1, g1 =
# sigmoid((s_n - s_p)/t1); R_1 = sigmoid((1 - r)/t2), n_1 = 1, L = 1 - R_1 = sigmoid((r - 1)/t2).
# w = dL/dr = sigmoid'((1 - r)/t2)/t2 ... = R_1 (1 - R_1)/t2; G_n = w g1', G_p = -w g1', g1' = g1 (1 - g1)/t1.


def test_recall_at_k_hand_derived():
    t1, t2, sp, sn = 0.1, 1.0, 0.5, 0.4
    g1 = sigmoid((sn - sp) / t1)
    r = 1 + g1
    R1 = sigmoid((1 - r) / t2)
    res = gpwref.from_similarity("recall_at_k", np.array([[sp, sn]]), np.array([0]), np.array([0, 1]), k_values=(1,), tau1=t1, tau2=t2)
    assert res.loss == pytest.approx(1 - R1, rel=1e-14)
    w = R1 * (1 - R1) / t2 * g1 * (1 - g1) / t1
    np.testing.assert_allclose(res.grad_sim, [[-w, w]], rtol=1e-13)


def test_recall_at_k_simix_is_the_loss_on_explicitly_mixed_embeddings():
    # SiMix = RS@k on the batch plus a x_i + (1 - a) x_j for every same-class pair i < j. Build those
    # rows by hand, run plain RS@k on the extended batch, and chain its G back: G = offdiag(M^T G_E M).
    rng = np.random.default_rng(7)
    X = rng.normal(size=(5, 3))
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    y = np.array([0, 0, 0, 1, 1])
    a = 0.3
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4)]
    M = np.vstack([np.eye(5)] + [a * np.eye(5)[i] + (1 - a) * np.eye(5)[j] for i, j in pairs])
    E = M @ U
    ext_y = np.concatenate([y, [0, 0, 0, 1]])
    plain = gpwref.from_similarity("recall_at_k", E @ E.T, ext_y)
    mixed = gpwref.compute("recall_at_k", X, y, simix=a)
    assert mixed.loss == pytest.approx(plain.loss, rel=1e-13)
    chained = M.T @ plain.grad_sim @ M
    np.fill_diagonal(chained, 0.0)
    np.testing.assert_allclose(mixed.grad_sim, chained, rtol=1e-12, atol=1e-15)
    with pytest.raises(gpwref.GpwrefError, match="simix"):
        gpwref.compute("recall_at_k", X, y, simix=a, ref=X, ref_labels=y)


def test_recall_at_k_official_rules_with_simix():
    # catalog.md section 3 items 14-15: query in every rank sum, clamped sigmoids, recall capped at k,
    # SiMix rows inserted after each class group (official order), enlarged batch as the divisor.
    from verification.refs import recall_at_k as ref

    b = ref.simix_batch(np.random.default_rng(3))
    hyper = dict(k_values=(1, 2, 4), include_query=True, sigmoid_clamp=50.0, recall_cap=True, simix=0.3)
    X = torch.tensor(b.embeddings, requires_grad=True)
    official = ref.official(X, b.labels, None, None, None, True, tau1=0.01, tau2=1.0, **hyper)
    official.backward()
    ours = gpwref.compute("recall_at_k", b.embeddings, b.labels, **hyper)
    assert official.item() == pytest.approx(ours.loss, abs=1e-13)
    np.testing.assert_allclose(X.grad.numpy(), ours.grad_emb, rtol=1e-9, atol=1e-13)
    paper = gpwref.compute("recall_at_k", b.embeddings, b.labels, k_values=(1, 2, 4), simix=0.3)
    assert abs(paper.loss - ours.loss) > 1e-4


# RS@k on a tied one-class batch: S all 1, m = 3, K = (1,), tau1 = 0.01, tau2 = 1, no query item.
# Each query has 2 positives and no negative, both at score 1: r(p) = 1 + sigmoid(0) = 1.5.
# |P| = 2 > k = 1, so l_q = 1 - R_1 with R_1 = 2 sigmoid((1 - 1.5)/1): L = 1 - 2 sigmoid(-1/2).
# w_p = dl/dr(p) = sigmoid'(-1/2) = sigmoid(-1/2) sigmoid(1/2), sigma1'(0) = 1/(4 tau1) = 25, and
# G_qj = w sigma1'(0) (pushed: raising s_j raises the other positive's rank) - w sigma1'(0) (pulled:
# raising s_j lowers its own rank) = 0
# exactly, over N' = 3: a difference of two sums of size 25 w / 3 each, so round-off is measured
# against 2 * 25 w / 3 (what verification/refs/recall_at_k.py: scales returns as the G floor).


def test_recall_at_k_tied_one_class_batch_cancels_to_zero():
    from verification.refs import recall_at_k as ref

    X = np.tile([[1.0, 0.0]], (3, 1))  # a unit row three times: S = 1 exactly
    y = np.array([0, 0, 0])
    hyper = dict(k_values=(1,), tau1=0.01, tau2=1.0)
    res = gpwref.compute("recall_at_k", X, y, **hyper)
    assert np.all(res.sim == 1.0)
    assert res.loss == pytest.approx(1 - 2 * sigmoid(-0.5), rel=1e-14)
    w = sigmoid(-0.5) * sigmoid(0.5)
    term = 25 * w / 3
    assert np.max(np.abs(res.grad_sim)) <= 4 * 2.0**-52 * term
    params = gpwref.catalog.resolve_hyper(gpwref.get_entry("recall_at_k"), "paper", hyper)
    pos = ~np.eye(3, dtype=bool)
    floors = ref.scales(params, res, pos, np.zeros((3, 3), dtype=bool))
    assert floors["G"] == pytest.approx(2 * term, rel=1e-14)


# RS@k's recall cap. One query: three positives tied at 1, a negative at -1; tau1 = 1, tau2 = 100,
# K = (1, 4). r(p) = 1 + 2 sigmoid(0) + sigmoid(-2) = 2 + g, g = sigmoid(-2).
# k = 1: R_1 = 3 sigmoid((1 - r)/100) = 3 sigmoid(-0.0112) ~ 1.49 > 1: capped, recall 1, no term.
# k = 4: |P| = 3 <= 4, n_4 = 3: 1 - R_4/3 = sigmoid((r - 4)/100) (the mean over the 3 equal positives).
# L = sigmoid((r - 4)/100) / 2 (|K| = 2), w = dL/dr(p) = (1/2)(1/3) sigmoid'((4 - r)/100) / 100.
# A positive j: pushed by the other two's ranks (w sigma'(0) each), pulled by its own rank
# (w (2 sigma'(0) + sigma'(-2))): G_j = -w sigma'(-2); the negative: G_n = 3 w sigma'(-2),
# sigma'(x) = sigmoid(x) sigmoid(-x). Without the cap the k = 1 term is 1 - R_1 (n_1 = 1), adding
# w1 = (1/2) sigmoid'((1 - r)/100) / 100 to every w_p.


def test_recall_at_k_recall_cap_drops_the_capped_k():
    S = np.array([[1.0, 1.0, 1.0, -1.0]])
    query, ref_labels = np.array([0]), np.array([0, 0, 0, 1])

    def dsig(x):
        return sigmoid(x) * sigmoid(-x)

    g = sigmoid(-2.0)
    r = 2 + g
    hyper = dict(k_values=(1, 4), tau1=1.0, tau2=100.0)
    assert 3 * sigmoid((1 - r) / 100) > 1  # the cap binds for k = 1
    capped = gpwref.from_similarity("recall_at_k", S, query, ref_labels, recall_cap=True, **hyper)
    assert capped.loss == pytest.approx(sigmoid((r - 4) / 100) / 2, rel=1e-14)
    w = dsig((4 - r) / 100) / 100 / 6
    np.testing.assert_allclose(capped.grad_sim, [[-w * dsig(-2), -w * dsig(-2), -w * dsig(-2), 3 * w * dsig(-2)]], rtol=1e-13)
    free = gpwref.from_similarity("recall_at_k", S, query, ref_labels, recall_cap=False, **hyper)
    assert free.loss == pytest.approx((1 - 3 * sigmoid((1 - r) / 100)) / 2 + sigmoid((r - 4) / 100) / 2, rel=1e-14)
    w_all = w + dsig((1 - r) / 100) / 100 / 2
    np.testing.assert_allclose(free.grad_sim, [[-w_all * dsig(-2)] * 3 + [3 * w_all * dsig(-2)]], rtol=1e-13)


# The floors of verification/refs/recall_at_k.py must not blind its checks: a loss whose slopes are
# off by 0.1% (G off by ~0.2%, the value exact) fails autograd, loop and finite differences on a
# plain batch, and autograd and loop on a one-class batch with duplicated rows (large floors).


@pytest.mark.parametrize("knobs", [{}, {"one_class": True, "duplicates": True}])
def test_recall_at_k_checks_catch_a_wrong_slope(monkeypatch, knobs):
    from gpwref.losses import recall_at_k as module
    from gpwref.testing import make_batch
    from verification.harness import check_case

    honest = module.sigmoid_and_slope

    def off_by_a_little(x, temperature, clamp):
        sig, slope = honest(x, temperature, clamp)
        return sig, slope * 1.001

    batch = make_batch(np.random.default_rng(5), m=6, d=3, **knobs)
    assert not check_case("recall_at_k", "paper", {}, batch).failures()
    monkeypatch.setattr(module, "sigmoid_and_slope", off_by_a_little)
    failed = set(check_case("recall_at_k", "paper", {}, batch, fd=not knobs).failures())
    assert {"autograd:G", "loop:G"} <= failed
    if not knobs:
        assert "fd:G" in failed


# The catalog's official variant (tau2 = 1) almost never lets R_k exceed k (with sharp ranks
# 1, 2, 3, ... R_k = k - 1/2 + sum_{j >= k} sigmoid(-j) < k), so the cap's branch is exercised
# here: with tau2 = 30 every sigmoid((k - r)/tau2) is near 1/2 and R_1 > 1 once a query has three
# positives. Every check passes, finite differences skipping steps that switch the cap.


def test_recall_at_k_checks_pass_where_the_cap_binds():
    from gpwref.testing import make_batch
    from verification.harness import check_case

    hyper = dict(recall_cap=True, tau2=30.0, k_values=(1, 2))
    binds = 0
    for seed in range(4):
        batch = make_batch(np.random.default_rng(seed), m=(5, 8), d=3, singletons=False)
        report = check_case("recall_at_k", "paper", hyper, batch)
        assert not report.failures(), {k: report.errors[k] for k in report.failures()}
        capped = gpwref.compute("recall_at_k", batch.embeddings, batch.labels, **batch.compute_kwargs(), **hyper)
        free = gpwref.compute("recall_at_k", batch.embeddings, batch.labels, **batch.compute_kwargs(), **{**hyper, "recall_cap": False})
        binds += capped.loss != free.loss  # the cap only ever removes terms with R_k > k
    assert binds > 0
