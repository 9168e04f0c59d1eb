"""margin: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref

from ._helpers import HAND_S_Y as HAND_Y, _pml, _t, angles_to_rows as _rows


def test_margin_hand_derived_pairs_and_triplets():
    # Unit rows at 0, 50, 180 degrees, labels [0, 0, 1]: D01 = 2 sin 25, D02 = 2, D12 = 2 sin 65.
    # beta = 1.2, margin = 0.2: positive terms [D01 - 1.0]_+ = 0 (D01 = 0.845); negative terms
    # [1.4 - D]_+ = 0 for D02 = 2 and D12 = 1.813. Nothing active: L = 0, Z = 0, dL/dbeta = 0.
    X = _rows(0, 50, 180)
    y = np.array([0, 0, 1])
    d12 = 2 * math.sin(math.radians(65))
    r = gpwref.compute("margin", X, y)
    assert r.loss == 0.0 and not r.pos_used.any() and not r.neg_used.any() and r.extras["grad_beta"] == 0.0
    # beta = 1.75: positives [D01 - 1.55]_+ = 0; negatives [1.95 - D]_+: D02 = 2 -> 0, D12 -> 1.95 - d12
    # for both (1,2) and (2,1). Pairs: Z = 2, L = 1.95 - d12, G_12 = G_21 = +1/(Z D12),
    # dL/dbeta = (2 active negatives - 0 active positives) / Z = 1.
    r = gpwref.compute("margin", X, y, beta=1.75)
    assert r.loss == pytest.approx(1.95 - d12, rel=1e-13)
    want = np.zeros((3, 3))
    want[1, 2] = want[2, 1] = 1 / (2 * d12)
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-12, atol=0)
    assert r.extras["grad_beta"] == pytest.approx(1.0, rel=1e-14)
    # Triplets (PML): anchor 1 has one positive and one negative -> its negative term counts |P_1| = 1
    # time; anchor 2 has no positive -> no triplet, so (2,1) drops out: Z = 1, L = 1.95 - d12, G_12 = 1/D12.
    t = gpwref.compute("margin", X, y, beta=1.75, pairing="triplets")
    assert t.loss == pytest.approx(1.95 - d12, rel=1e-13)
    assert t.grad_sim[2, 1] == 0.0 and t.grad_sim[1, 2] == pytest.approx(1 / d12, rel=1e-12)
    assert t.extras["grad_beta"] == pytest.approx(1.0, rel=1e-14)


def test_margin_beta_gradient_and_per_class_against_pml():
    # docs/losses.md#margin: PML enumerates all triplets; per-class betas, learnable, nu > 0.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(8, 4))
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    betas = {0: 1.1, 1: 1.3, 2: 1.25}
    loss_fn = _pml("MarginLoss", margin=0.2, nu=0.1, learn_beta=True, num_classes=3)
    loss_fn.beta = torch.nn.Parameter(torch.tensor([1.1, 1.3, 1.25], dtype=torch.float64))
    X_t = _t(X)
    value = loss_fn(X_t, torch.as_tensor(y))
    value.backward()
    ours = gpwref.compute("margin", X, y, profile="pml", beta=betas, nu=0.1)
    assert ours.loss == pytest.approx(value.item(), rel=1e-13)
    np.testing.assert_allclose(ours.grad_emb, X_t.grad.numpy(), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose([ours.extras["grad_beta"][c] for c in range(3)], loss_fn.beta.grad.numpy(), rtol=1e-12)
    with pytest.raises(gpwref.GpwrefError, match="beta"):
        gpwref.compute("margin", X, y, profile="pml", beta={0: 1.1, 1: 1.3})  # class 2 has no beta


def test_margin_pml_stores_beta_in_float32():
    # Discrepancy (docs/losses.md#margin): PML keeps beta in a float32 tensor (margin_loss.py:98), so with
    # float64 embeddings it computes with 1.2000000476837158, not 1.2.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3))
    y = np.repeat([0, 1], 5)
    pml_value = _pml("MarginLoss", margin=0.2, beta=1.2)(_t(X), torch.as_tensor(y)).item()
    exact = gpwref.compute("margin", X, y, profile="pml").loss
    rounded = gpwref.compute("margin", X, y, profile="pml", beta=float(np.float32(1.2))).loss
    assert rounded == pytest.approx(pml_value, rel=1e-13)
    assert abs(exact - pml_value) > 1e-10


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("margin", {"beta": {0: float("nan")}}, "beta"),
        ("margin", {"pairing": "quadruplets"}, "pairing"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(loss, hyper, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        gpwref.compute(loss, _rows(0, 60, 180), HAND_Y, **hyper)
    assert info.value.argument == argument


def test_margin_per_class_nu_needs_triplets():
    with pytest.raises(gpwref.GpwrefError, match="nu"):
        gpwref.compute("margin", _rows(0, 60, 180), HAND_Y, beta={0: 1.2, 1: 1.2}, nu=0.1)


def test_margin_pml_regulariser_needs_a_triplet():
    # PML returns every sub-loss as 0 when the batch has no triplet (margin_loss.py:36-37), the
    # nu * beta regulariser included; the paper's pair form keeps nu * beta. One class: no negative.
    X = _rows(0, 20, 40)
    y = np.zeros(3, dtype=int)
    loss_fn = _pml("MarginLoss", margin=0.2, nu=0.1, learn_beta=True)
    loss_fn.beta = torch.nn.Parameter(torch.tensor([1.2], dtype=torch.float64))
    assert loss_fn(_t(X), torch.as_tensor(y)).item() == 0.0
    assert gpwref.compute("margin", X, y, profile="pml", nu=0.1).loss == 0.0
    pairs = gpwref.compute("margin", X, y, nu=0.1)  # positives D = 2 sin 10, 2 sin 20 < beta - margin = 1: inactive
    assert pairs.loss == pytest.approx(0.1 * 1.2, rel=1e-14) and pairs.extras["grad_beta"] == pytest.approx(0.1, rel=1e-14)
