"""Metric-learning pair losses beyond the MS paper: hand-derived batches, modelled conventions, bad input.

Circle, SupCon, NT-Xent, margin (Wu et al.), NCA, tuplet margin, ranked list and SNR contrastive.
The drawn-batch proofs (autograd, finite differences, loops, PML) run over the whole catalog in
tests/test_catalog.py; here each loss gets a batch small enough to derive by hand (the expected
numbers are written from the formulas with ``math``, never from gpwref), every modelled convention
of catalog.md section 3 (items 10, 11, 16, 20, 21) is shown to matter, against the real code where
it can run, and each bad hyper-parameter gets its error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpwref
from gpwref.losses import snr_contrastive
from gpwref.testing import Batch
from verification.common import NotApplicable
from verification.harness import check_case
from verification.refs import supcon as supcon_refs


def _snr_direct(X, labels, *, profile="pml", normalize=True, ref=None, ref_labels=None, **hyper):
    """snr_contrastive's own hook (``embeddings_function(inputs, profile, params)``), called directly."""
    from gpwref.inputs import validate

    entry, prof = gpwref.get_entry("snr_contrastive"), gpwref.get_profile(profile)
    inputs = validate(entry, X, np.asarray(labels), ref, ref_labels, None, normalize, np.dtype(np.float64))
    return snr_contrastive.compute(inputs, prof, gpwref.catalog.resolve_hyper(entry, prof.name, hyper))


def _t(X):
    return torch.tensor(np.asarray(X, dtype=np.float64), requires_grad=True)


def _pml(cls, **kwargs):
    from pytorch_metric_learning import losses

    return getattr(losses, cls)(**kwargs)


def _rows(*degrees):
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Shared hand batch in S form: labels [0, 0, 1];
#   S01 = 0.8 (the only positive pair), S02 = 0.1, S12 = -0.5.
HAND_S = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, -0.5], [0.1, -0.5, 1.0]])
HAND_Y = np.array([0, 0, 1])


# ---------------------------------------------------------------------------------------------- circle


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
    # catalog.md section 3 item 10: fast-reid averages over all m rows, PML over rows with a loss.
    # HAND_Y has one anchor without positives, so the two differ by the factor 3/2 exactly.
    X = _rows(0, 40, 150)
    paper = gpwref.compute("circle", X, HAND_Y, reduction="mean", softplus_threshold=20.0)
    pml = gpwref.compute("circle", X, HAND_Y, profile="pml")
    assert pml.loss == pytest.approx(1.5 * paper.loss, rel=1e-14)
    report = check_case("circle", "paper", {"reduction": "mean", "softplus_threshold": 20.0},
                        Batch(X, HAND_Y))
    assert "real:fast-reid pairwise_circleloss rules value" in report.errors and not report.failures()


# ---------------------------------------------------------------------------------------------- SupCon


def test_supcon_hand_derived():
    # tau = 1, labels [0, 0, 1]. Anchor 0: A = {1, 2}, P = {1}: l0 = log(e^0.8 + e^0.1) - 0.8.
    # Anchor 1: A = {0, 2}: l1 = log(e^0.8 + e^-0.5) - 0.8. Anchor 2: no positive, 0.
    # Weights: G_ia = pi_ia - [a in P_i] (|P_i| = 1): G01 = pi - 1 = -e^0.1 / (e^0.8 + e^0.1), G02 = +e^0.1 / (...).
    l0 = math.log(math.exp(0.8) + math.exp(0.1)) - 0.8
    l1 = math.log(math.exp(0.8) + math.exp(-0.5)) - 0.8
    r = gpwref.from_similarity("supcon", HAND_S, HAND_Y, temperature=1.0)  # paper: sum over anchors
    assert r.loss == pytest.approx(l0 + l1, rel=1e-14)
    p02 = math.exp(0.1) / (math.exp(0.8) + math.exp(0.1))
    p12 = math.exp(-0.5) / (math.exp(0.8) + math.exp(-0.5))
    want = np.array([[0, -p02, p02], [-p12, 0, p12], [0, 0, 0]])
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=1e-16)
    mean = gpwref.from_similarity("supcon", HAND_S, HAND_Y, temperature=1.0, reduction="mean", base_temperature=0.5)
    assert mean.loss == pytest.approx((l0 + l1) * 2 / 3, rel=1e-14)  # tau/base = 2, mean over 3 anchors
    pml = gpwref.from_similarity("supcon", HAND_S, HAND_Y, profile="pml", temperature=1.0)
    assert pml.loss == pytest.approx((l0 + l1) / 2, rel=1e-14)  # AvgNonZero: the 2 anchors with a loss


def test_supcon_positive_weight_can_be_positive():
    # Anchor 0 with positives 1 (S = 0.9) and 2 (S = -0.9), negative 3 (S = 0), tau = 1:
    # pi_01 = e^0.9 / (e^0.9 + e^-0.9 + 1) > 1/2 = 1/|P_0|, so G_01 = pi_01 - 1/2 > 0 (pushed away).
    S = np.array([[1, 0.9, -0.9, 0], [0.9, 1, -0.5, 0], [-0.9, -0.5, 1, 0], [0, 0, 0, 1.0]])
    y = np.array([0, 0, 0, 1])
    r = gpwref.from_similarity("supcon", S, y, temperature=1.0)
    pi01 = math.exp(0.9) / (math.exp(0.9) + math.exp(-0.9) + 1)
    assert r.grad_sim[0, 1] == pytest.approx(pi01 - 0.5, rel=1e-13) and r.grad_sim[0, 1] > 0


def test_supcon_official_log_eps_matters_and_is_modelled():
    # catalog.md section 3 item 16. Official code: log(sum exp(logits - rowmax) + 1e-9), the row max
    # including the self logit 1/tau. Three points far apart on the circle (S = -1/2 between each)
    # with labels [0, 0, 1], tau = 0.07: exp((-0.5 - 1)/0.07) ~ 5e-10 is of the size of 1e-9, so
    # the guard changes the loss by O(1) relative; log_eps=1e-9 reproduces the official rules, 0 does not.
    X = _rows(0, 120, 240)
    y = np.array([0, 0, 1])
    hyper = dict(temperature=0.07, base_temperature=0.07, reduction="mean")
    X0 = np.vstack([X, _rows(10)])  # a fourth row so that every anchor has a positive
    y0 = np.array([0, 1, 1, 0])
    official = supcon_refs.official(_t(X0), y0, None, None, None, True, log_eps=1e-9, require_both_kinds=False, **hyper)
    modelled = gpwref.compute("supcon", X0, y0, log_eps=1e-9, **hyper)
    plain = gpwref.compute("supcon", X0, y0, log_eps=0.0, **hyper)
    assert modelled.loss == pytest.approx(official.item(), rel=1e-13)
    assert abs(plain.loss - official.item()) > 1e-3 * abs(official.item())
    with pytest.raises(NotApplicable):  # the official code's NaN for an anchor without positives
        supcon_refs.official(_t(X), y, None, None, None, True, log_eps=1e-9, require_both_kinds=False, **hyper)


def test_supcon_pml_zero_without_both_pair_kinds():
    # One class only: the paper's loss is log|A_i| - 0 per anchor for tied rows; PML returns 0.
    X = _rows(0, 0, 0)
    y = np.zeros(3, dtype=int)
    assert gpwref.compute("supcon", X, y, temperature=1.0).loss == pytest.approx(3 * math.log(2), rel=1e-14)
    pml_value = _pml("SupConLoss", temperature=1.0)(_t(X), torch.as_tensor(y)).item()
    assert pml_value == 0.0 and gpwref.compute("supcon", X, y, profile="pml", temperature=1.0).loss == 0.0


# ---------------------------------------------------------------------------------------------- NT-Xent


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
    # catalog.md section 3 item 16: PML leaves the anchor's other positives out of the denominator.
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


# ---------------------------------------------------------------------------------------------- margin


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
    # catalog.md section 3 item 11: PML enumerates all triplets; per-class betas, learnable, nu > 0.
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
    # Discrepancy not in catalog.md: PML keeps beta in a float32 tensor (margin_loss.py:98), so with
    # float64 embeddings it computes with 1.2000000476837158, not 1.2.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3))
    y = np.repeat([0, 1], 5)
    pml_value = _pml("MarginLoss", margin=0.2, beta=1.2)(_t(X), torch.as_tensor(y)).item()
    exact = gpwref.compute("margin", X, y, profile="pml").loss
    rounded = gpwref.compute("margin", X, y, profile="pml", beta=float(np.float32(1.2))).loss
    assert rounded == pytest.approx(pml_value, rel=1e-13)
    assert abs(exact - pml_value) > 1e-10


# ---------------------------------------------------------------------------------------------- NCA


def test_nca_hand_derived_both_objectives():
    # s = 1: p_0. = softmax(2 S_0.) over {1, 2} etc. q_0 = p_01, q_1 = p_10, anchor 2 has no positive.
    e = np.exp(2 * HAND_S)
    q0 = e[0, 1] / (e[0, 1] + e[0, 2])
    q1 = e[1, 0] / (e[1, 0] + e[1, 2])
    log_obj = gpwref.from_similarity("nca", HAND_S, HAND_Y, objective="log")
    assert log_obj.loss == pytest.approx(-(math.log(q0) + math.log(q1)) / 2, rel=1e-14)
    # log: G_01 = (2/M) p_01 (1 - 1/q_0) = (2/2)(q0 - 1), G_02 = (2/2) p_02 = 1 - q0
    assert log_obj.grad_sim[0, 1] == pytest.approx(q0 - 1, rel=1e-13)
    assert log_obj.grad_sim[0, 2] == pytest.approx(1 - q0, rel=1e-13)
    expected = gpwref.from_similarity("nca", HAND_S, HAND_Y)  # paper: -(1/m) sum q_i
    assert expected.loss == pytest.approx(-(q0 + q1) / 3, rel=1e-14)
    # expected: G_01 = -(2/3) p_01 (1 - q_0), G_02 = (2/3) p_02 q_0
    assert expected.grad_sim[0, 1] == pytest.approx(-(2 / 3) * q0 * (1 - q0), rel=1e-13)
    assert expected.grad_sim[0, 2] == pytest.approx((2 / 3) * (1 - q0) * q0, rel=1e-13)


def test_nca_pml_quirks():
    # No anchor has a positive: PML's MeanReducer averages nothing -> NaN; gpwref gives 0.
    X = _rows(0, 90, 200)
    y = np.array([0, 1, 2])
    assert math.isnan(_pml("NCALoss")(_t(X), torch.as_tensor(y)).item())
    assert gpwref.compute("nca", X, y, profile="pml").loss == 0.0
    # One query against a reference set: PML returns 0 (len(embeddings) <= 1), the formula does not.
    ref, ref_y = _rows(10, 100), np.array([0, 1])
    pml_value = _pml("NCALoss")(_t(X[:1]), torch.as_tensor(y[:1]), None, _t(ref), torch.as_tensor(ref_y)).item()
    assert pml_value == 0.0
    assert gpwref.compute("nca", X[:1], y[:1], profile="pml", ref=ref, ref_labels=ref_y).loss == 0.0
    formula = gpwref.compute("nca", X[:1], y[:1], profile="pml", ref=ref, ref_labels=ref_y, zero_if_single_row=False)
    assert formula.loss > 0


# ---------------------------------------------------------------------------------------------- tuplet margin


def test_tuplet_margin_hand_derived():
    # One anchor 0 with positive 1 (S = 0.8) and negative 2 (S = 0.1); s = 4, beta = 10 degrees.
    # theta = acos 0.8, c = cos(theta - beta); l_01 = log(1 + e^{s (0.1 - c)});
    # anchor 1: positive 0 (same c), negative 2 at S12 = -0.5. K = 2.
    beta = math.radians(10.0)
    theta = math.acos(0.8)
    c = math.cos(theta - beta)
    l01 = math.log1p(math.exp(4 * (0.1 - c)))
    l10 = math.log1p(math.exp(4 * (-0.5 - c)))
    r = gpwref.from_similarity("tuplet_margin", HAND_S, HAND_Y, margin_deg=10.0, scale=4.0)
    assert r.loss == pytest.approx((l01 + l10) / 2, rel=1e-14)
    pi = math.exp(4 * (0.1 - c)) / (1 + math.exp(4 * (0.1 - c)))
    assert r.grad_sim[0, 2] == pytest.approx(4 * pi / 2, rel=1e-13)
    assert r.grad_sim[0, 1] == pytest.approx(-4 * pi * math.sin(theta - beta) / math.sin(theta) / 2, rel=1e-12)


def test_tuplet_margin_sign_flip_and_edge_rule():
    # theta_ap < beta (S_ap = cos 3 deg, margin 5.73 deg): the positive weight is positive.
    s_close = math.cos(math.radians(3.0))
    S = np.array([[1, s_close, 0.2], [s_close, 1, 0.1], [0.2, 0.1, 1.0]])
    r = gpwref.from_similarity("tuplet_margin", S, HAND_Y)
    assert r.grad_sim[0, 1] > 0 and r.grad_sim[1, 0] > 0
    # catalog.md section 3 item 21: at S_ap = 1 (a duplicate) arccos' slope is infinite; PML gives NaN
    # gradients there (torch.acos at 1) while gpwref takes theta = 0 with no weight and stays finite.
    S[0, 1] = S[1, 0] = 1.0
    r = gpwref.from_similarity("tuplet_margin", S, HAND_Y)
    assert r.grad_sim[0, 1] == 0.0 and np.all(np.isfinite(r.grad_sim))
    assert r.loss == pytest.approx((math.log1p(math.exp(64 * (0.2 - math.cos(math.radians(5.73)))))
                                    + math.log1p(math.exp(64 * (0.1 - math.cos(math.radians(5.73)))))) / 2, rel=1e-13)
    X = _rows(0, 0, 90)
    X_t = _t(X)
    _pml("TupletMarginLoss")(X_t, torch.as_tensor(HAND_Y)).backward()
    assert not torch.all(torch.isfinite(X_t.grad))
    assert np.all(np.isfinite(gpwref.compute("tuplet_margin", X, HAND_Y, profile="pml").grad_emb))


# ---------------------------------------------------------------------------------------------- ranked list


def test_ranked_list_hand_derived_and_pml_guard():
    # Unit rows at 0, 100, 40, 150 degrees, labels [0, 0, 1, 1]; anchor 0: positive 1 at
    # D = 2 sin 50 = 1.532 > alpha - m = 1.2 - 0.4 = 0.8 (violating), negatives 2 at D = 2 sin 20 = 0.684
    # and 3 at D = 2 sin 75 = 1.932; alpha = 1 + m/2 = 1.2: only 2 is violating. Tn = 1, Tp = 0, imbalance = 1/2.
    #   L_P,0 = (1.532 - 0.8) (w = 1), L_N,0 = (1.2 - 0.684) (one member, its softmax weight is 1).
    X = _rows(0, 100, 40, 150)
    y = np.array([0, 0, 1, 1])
    D = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    hyper = dict(margin=0.4, Tn=1.0)
    r = gpwref.compute("ranked_list", X, y, **hyper)
    anchor0 = 0.5 * (D(100) - 0.8) + 0.5 * (1.2 - D(40))
    assert r.per_anchor[0] == pytest.approx(anchor0 / 4, rel=1e-13)
    # weights of anchor 0: G_01 = -(1/2)(1/4) / D01 (w/B = 1, Tp = 0); G_02 = (1/2)(1/4)(1 + Tn (u - L_N)) / D02 = (1/8) / D02
    assert r.grad_sim[0, 1] == pytest.approx(-1 / 8 / D(100), rel=1e-12)
    assert r.grad_sim[0, 2] == pytest.approx(1 / 8 / D(40), rel=1e-12)
    # PML adds 1e-5 to each of the n = 4 entries of a row's denominators: L_P,0 = v w / (w + 4e-5) with
    # w = e^{Tp v} = 1, L_N,0 = u w / (w + 4e-5) with w = e^{Tn u}.
    pml = gpwref.compute("ranked_list", X, y, profile="pml", **hyper)
    v, u = D(100) - 0.8, 1.2 - D(40)
    guarded = 0.5 * v / (1 + 4e-5) + 0.5 * u * math.exp(u) / (math.exp(u) + 4e-5)
    assert pml.per_anchor[0] == pytest.approx(guarded / 4, rel=1e-13)
    pml_value = _pml("RankedListLoss", margin=0.4, Tn=1.0)(_t(X), torch.as_tensor(y)).item()
    assert pml.loss == pytest.approx(pml_value, rel=1e-13)
    assert abs(r.loss - pml_value) > 1e-6


def test_ranked_list_live_weights_break_the_sign_rule():
    # Two violating negatives with u = alpha - D of 0.02 and 1.0, Tn = 10: L_N ~ 1.0 and
    # 1 + Tn (0.02 - L_N) < 0, so the less violating negative gets a NEGATIVE weight.
    alpha = 1.2
    d_small, d_big = alpha - 0.02, alpha - 1.0
    S = np.array([[1.0, 1 - d_small**2 / 2, 1 - d_big**2 / 2], [1 - d_small**2 / 2, 1.0, 0.0], [1 - d_big**2 / 2, 0.0, 1.0]])
    y = np.array([0, 1, 2])
    r = gpwref.from_similarity("ranked_list", S, y, Tn=10.0)
    assert r.grad_sim[0, 1] < 0 < r.grad_sim[0, 2]


# ---------------------------------------------------------------------------------------------- SNR contrastive


def test_snr_contrastive_hand_derived():
    # Raw rows (normalize=False) in D = 3: u0 = (1, 0, 0), u1 = (0, 1, 0), u2 = (1, 1, 1); labels [0, 0, 1].
    # var with D - 1: var(u0) = var(u1) = ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3; var(u2) = 0 -> refused.
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 1.0]])
    with pytest.raises(gpwref.GpwrefError, match="not all equal"):
        _snr_direct(X, [0, 0, 1], normalize=False)
    # u2 = (2, 0, 1) instead: var(u2) = ((1)^2 + (1)^2 + 0) / 2 = 1 (mean 1).
    # d01 = var(u1 - u0) / var(u0) = var(-1, 1, 0) / (1/3) = 1 / (1/3) = 3; d10 = 3.
    # d02 = var(1, 0, 1) / (1/3) = (1/3) / (1/3) = 1; d12 = var(2, -1, 1) / (1/3) = (7/3) / (1/3) = 7.
    # d20 = var(-1, 0, -1) / 1 = 1/3; d21 = var(-2, 1, -1) / 1 = 7/3.
    # pos terms (margin 0): d01 = d10 = 3 -> Z_P = 2, mean 3. neg terms [1 - d]_+: only d20 = 1/3 -> 2/3.
    # L = 3 + 2/3. G_01 = -(1/2) * 2 / ((D - 1) var(u0)) = -(1/2) * 2 / (2/3) = -3/2 = G_10;
    # G_20 = +1 * 2 / ((D - 1) var(u2)) = 2 / 2 = 1.
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [2.0, 0, 1.0]])
    r = _snr_direct(X, [0, 0, 1], normalize=False)
    assert r.loss == pytest.approx(3 + 2 / 3, rel=1e-14)
    want = np.zeros((3, 3))
    want[0, 1] = want[1, 0] = -1.5
    want[2, 0] = 1.0
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=0)
    np.testing.assert_allclose(r.extras["snr_distance"], [[0, 3, 1], [3, 0, 7], [1 / 3, 7 / 3, 0]], rtol=1e-13, atol=1e-15)


def test_snr_contrastive_is_not_a_function_of_S():
    # Same S, different coordinate means -> different SNR distances: from_similarity refuses it, and
    # gpwref.compute runs it from the embeddings (the catalog entry's embeddings_function).
    X = _rows(0, 60, 180)
    with pytest.raises(gpwref.GpwrefError, match="not a function of S"):
        gpwref.from_similarity("snr_contrastive", X @ X.T, HAND_Y, profile="pml")
    rotation = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    X3 = np.hstack([X, np.zeros((3, 1))]) + np.array([0, 0, 0.1])
    Y3 = np.hstack([X @ rotation.T, np.zeros((3, 1))]) + np.array([0, 0, 0.1])
    a = _snr_direct(X3, HAND_Y, profile="pml", normalize=False)
    b = _snr_direct(Y3, HAND_Y, profile="pml", normalize=False)
    np.testing.assert_allclose(a.sim, b.sim, atol=1e-15)
    assert abs(a.loss - b.loss) > 1e-3


def test_snr_contrastive_through_gpwref_compute():
    # The public entry point gives the module's own result, argument for argument, and refuses what
    # the loss cannot do (a kernel backend, float32) with the argument named.
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [2.0, 0, 1.0], [0.5, 2.0, -1.0]])
    y = [0, 0, 1, 1]
    direct = _snr_direct(X, y, profile="pml", normalize=False, neg_margin=2.0)
    public = gpwref.compute("snr_contrastive", X, y, profile="pml", normalize=False, neg_margin=2.0)
    assert public.loss == direct.loss
    np.testing.assert_array_equal(public.grad_sim, direct.grad_sim)
    np.testing.assert_array_equal(public.grad_emb, direct.grad_emb)
    R, yr = X[:2] + 0.25, np.array([0, 1])
    direct = _snr_direct(X, y, profile="pml", ref=R, ref_labels=yr)
    public = gpwref.compute("snr_contrastive", X, y, profile="pml", ref=R, ref_labels=yr)
    np.testing.assert_array_equal(public.grad_ref, direct.grad_ref)
    with pytest.raises(gpwref.GpwrefError, match="backend"):
        gpwref.compute("snr_contrastive", X, y, profile="pml", backend="numba")
    with pytest.raises(gpwref.GpwrefError, match="dtype"):
        gpwref.compute("snr_contrastive", X, y, profile="pml", dtype="float32")


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "loss, hyper, argument",
    [
        ("circle", {"gamma": 0.0}, "gamma"),
        ("circle", {"reduction": "sum"}, "reduction"),
        ("circle", {"detach_factors": 1}, "detach_factors"),
        ("supcon", {"temperature": -1.0}, "temperature"),
        ("supcon", {"base_temperature": 0.0}, "base_temperature"),
        ("ntxent", {"denominator": "others"}, "denominator"),
        ("margin", {"beta": {0: float("nan")}}, "beta"),
        ("margin", {"pairing": "quadruplets"}, "pairing"),
        ("nca", {"softmax_scale": 0.0}, "softmax_scale"),
        ("tuplet_margin", {"scale": -64.0}, "scale"),
        ("ranked_list", {"imbalance": 1.5}, "imbalance"),
        ("ranked_list", {"Tn": -1.0}, "Tn"),
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
