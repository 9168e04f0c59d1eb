"""pnp: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.losses import pnp as pnp_module
from gpwref.testing import make_batch
from gpwref_verification.common import NotApplicable
from gpwref_verification.harness import check_case

from ._helpers import sigmoid, sigmoid_slope


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



# PNP variant Ds, one query, positives at s1, s2 and negatives at n1, n2 (reference set):
#   R(p) = g(n1 - s_p) + g(n2 - s_p), F = log(1 + R), F' = 1 / (1 + R), L = (F(R1) + F(R2)) / 2
#   G_nk = (1/2) sum_p F'(R_p) g'(nk - s_p),   G_p = -(1/2) F'(R_p) (g'(n1 - s_p) + g'(n2 - s_p)).


def test_pnp_two_by_two_hand_derived_ds():
    a, s1, s2, n1, n2 = 0.05, 0.6, 0.3, 0.4, 0.2
    g = lambda x: sigmoid(x / a)  # noqa: E731
    gp = lambda x: sigmoid_slope(x, a)  # noqa: E731
    R = [g(n1 - s) + g(n2 - s) for s in (s1, s2)]
    dF = [1 / (1 + r) for r in R]
    want_value = (math.log1p(R[0]) + math.log1p(R[1])) / 2
    want = [
        -0.5 * dF[0] * (gp(n1 - s1) + gp(n2 - s1)),
        -0.5 * dF[1] * (gp(n1 - s2) + gp(n2 - s2)),
        0.5 * (dF[0] * gp(n1 - s1) + dF[1] * gp(n1 - s2)),
        0.5 * (dF[0] * gp(n2 - s1) + dF[1] * gp(n2 - s2)),
    ]
    r = gpwref.from_similarity("pnp", np.array([[s1, s2, n1, n2]]), np.array([0]), np.array([0, 0, 1, 1]), anneal=a, variant="Ds")
    assert r.loss == pytest.approx(want_value, rel=1e-14)
    np.testing.assert_allclose(r.grad_sim, [want], rtol=1e-13)


def test_pnp_query_as_its_own_positive_and_the_clamp():
    # include_query (PML): the query joins its positives with score 1. One query, positive at
    # s_p = 0.5, negative at s_n = 0.25, anneal 1/16 and clamp 4: (s_n - s_p)/a = -4 is on the clamp
    # (slope kept), (s_n - 1)/a = -12 is past it (sigmoid 1/(1 + e^4), slope 0). Variant O:
    #   L = (R(p) + R(q)) / 2 = (sigmoid(-4) + 1/(1 + e^4)) / 2 = sigmoid(-4)
    #   G_n = (1/2) sigmoid(-4) sigmoid(4) / a,  G_p = -G_n, and the query's constant score has none.
    a = 0.0625
    r = gpwref.from_similarity("pnp", np.array([[0.5, 0.25]]), np.array([0]), np.array([0, 1]), anneal=a,
                               include_query=True, sigmoid_clamp=4.0)
    assert r.loss == pytest.approx(sigmoid(-4.0), rel=1e-14)
    w = 0.5 * sigmoid(-4.0) * sigmoid(4.0) / a
    np.testing.assert_allclose(r.grad_sim, [[-w, w]], rtol=1e-13)


def test_pnp_pml_ib_gradient_is_round_off_on_a_separated_batch():
    # PML evaluates Ib as (b R - log(1 + b R)) / b^2, so autograd forms F'(R) = (1/b)(1 - 1/(1 + bR)),
    # which is exactly 0 once b R < 2^-53. Two classes 1 radian apart: every x = s_n - s_p is about
    # cos(1) - 1 = -0.46, inside the clamp (|x/a| = 46 < 50) and R ~ e^-46 ~ 1e-20. The exact weights
    # (F' = R/(1 + bR) ~ R) are tiny but not 0; PML's dX is 0, and the refs module declares PML not
    # applicable there rather than comparing round-off.
    from pytorch_metric_learning.losses import PNPLoss

    from gpwref_verification.refs import pnp as ref

    angles = np.array([0.0, 0.01, 1.0, 1.01])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 0, 1, 1])
    Xt = torch.tensor(X, requires_grad=True)
    PNPLoss(variant="Ib")(Xt, torch.as_tensor(y)).backward()
    assert not Xt.grad.any()
    ours = gpwref.compute("pnp", X, y, profile="pml", variant="Ib")
    assert ours.grad_sim[0, 2] > 0 and ours.grad_sim[0, 1] < 0
    with pytest.raises(NotApplicable):
        ref.pml(Xt, y, None, None, None, True, variant="Ib", b=2.0, alpha=1.0, anneal=0.01, include_query=True, sigmoid_clamp=50.0)
    # a batch with overlapping classes is compared as usual
    ref._require_resolvable_ib_gradient(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0]]), np.array([0, 0, 1, 1]), 2.0, 0.01)


def test_pnp_checks_catch_a_wrong_penalty_slope(monkeypatch):
    batch = make_batch(np.random.default_rng(5), m=(1, 9), d=(2, 5))
    assert not check_case("pnp", "paper", {"variant": "Ds"}, batch, fd=False).failures()
    exact = pnp_module.rank_penalty

    def off_by_1e4(R, variant, b, alpha):
        F, dF = exact(R, variant, b, alpha)
        return F, dF * (1 + 1e-4)

    monkeypatch.setattr(pnp_module, "rank_penalty", off_by_1e4)
    failed = set(check_case("pnp", "paper", {"variant": "Ds"}, batch, fd=True).failures())
    assert {"autograd:G", "loop:G", "fd:G"} <= failed
