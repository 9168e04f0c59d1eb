"""ntxent: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import HAND_S_Y as HAND_Y, _pml, _t, angles_to_rows as _rows


def test_ntxent_hand_derived_both_denominators():
    # labels [0, 0, 0, 1], tau = 1; anchor 0's row: S01 = 0.5, S02 = 0.2, S03 = -0.3 (all rows below).
    S = np.array([[1, 0.5, 0.2, -0.3], [0.5, 1, 0.4, 0.1], [0.2, 0.4, 1, 0.0], [-0.3, 0.1, 0.0, 1.0]])
    y = np.array([0, 0, 0, 1])
    e = np.exp(S)
    K = 6  # ordered positive pairs among rows 0..2
    # "all": l_ip = log(sum_{a != i} e^S_ia) - S_ip; anchor 3 has no positive.
    want_all = sum(math.log(sum(e[i, a] for a in range(4) if a != i)) - S[i, p] for i in range(3) for p in range(3) if p != i) / K
    # PML: l_ip = log(e^S_ip + e^S_i3) - S_ip (its own positive and the anchor's negatives only)
    want_pml = sum(math.log(e[i, p] + e[i, 3]) - S[i, p] for i in range(3) for p in range(3) if p != i) / K
    r_all = gpwref.from_similarity("ntxent", S, y, temperature=1.0)
    r_pml = gpwref.from_similarity("ntxent", S, y, profile="pml", temperature=1.0)
    assert r_all.loss == pytest.approx(want_all, rel=1e-14)
    assert r_pml.loss == pytest.approx(want_pml, rel=1e-14)
    # weights of anchor 0 under PML: G_0p = -(1/K)(1 - pi_p), pi_p = e^S0p / (e^S0p + e^S03);
    # G_03 = (1/K) sum_p e^S03 / (e^S0p + e^S03)
    for p in (1, 2):
        assert r_pml.grad_sim[0, p] == pytest.approx(-(1 - e[0, p] / (e[0, p] + e[0, 3])) / K, rel=1e-13)
    assert r_pml.grad_sim[0, 3] == pytest.approx(sum(e[0, 3] / (e[0, p] + e[0, 3]) for p in (1, 2)) / K, rel=1e-13)
    # "all": G_0a = (1/K)(|P_0| pi_0a - [a in P_0]), pi over {1, 2, 3}
    total = e[0, 1] + e[0, 2] + e[0, 3]
    assert r_all.grad_sim[0, 1] == pytest.approx((2 * e[0, 1] / total - 1) / K, rel=1e-13)
    assert r_all.grad_sim[0, 3] == pytest.approx(2 * e[0, 3] / total / K, rel=1e-13)


def test_ntxent_pml_denominator_rule_against_pml():
    # docs/losses.md#ntxent: PML leaves the anchor's other positives out of the denominator.
    X = _rows(0, 30, 70, 200, 250)
    y = np.array([0, 0, 0, 1, 1])
    X_t = _t(X)
    value = _pml("NTXentLoss", temperature=0.5)(X_t, torch.as_tensor(y))
    value.backward()
    ours = gpwref.compute("ntxent", X, y, profile="pml", temperature=0.5)
    other = gpwref.compute("ntxent", X, y, profile="pml", temperature=0.5, denominator="all")
    assert ours.loss == pytest.approx(value.item(), rel=1e-13)
    np.testing.assert_allclose(ours.grad_emb, X_t.grad.numpy(), rtol=1e-11, atol=1e-14)
    assert abs(other.loss - value.item()) > 1e-3
    # the PML form obeys GPW's sign rule; "all" does not when an anchor has two positives
    assert np.all(ours.grad_sim[ours.pos_used] <= 0) and np.all(ours.grad_sim[ours.neg_used] >= 0)


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("ntxent", {"denominator": "others"}, "denominator"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        gpwref.compute(loss, _rows(0, 60, 180), HAND_Y, **hyper)
    assert info.value.argument == argument
