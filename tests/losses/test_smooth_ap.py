"""smooth_ap: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.losses import smooth_ap as smooth_ap_module
from gpwref.testing import make_batch
from gpwref_verification.harness import check_case

from ._helpers import sigmoid, sigmoid_slope


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
    from gpwref_verification.refs import smooth_ap as ref

    b = ref.grouped_batch(np.random.default_rng(4), square=False)
    X = torch.tensor(b.embeddings, requires_grad=True)
    official = ref.official(X, b.labels, None, None, None, True, temperature=0.01, include_query=True, sigmoid_clamp=50.0)
    ours = gpwref.compute("smooth_ap", b.embeddings, b.labels, include_query=True, sigmoid_clamp=50.0)
    official.backward()
    assert official.item() == pytest.approx(ours.loss, abs=1e-13)
    np.testing.assert_allclose(X.grad.numpy(), ours.grad_emb, rtol=1e-9, atol=1e-13)
    plain = gpwref.compute("smooth_ap", b.embeddings, b.labels)
    assert abs(plain.loss - ours.loss) > 1e-3  # the query in its own set matters (catalog item 14)



# Smooth-AP, one query (reference set), positives at s1, s2 and a negative at sn; g(x) = sigmoid(x/tau):
#   R_P(1) = 1 + g(s2 - s1), R_N(1) = g(sn - s1);  R_P(2) = 1 + g(s1 - s2), R_N(2) = g(sn - s2)
#   L = (1/2) [R_N(1) / R_A(1) + R_N(2) / R_A(2)],  R_A = R_P + R_N.
# With d(R_N / R_A) = (R_P dR_N - R_N dR_P) / R_A^2 and dg(a - b)/db = -g'(a - b):
#   dL/dsn = (1/2) [g'(sn - s1) R_P(1) / R_A(1)^2 + g'(sn - s2) R_P(2) / R_A(2)^2]
#   dL/ds1 = (1/2) [(-g'(sn - s1) R_P(1) + R_N(1) g'(s2 - s1)) / R_A(1)^2 - R_N(2) g'(s1 - s2) / R_A(2)^2]
# and dL/ds2 the same with 1 and 2 swapped.


def _two_positives(s1, s2, sn, tau):
    g = lambda x: sigmoid(x / tau)  # noqa: E731
    gp = lambda x: sigmoid_slope(x, tau)  # noqa: E731
    rp1, rn1 = 1 + g(s2 - s1), g(sn - s1)
    rp2, rn2 = 1 + g(s1 - s2), g(sn - s2)
    ra1, ra2 = rp1 + rn1, rp2 + rn2
    value = 0.5 * (rn1 / ra1 + rn2 / ra2)
    g1 = 0.5 * ((-gp(sn - s1) * rp1 + rn1 * gp(s2 - s1)) / ra1**2 - rn2 * gp(s1 - s2) / ra2**2)
    g2 = 0.5 * ((-gp(sn - s2) * rp2 + rn2 * gp(s1 - s2)) / ra2**2 - rn1 * gp(s2 - s1) / ra1**2)
    gn = 0.5 * (gp(sn - s1) * rp1 / ra1**2 + gp(sn - s2) * rp2 / ra2**2)
    return value, [g1, g2, gn]


def test_smooth_ap_two_positives_hand_derived_and_a_positive_pushed_away():
    # s1 = -0.4 sits above s2 = -0.5, both far under the negative (1.0): raising s1 costs positive 2
    # rank among the positives more than it gains for positive 1, so G_1 > 0 (gpw_sign is False).
    tau, s1, s2, sn = 0.1, -0.4, -0.5, 1.0
    value, want = _two_positives(s1, s2, sn, tau)
    r = gpwref.from_similarity("smooth_ap", np.array([[s1, s2, sn]]), np.array([0]), np.array([0, 0, 1]), temperature=tau)
    assert r.loss == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [want], rtol=1e-12)
    assert r.grad_sim[0, 0] > 0 and r.grad_sim[0, 2] > 0
    assert not gpwref.get_entry("smooth_ap").gpw_sign


def test_smooth_ap_tie_rule_duplicated_positives():
    # Tie rule: tied items rank half above each other, g(0) = 1/2 (no tie-break). Duplicated
    # positives at s = 0.5, negative at 0.4: R_P = 3/2 and R_N = g(-0.1) for both, so
    # L = R_N / (3/2 + R_N); in dL/ds1 the cross terms R_N g'(0) / R_A^2 cancel exactly, leaving
    # G_1 = G_2 = -(1/2)(3/2) g'(-0.1) / R_A^2 and G_n = (3/2) g'(-0.1) / R_A^2.
    tau, s, sn = 0.1, 0.5, 0.4
    rn = sigmoid((sn - s) / tau)
    ra = 1.5 + rn
    gp = sigmoid_slope(sn - s, tau)
    r = gpwref.from_similarity("smooth_ap", np.array([[s, s, sn]]), np.array([0]), np.array([0, 0, 1]), temperature=tau)
    assert r.loss == pytest.approx(rn / ra, rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-0.75 * gp / ra**2, -0.75 * gp / ra**2, 1.5 * gp / ra**2]], rtol=1e-12)
    assert r.grad_sim[0, 0] == r.grad_sim[0, 1]  # same expression on the same numbers


def test_smooth_ap_clamp_rule_at_and_past_the_clamp():
    # tau = 1/8, clamp c = 4, positive at 0.5; negatives at 0 (x/tau = -4: on the clamp, which keeps
    # its slope as torch.clamp does) and at -1/8 (x/tau = -5: past it, sigmoid frozen at 1/(1 + e^4),
    # slope 0). All numbers are exact in binary. R_P = 1, R_N = 2/(1 + e^4), L = R_N / (1 + R_N);
    # G_n1 = s' R_P / R_A^2 with s' = sigmoid(4) sigmoid(-4) / tau... evaluated at x/tau = -4:
    # sigmoid(-4) sigmoid(4) / tau; G_n2 = 0; G_p = -G_n1 (only n1 moves R_N).
    tau, c = 0.125, 4.0
    rn = 2.0 / (1.0 + math.exp(4.0))
    ra = 1.0 + rn
    slope = sigmoid(-4.0) * sigmoid(4.0) / tau
    r = gpwref.from_similarity("smooth_ap", np.array([[0.5, 0.0, -0.125]]), np.array([0]), np.array([0, 1, 1]),
                               temperature=tau, sigmoid_clamp=c)
    assert r.loss == pytest.approx(rn / ra, rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [[-slope / ra**2, slope / ra**2, 0.0]], rtol=1e-13, atol=0)


def test_smooth_ap_exact_increments_resolve_a_saturated_gradient():
    # One query, positive at 0.1 and negative at 0.9, tau = 0.01: L = g(0.8) / (1 + g(0.8)) ~ 1/2 but
    # G = +-g'(0.8) / (1 + g(0.8))^2 ~ e^-80 / tau / 4 ~ 4.5e-34. A float64 central difference only
    # sees round-off (~1e-10); the refs module's frozen_value (exact increments) recovers G.
    from gpwref_verification.refs import smooth_ap as ref

    tau, sp, sn = 0.01, 0.1, 0.9
    want = sigmoid_slope(sn - sp, tau) / (1 + sigmoid((sn - sp) / tau)) ** 2
    S = np.array([[sp, sn]])
    pos, neg = np.array([[True, False]]), np.array([[False, True]])
    hyper = dict(temperature=tau, include_query=False, sigmoid_clamp=None)
    h = 1e-6
    up, _ = ref.frozen_value(S + [[0, h]], S, pos, neg, "paper", **hyper)
    down, _ = ref.frozen_value(S - [[0, h]], S, pos, neg, "paper", **hyper)
    assert (up - down) / (2 * h) == pytest.approx(want, rel=1e-6)
    r = gpwref.from_similarity("smooth_ap", S, np.array([0]), np.array([0, 1]), temperature=tau)
    float_fd = (gpwref.from_similarity("smooth_ap", S + [[0, h]], np.array([0]), np.array([0, 1]), temperature=tau).loss
                - gpwref.from_similarity("smooth_ap", S - [[0, h]], np.array([0]), np.array([0, 1]), temperature=tau).loss) / (2 * h)
    assert r.grad_sim[0, 1] == pytest.approx(want, rel=1e-12)
    assert abs(float_fd - want) > 0.5 * want  # a float64 difference misses G entirely (here it is 0)



# The cancellation floor must not hide a wrong weight. A slope off by 1e-4 (relative; above the fd
# tolerance 1e-6, far above the 1e-12 of autograd and loop) on a plain batch; and on the
# duplicated-positives batch, whose floor (the terms, 0.34) is far above its max|G| (1.7e-9), a
# symmetry G'_kp = G'_pk broken by 1e-6: the tied terms then differ by 1e-6 of their size, which
# the floor (1e-12 of the terms) must still flag.


def test_smooth_ap_checks_catch_a_wrong_slope(monkeypatch):
    batch = make_batch(np.random.default_rng(5), m=(1, 9), d=(2, 5))
    assert not check_case("smooth_ap", "paper", {}, batch, fd=True).failures()
    exact = smooth_ap_module.sigmoid_and_slope

    def off_by_1e4(x, temperature, clamp):
        sig, slope = exact(x, temperature, clamp)
        return sig, slope * (1 + 1e-4)

    monkeypatch.setattr(smooth_ap_module, "sigmoid_and_slope", off_by_1e4)
    failed = set(check_case("smooth_ap", "paper", {}, batch, fd=True).failures())
    assert {"autograd:G", "loop:G", "fd:G"} <= failed


def test_smooth_ap_checks_catch_a_wrong_cross_term_under_the_floor(monkeypatch):
    batch = make_batch(np.random.default_rng(111), m=(1, 9), d=(2, 5), duplicates=True)
    assert "duplicates" in batch.cases
    assert not check_case("smooth_ap", "paper", {}, batch, fd=True).failures()
    exact = smooth_ap_module.sigmoid_and_slope

    def asymmetric(x, temperature, clamp):  # G'_kp != G'_pk by 1e-6 for k < p, ties included
        sig, slope = exact(x, temperature, clamp)
        return sig, slope * (1 + 1e-6 * np.triu(np.ones_like(x), 1))

    monkeypatch.setattr(smooth_ap_module, "sigmoid_and_slope", asymmetric)
    failed = set(check_case("smooth_ap", "paper", {}, batch, fd=True).failures())
    assert {"autograd:G", "loop:G"} <= failed



# The real codes take no labels and need class-sorted, equal class groups, which drawn batches
# rarely are: run every check (floors included) on such batches, so that PML's SmoothAPLoss (square
# layouts) and the official rules are compared here, not only skipped.


@pytest.mark.parametrize("seed", range(4))
def test_smooth_ap_every_check_with_the_real_codes_on_grouped_batches(seed):
    from gpwref_verification.refs import smooth_ap as ref

    for profile, hyper, real in [
        ("pml", {}, "real:pytorch-metric-learning dX"),
        ("paper", {"include_query": True, "sigmoid_clamp": 50.0}, "real:official Smooth-AP rules dX"),
    ]:
        batch = ref.grouped_batch(np.random.default_rng(seed), square=True)
        report = check_case("smooth_ap", profile, hyper, batch, fd=seed == 0)
        assert not report.failures(), {k: report.errors[k] for k in report.failures()}
        assert real in report.errors, report.skipped
