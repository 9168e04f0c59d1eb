"""recall_at_k: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import sigmoid


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
    # docs/losses.md#recall_at_k: query in every rank sum, clamped sigmoids, recall capped at k,
    # SiMix rows inserted after each class group (official order), enlarged batch as the divisor.
    from gpwref_verification.refs import recall_at_k as ref

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
    from gpwref_verification.refs import recall_at_k as ref

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
    from gpwref_verification.harness import check_case

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
    from gpwref_verification.harness import check_case

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
