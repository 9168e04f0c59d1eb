"""circle: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.testing import Batch
from gpwref_verification.harness import check_case

from ._helpers import HAND_S, HAND_S_Y as HAND_Y, _pml, _t, angles_to_rows as _rows


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_circle_hand_derived_both_reductions():
    # m = 0.25, gamma = 2.  Anchor 0: positive 1, a = 1.25 - 0.8 = 0.45, z = -2 * 0.45 * (0.8 - 0.75) = -0.045;
    #   negative 2, a = 0.1 + 0.25 = 0.35, z = 2 * 0.35 * (0.1 - 0.25) = -0.105; x0 = -0.15.
    # Anchor 1: positive 0 as above (z = -0.045); negative 2 at S = -0.5 < -m: a = 0, z = 0; x1 = -0.045.
    # Anchor 2: no positive -> 0.
    # "mean": L = (sp(x0) + sp(x1)) / 3; G_01 = -(1/3) 2 0.45 sig(x0), G_02 = (1/3) 2 0.35 sig(x0),
    #   G_10 = -(1/3) 2 0.45 sig(x1), G_12 = 0 (a = 0, yet it sits in B with exp(0) = 1).
    x0, x1 = -0.15, -0.045
    for reduction, c in (("mean", 1 / 3), ("avg_nonzero", 1 / 2)):
        r = gpwref.from_similarity("circle", HAND_S, HAND_Y, m=0.25, gamma=2.0, reduction=reduction)
        assert r.loss == pytest.approx(c * (_softplus(x0) + _softplus(x1)), rel=1e-14)
        want = np.zeros((3, 3))
        want[0, 1] = -c * 2 * 0.45 * _sigmoid(x0)
        want[0, 2] = c * 2 * 0.35 * _sigmoid(x0)
        want[1, 0] = -c * 2 * 0.45 * _sigmoid(x1)
        np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=0)
        assert r.neg_used[1, 2] and r.grad_sim[1, 2] == 0.0


def test_circle_undetached_gradient_is_the_derivative_and_breaks_the_sign_rule():
    # detach_factors=False: z_n = gamma (S + m)(S - m) = gamma (S^2 - m^2), dz/dS = 2 gamma S < 0 for
    # -m < S < 0: a negative there gets a negative weight. Anchor 0 below has its negative at S = -0.1.
    S = np.array([[1.0, 0.8, -0.1], [0.8, 1.0, 0.3], [-0.1, 0.3, 1.0]])
    kw = dict(m=0.25, gamma=2.0, reduction="mean", detach_factors=False)
    r = gpwref.from_similarity("circle", S, HAND_Y, **kw)
    assert r.grad_sim[0, 2] < 0
    h = 1e-6
    for i, j in [(0, 1), (0, 2), (1, 0), (1, 2)]:
        up, down = S.copy(), S.copy()
        up[i, j] += h
        down[i, j] -= h
        fd = (gpwref.from_similarity("circle", up, HAND_Y, **kw).loss - gpwref.from_similarity("circle", down, HAND_Y, **kw).loss) / (2 * h)
        assert fd == pytest.approx(r.grad_sim[i, j], rel=1e-7, abs=1e-10)
    # the published (detached) weight of that negative is positive
    assert gpwref.from_similarity("circle", S, HAND_Y, m=0.25, gamma=2.0).grad_sim[0, 2] > 0


def test_circle_pml_softplus_threshold_is_modelled():
    # torch.nn.Softplus(threshold=20) is linear above 20. Anchor 0 below: a positive at S = 0.6
    # (z = -80 * 0.8 * 0 = 0) and a negative at S = c with 80 (c^2 - 0.16) = 20.3, so x0 = 20.3:
    # PML's l_0 = 20.3 exactly, and its weights carry the factor 1 instead of sigma(20.3).
    c = math.sqrt(20.3 / 80 + 0.16)
    X = _rows(0, math.degrees(math.acos(0.6)), math.degrees(math.acos(c)))
    y = np.array([0, 0, 1])
    pml_value = _pml("CircleLoss", m=0.4, gamma=80)(_t(X), torch.as_tensor(y))
    ours = gpwref.compute("circle", X, y, profile="pml")
    exact = gpwref.compute("circle", X, y, profile="pml", softplus_threshold=None)
    assert ours.loss == pytest.approx(pml_value.item(), rel=1e-13)
    assert abs(exact.loss - pml_value.item()) > 1e-11  # log1p(exp(-20.3)) / 2 ~ 7.6e-10 apart
    X_t = _t(X)
    _pml("CircleLoss", m=0.4, gamma=80)(X_t, torch.as_tensor(y)).backward()
    np.testing.assert_allclose(ours.grad_emb, X_t.grad.numpy(), rtol=1e-12, atol=1e-14)
    assert np.max(np.abs(exact.grad_emb - X_t.grad.numpy())) > 1e-10


def test_circle_reductions_fast_reid_versus_pml():
    # docs/losses.md#circle: fast-reid averages over all m rows, PML over rows with a loss.
    # HAND_Y has one anchor without positives, so the two differ by the factor 3/2 exactly.
    X = _rows(0, 40, 150)
    paper = gpwref.compute("circle", X, HAND_Y, reduction="mean", softplus_threshold=20.0)
    pml = gpwref.compute("circle", X, HAND_Y, profile="pml")
    assert pml.loss == pytest.approx(1.5 * paper.loss, rel=1e-14)
    report = check_case("circle", "paper", {"reduction": "mean", "softplus_threshold": 20.0},
                        Batch(X, HAND_Y))
    assert "real:fast-reid pairwise_circleloss rules value" in report.errors and not report.failures()


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("circle", {"gamma": 0.0}, "gamma"),
        ("circle", {"reduction": "sum"}, "reduction"),
        ("circle", {"detach_factors": 1}, "detach_factors"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        gpwref.compute(loss, _rows(0, 60, 180), HAND_Y, **hyper)
    assert info.value.argument == argument
