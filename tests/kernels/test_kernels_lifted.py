"""Lifted structured loss kernels (backend="numba"): the checks the catalog-wide kernel tests in
test_kernels_cpu.py cannot make.

* On one and the same S the kernels must equal the float64 reference (``from_similarity``) to
  1e-12 with identical masks, euclidean included: compared through ``compute`` the two sides have
  different S (another normalisation kernel), and 1/D magnifies that last-bit difference near
  duplicates, so test_kernels_cpu checks euclidean lifted through the tolerance policy only.
* Hand-derived cases for what is special to this loss: Song's coupling of rows (a negative of row i
  is weighted by every active pair in which i is the anchor OR the positive), the duplicate rule
  (a duplicate pair keeps its score in E and in J but gets weight 0), and PML's empty_lse "zero"
  rule of the generalised form.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import gpwref
from gpwref.kernels import backends, cpu
from gpwref.rules import DUPLICATE_GAP, duplicate_cutoff, for_form
from gpwref.testing import batches, make_batch
from gpwref_verification.common import rel_err

LOSS = "lifted_structure"
FORMS = ("song", "generalized")
PROFILES = ("paper", "pml")
KNOBS = [dict(singletons=True), dict(one_class=True), dict(ties=True), dict(duplicates=True), dict(on_boundary=True),
         dict(m=1), dict(m=2), dict(singletons=False, one_class=False)]


def _kernel_on(S, y, profile, form, dtype=np.float64, **hyper):
    """The Numba kernels' pair outputs on a given S (the batch as its own reference)."""
    entry = gpwref.get_entry(LOSS)
    params = gpwref.catalog.resolve_hyper(entry, profile, dict(form=form, **hyper))
    S = np.ascontiguousarray(S, dtype=dtype)
    return backends._numba_pairs(cpu, entry, gpwref.get_profile(profile), params, S, y, y, True, None, np.dtype(dtype))


def _same_s_check(S, y, profile, form):
    want = gpwref.from_similarity(LOSS, S, y, profile=profile, form=form)
    got = _kernel_on(S, y, profile, form)
    assert np.array_equal(got["pos_used"], want.pos_used) and np.array_equal(got["neg_used"], want.neg_used)
    assert rel_err(got["per_anchor"], want.per_anchor) <= 1e-12
    assert rel_err(got["grad_sim"], want.grad_sim) <= 1e-12
    assert np.all(got["grad_sim"][~(want.pos_used | want.neg_used)] == 0.0)
    # float32 S: the kernel reads S in float32 and works in float64, so on the same (rounded) S it
    # must equal the float64 reference up to the rounding of G to float32 (2^-24 per entry)
    S32 = S.astype(np.float32)
    S32_read = S32.astype(np.float64)
    if for_form(gpwref.catalog.resolve_hyper(gpwref.get_entry(LOSS), profile, dict(form=form))["distance"], form) == "euclidean":
        S32_read[2 - 2 * S32_read <= duplicate_cutoff(np.float32, DUPLICATE_GAP)] = 1.0  # float32's duplicates (D = 0)
    want32 = gpwref.from_similarity(LOSS, S32_read, y, profile=profile, form=form)
    got32 = _kernel_on(S32, y, profile, form, dtype=np.float32)
    assert got32["grad_sim"].dtype == np.float32
    assert np.array_equal(got32["pos_used"], want32.pos_used) and np.array_equal(got32["neg_used"], want32.neg_used)
    assert rel_err(got32["per_anchor"], want32.per_anchor) <= 1e-12
    assert rel_err(got32["grad_sim"].astype(np.float64), want32.grad_sim) <= 2.0**-23


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(m=(1, 12), with_ref=False))
def test_kernels_equal_reference_on_the_same_similarities(profile, form, batch):
    X = batch.embeddings / np.linalg.norm(batch.embeddings, axis=1, keepdims=True) if batch.normalize else batch.embeddings
    _same_s_check(X @ X.T, batch.labels, profile, form)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("form", FORMS)
def test_kernels_equal_reference_on_every_edge_case(profile, form):
    """Each edge case of docs/oracle-contract.md#edge-cases once, deterministically (hypothesis draws them only sometimes)."""
    for seed, knob in enumerate(KNOBS):
        batch = make_batch(np.random.default_rng(200 + seed), **knob)
        X = batch.embeddings / np.linalg.norm(batch.embeddings, axis=1, keepdims=True) if batch.normalize else batch.embeddings
        _same_s_check(X @ X.T, batch.labels, profile, form)


def _circle(degrees):
    angles = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_song_hand_case_couples_rows_through_both_roles():
    """Four points at 0, 60 (class 0), 90, 180 degrees (class 1); Song's form, paper profile
    (euclidean, pos_margin 0, neg_margin 1): z+ = D, z- = 1 - D, phi = 1/D, D = sqrt(2 - 2S).

    Distances: D01 = 1, D23 = sqrt 2, D02 = sqrt 2, D03 = 2, D12 = sqrt(2 - sqrt 3), D13 = sqrt 3.
    E_i = sum over i's two negatives of exp(1 - D): E0 = e^(1-sqrt2) + e^(1-2), E1 = e^(1-D12) +
    e^(1-sqrt3), E2 = e^(1-sqrt2) + e^(1-D12), E3 = e^(1-2) + e^(1-sqrt3). Ordered positive pairs
    (0,1), (1,0), (2,3), (3,2): Q = 4, J01 = J10 = log(E0 + E1) + 1, J23 = J32 = log(E2 + E3) + sqrt 2
    (both > 0), L = (2 J01^2 / 2 + 2 J23^2 / 2) / 4. G01 = -(J01 / 4) / D01. A negative of row 0 is
    weighted by (0,1) AND (1,0): G02 = phi02 e^(z-02) (c01 + c10) / (E0 + E1), c = J / 4.
    """
    X, y = _circle([0.0, 60.0, 90.0, 180.0]), np.array([0, 0, 1, 1])
    D12, r2, r3 = np.sqrt(2 - np.sqrt(3)), np.sqrt(2), np.sqrt(3)
    E0, E1 = np.exp(1 - r2) + np.exp(1 - 2), np.exp(1 - D12) + np.exp(1 - r3)
    E2, E3 = np.exp(1 - r2) + np.exp(1 - D12), np.exp(1 - 2) + np.exp(1 - r3)
    J01, J23 = np.log(E0 + E1) + 1.0, np.log(E2 + E3) + r2
    for backend in ("numba", "numpy"):
        got = gpwref.compute(LOSS, X, y, profile="paper", form="song", backend=backend)
        assert got.loss == pytest.approx((J01**2 + J23**2) / 4, rel=1e-13)
        assert got.per_anchor[0] == pytest.approx(J01**2 / 8, rel=1e-13)
        assert got.grad_sim[0, 1] == pytest.approx(-J01 / 4, rel=1e-13)
        assert got.grad_sim[3, 2] == pytest.approx(-J23 / 4 / r2, rel=1e-13)
        assert got.grad_sim[0, 2] == pytest.approx(np.exp(1 - r2) / r2 * (J01 / 2) / (E0 + E1), rel=1e-13)
        assert got.grad_sim[1, 2] == pytest.approx(np.exp(1 - D12) / D12 * (J01 / 2) / (E0 + E1), rel=1e-13)
        assert got.grad_sim[2, 0] == pytest.approx(np.exp(1 - r2) / r2 * (J23 / 2) / (E2 + E3), rel=1e-13)
        assert got.grad_sim[0, 0] == 0.0 and got.pos_used.sum() == 4 and got.neg_used.sum() == 8


def test_song_coupling_uses_the_partner_row_of_an_asymmetric_s():
    """The kernels read J_pi from S_pi (not S_ip): on a non-symmetric S (from_similarity accepts
    one) the kernel still equals the reference, whose row factor sums coef[a, i] over column i."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(9, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T + 0.01 * rng.uniform(-1, 1, size=(9, 9))
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    for profile in PROFILES:
        _same_s_check(S, y, profile, "song")
    symmetric = gpwref.from_similarity(LOSS, (S + S.T) / 2, y, form="song").grad_sim
    assert rel_err(_kernel_on(S, y, "paper", "song")["grad_sim"], symmetric) > 1e-3  # the asymmetry matters


def test_duplicates_keep_their_scores_but_get_no_weight():
    """Row 1 copies row 0 (same class) and row 3 copies row 0 (other class). Euclidean: a duplicate
    pair has D = 0 (2 - 2S <= 1e-12), phi = 0: no weight and not used, but its scores stay in the
    sums: z+_01 = 0 - pos_margin = 0 makes J01 = log(E0 + E1) > 0 active, so c01 and c10 still
    weight row 0's other negative (2), and z-_03 = neg_margin - 0 = 1 adds e^1 to E0."""
    a, b = _circle([0.0, 100.0])
    X, y = np.stack([a, a, b, a]), np.array([0, 0, 1, 1])
    for backend in ("numba", "numpy"):
        got = gpwref.compute(LOSS, X, y, profile="paper", form="song", backend=backend)
        assert got.grad_sim[0, 1] == 0.0 and got.grad_sim[0, 3] == 0.0
        assert not got.pos_used[0, 1] and not got.neg_used[0, 3] and got.neg_used[0, 2]
        D02 = np.sqrt(2 - 2 * np.cos(np.radians(100.0)))
        E0 = np.exp(1 - D02) + np.exp(1.0)  # negatives of rows 0 and 1: row 2 and the duplicate row 3
        J01 = np.log(2 * E0)
        c01 = J01 / 4  # Q = 4: (0,1), (1,0), (2,3), (3,2)
        assert got.grad_sim[0, 2] == pytest.approx(np.exp(1 - D02) / D02 * 2 * c01 / (2 * E0), rel=1e-13)
    S = gpwref.compute(LOSS, X, y).sim
    for profile in PROFILES:
        for form in FORMS:
            _same_s_check(S, y, profile, form)


def test_generalized_pml_empty_positive_set_counts_as_zero():
    """Labels 0, 0, 1, 2: anchors 2 and 3 have no positive. PML (empty_lse "zero") gives each
    A_i = 0 + log sum_N exp(1 - D) (euclidean, margins 0 / 1), counted when > 0, with the negatives'
    softmax weights phi / m; the paper rule (-inf) drops them. Expected values from a plain loop."""
    X, y = _circle([0.0, 40.0, 150.0, 260.0]), np.array([0, 0, 1, 2])
    m = len(y)
    S = X @ X.T
    D = np.sqrt(np.maximum(2 - 2 * S, 0))
    for i in (2, 3):
        negatives = [k for k in range(m) if y[k] != y[i]]
        exps = [np.exp(1 - D[i, k]) for k in negatives]
        A = np.log(sum(exps))
        assert A > 0
        got = gpwref.compute(LOSS, X, y, profile="pml", form="generalized", backend="numba")
        assert got.per_anchor[i] == pytest.approx(A / m, rel=1e-13)
        for k, e in zip(negatives, exps):
            assert got.grad_sim[i, k] == pytest.approx(e / sum(exps) / D[i, k] / m, rel=1e-13)
        rule_neg_inf = _kernel_on(S, y, "paper", "generalized", distance="euclidean", pos_margin=0.0, neg_margin=1.0)
        assert rule_neg_inf["per_anchor"][i] == 0.0 and not rule_neg_inf["neg_used"][i].any()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_bitwise_deterministic_threaded(form, dtype):
    """Two runs on a batch big enough to run threaded (m^2 >= PARALLEL_MIN_PAIRS) give identical bits."""
    rng = np.random.default_rng(11)
    X, y = rng.normal(size=(256, 16)), np.repeat(np.arange(64), 4)
    assert X.shape[0] ** 2 >= backends.PARALLEL_MIN_PAIRS
    runs = [gpwref.compute(LOSS, X, y, profile="paper", form=form, backend="numba", dtype=dtype) for _ in range(3)]
    for other in runs[1:]:
        assert other.loss == runs[0].loss
        for name in ("per_anchor", "grad_sim", "grad_emb", "pos_used", "neg_used", "sim"):
            assert np.array_equal(getattr(other, name), getattr(runs[0], name)), name


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("form", FORMS)
def test_float32_well_conditioned_1e5(profile, form):
    """docs/tolerances.md#float32-kernels: float32 kernels within relative 1e-5 of the float64 reference for well-conditioned
    inputs (unit rows, d = 128, no pair closer than D ~ 0.5), with the same used pairs."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(64, 128))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(64), 4)
    X = centres[y] + 2.0 * rng.normal(size=(256, 128)) / np.sqrt(128)
    want = gpwref.compute(LOSS, X, y, profile=profile, form=form)
    got = gpwref.compute(LOSS, X, y, profile=profile, form=form, backend="numba", dtype="float32")
    assert want.loss > 0 and want.neg_used.any()
    assert np.array_equal(got.pos_used, want.pos_used) and np.array_equal(got.neg_used, want.neg_used)
    assert abs(got.loss - want.loss) <= 1e-5 * abs(want.loss)
    assert rel_err(got.grad_sim, want.grad_sim) <= 1e-5
    assert rel_err(got.grad_emb, want.grad_emb) <= 1e-5


def test_reference_set_is_refused_by_every_backend():
    X, y = _circle([0.0, 60.0, 90.0, 180.0]), np.array([0, 0, 1, 1])
    for backend in ("numpy", "numba"):
        with pytest.raises(gpwref.GpwrefError, match="ref: loss 'lifted_structure' is defined on the batch only"):
            gpwref.compute(LOSS, X, y, ref=X, ref_labels=y, backend=backend)


@pytest.mark.parametrize("form", FORMS)
def test_policy_bounds_are_tight_enough_to_catch_a_wrong_weight(form):
    """The lifted tolerance bounds are not vacuous: the float32 kernel passes, and the same result
    with one weight off by 1e-4 (relative), or the value off by 1e-4, fails."""
    import dataclasses

    from gpwref.testing.kernel_agreement import agreement

    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(48, 16)), np.repeat(np.arange(12), 4)
    want = gpwref.compute(LOSS, X, y, form=form)
    got = gpwref.compute(LOSS, X, y, form=form, backend="numba", dtype="float32")
    check = lambda result: agreement(result, want, loss=LOSS, profile=gpwref.get_profile("paper"),  # noqa: E731
                                     params=dict(got.hyper), labels=y, embeddings=X).failures()
    assert check(got) == []
    G = got.grad_sim.copy()
    i, j = np.argwhere(want.neg_used)[0]
    G[i, j] *= np.float32(1 + 1e-4)
    assert "grad_sim" in check(dataclasses.replace(got, grad_sim=G))
    assert "value" in check(dataclasses.replace(got, loss=got.loss * (1 + 1e-4)))
