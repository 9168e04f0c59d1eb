"""Float32 with exact duplicated rows in the Euclidean losses (contrastive, lifted_structure).

Two copies of one row have a float32 S of 1 only up to float32 round-off, so 2 - 2S is ~1e-7, far
above float64's duplicate cut-off of 1e-12: without a cut-off sized for the work dtype
(``gpwref.rules.duplicate_cutoff``) the pair gets d ~ 3e-4 and a weight 1/d ~ 3e3 instead of the
reference's d = 0 and weight 0. Expected values: the float64 NumPy reference, compared under the
float32 policy (``gpwref.testing.kernel_agreement.agreement``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpwref
from gpwref.rules import DUPLICATE_GAP, DUPLICATE_SQ_DISTANCE, duplicate_cutoff
from gpwref.testing.kernel_agreement import agreement
from gpwref.testing.tolerances import tolerance_for

SEEDS = range(30)
LABELS = np.arange(12) // 3
# (loss, profile, variant): every Euclidean form of the two losses
CASES = [
    ("contrastive", "pml", {}),
    ("contrastive", "paper", {"distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0}),
    ("lifted_structure", "pml", {"form": "song"}),
    ("lifted_structure", "pml", {"form": "generalized"}),
]


def _duplicated(seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(12, 6))
    return np.repeat(X[:6], 2, axis=0)  # rows 2k and 2k + 1 are exact copies


def _cuda_runs() -> bool:
    try:
        gpwref.compute("contrastive", _duplicated(0), LABELS, backend="cuda")
    except gpwref.GpwrefError:
        return False
    return True


@pytest.mark.parametrize("backend", ["numba", "cuda"])
@pytest.mark.parametrize("loss,profile,variant", CASES)
def test_float32_kernels_exact_duplicates_within_policy(loss, profile, variant, backend):
    """The kernels against the float64 reference under the float32 kernel policy."""
    if backend == "cuda" and not _cuda_runs():
        pytest.skip("no CUDA device and no simulator")
    simulated = backend == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    failures = {}
    for seed in range(2) if simulated else SEEDS:  # the simulator runs a Python thread per CUDA thread
        X = _duplicated(seed)
        want = gpwref.compute(loss, X, LABELS, profile=profile, **variant)
        got = gpwref.compute(loss, X, LABELS, profile=profile, backend=backend, dtype="float32", **variant)
        report = agreement(got, want, loss=loss, profile=gpwref.get_profile(profile), params=dict(got.hyper),
                           labels=LABELS, embeddings=X)
        # exact copies are far from every cut-off: the policy's numeric bounds must apply and hold
        assert not report.ill_conditioned, (seed, report.ill_conditioned)
        if report.failures():
            failures[seed] = {k: (report.errors[k], report.limits[k]) for k in report.failures() if k in report.errors}
    assert not failures, failures


@pytest.mark.parametrize("loss,profile,variant", CASES)
def test_float32_numpy_exact_duplicates_within_oracle_tolerance(loss, profile, variant):
    """The NumPy float32 path (float32 throughout, logits included, so the kernel policy's float64
    rounding terms do not describe it) under the oracle's float32 tolerance (docs/tolerances.md),
    against the float64 reference on the float32-rounded rows."""
    tol = tolerance_for("float32")
    failures = {}
    for seed in SEEDS:
        X = _duplicated(seed).astype(np.float32).astype(np.float64)
        want = gpwref.compute(loss, X, LABELS, profile=profile, **variant)
        got = gpwref.compute(loss, X, LABELS, profile=profile, dtype="float32", **variant)
        errors = {
            "value": abs(got.loss - want.loss) - (tol.value_atol + tol.value_rtol * abs(want.loss)),
            "grad_sim": _normwise(got.grad_sim, want.grad_sim) - (tol.grad_atol + tol.grad_rtol * np.abs(want.grad_sim).max()),
            "grad_emb": _normwise(got.grad_emb, want.grad_emb) - (tol.grad_atol + tol.grad_rtol * np.abs(want.grad_emb).max()),
        }
        bad = {name: excess for name, excess in errors.items() if excess > 0}
        if bad:
            failures[seed] = bad
    assert not failures, failures


def _normwise(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - want)))


def test_issue_example_contrastive_numba():
    """The issue's case: loss 1.866 (float32) against 2.041 (float64), max |G| 161 against 0.12."""
    X = _duplicated(0)
    want = gpwref.compute("contrastive", X, LABELS, profile="pml", backend="numba")
    got = gpwref.compute("contrastive", X, LABELS, profile="pml", backend="numba", dtype="float32")
    assert abs(got.loss - want.loss) <= 1e-5 * abs(want.loss)
    assert np.max(np.abs(got.grad_sim)) <= 1.001 * np.max(np.abs(want.grad_sim))


def test_cutoff_float64_unchanged_and_float32_sized_by_roundoff():
    assert duplicate_cutoff(np.float64) == DUPLICATE_SQ_DISTANCE == DUPLICATE_GAP == 1e-12
    # the same number of unit round-offs: 1e-12 / 2^-53 float64 ulps-halves, in float32's 2^-24
    assert duplicate_cutoff(np.float32) == pytest.approx(1e-12 * 2.0**29)
    # and it covers the worst-case round-off 2 (d + 2) u of 2 - 2S for duplicates up to d = 4096
    assert duplicate_cutoff(np.float32) >= 2 * (4096 + 2) * 2.0**-24


def test_float32_duplicate_gap_measured_below_cutoff():
    """The cut-off holds what float32 really produces: 2 - 2S of exact copies of unit rows."""
    rng = np.random.default_rng(1)
    for d in (2, 64, 512, 4096):
        X = rng.normal(size=(16, d)).astype(np.float32)
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        gap = 2 - 2 * np.einsum("ij,ij->i", U, U)
        assert np.all(np.abs(gap) <= duplicate_cutoff(np.float32)), (d, np.abs(gap).max())
