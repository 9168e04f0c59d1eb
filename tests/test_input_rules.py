"""Inputs that would give a silent wrong number are refused up front, on every backend, with the
argument and the true rule named (``gpwref/inputs.py``).

Each case here returned NaN, inf or a plausible 0.0 before (or raised with a wrong reason):
* similarities that overflow with ``normalize=False`` (the bound max|x_i| max|r_j| on |S_ij|);
* a float32 cast that overflows (|x| > 3.4e38) or underflows a row to zeros;
* rows whose norm is subnormal in the working dtype: the gradient through the normalisation is
  divided by |x|, and 1/|x| overflows.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpwref

X = np.random.default_rng(0).normal(size=(12, 6))
y = np.arange(12) // 3

BACKENDS = ["numpy", "numba", "cuda"]
KERNEL_CASES = [
    ("multi_similarity", "pml", {}),
    ("binomial_deviance", "paper", {}),
    ("contrastive", "pml", {}),
    ("lifted_structure", "paper", {"form": "generalized"}),
    ("lifted_structure", "paper", {"form": "song"}),
]


def _refused(argument, pattern, call):
    with pytest.raises(gpwref.GpwrefError, match=f"^{argument}: .*{pattern}") as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,profile,hyper", KERNEL_CASES)
@pytest.mark.parametrize("dtype,scale", [(None, 1e200), ("float32", 1e20)])
def test_overflowing_similarities_are_refused_on_every_backend(backend, loss, profile, hyper, dtype, scale):
    # |x_i| ~ 2.4 * scale: S_ij ~ scale^2 overflows float64 at 1e200 and float32 at 1e20; before,
    # the kernels returned nan (MS), 0.0 (lifted generalized, CUDA MS) or inf.
    message = _refused("embeddings", "normalize=False.*overflows",
                       lambda: gpwref.compute(loss, X * scale, y, profile=profile, normalize=False, backend=backend,
                                              dtype=dtype, **hyper))
    assert (dtype or "float64") in message


def test_overflowing_similarities_of_snr_contrastive_are_refused():
    # The loss's own path (not a function of S alone) skipped the check: the loss was nan.
    _refused("embeddings", "normalize=False.*overflows",
             lambda: gpwref.compute("snr_contrastive", X * 1e200, y, profile="pml", normalize=False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_an_overflowing_float32_cast_is_refused(backend, normalize):
    # 2.6 * 1e39 > 3.4e38 = float32's largest: the cast gives inf (the Numba loss was nan); the
    # message says the cast overflowed, not that the input was non-finite or S overflowed float64.
    message = _refused("embeddings", "finite in float32.*cast overflows",
                       lambda: gpwref.compute("multi_similarity", X * 1e39, y, profile="pml", backend=backend,
                                              dtype="float32", normalize=normalize))
    assert "float64" not in message and "NaN" not in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_float32_cast_that_underflows_a_row_is_named(backend):
    # 1e-46 is below float32's smallest subnormal (1.4e-45): the rows are not zero in float64, the
    # cast makes them zero, and the message says so (it said "row 0 is all zeros").
    message = _refused("embeddings", "float32 underflows",
                       lambda: gpwref.compute("multi_similarity", X * 1e-46, y, profile="pml", backend=backend,
                                              dtype="float32"))
    assert "all zeros" not in message


def test_a_device_cast_that_overflows_is_named():
    pytest.importorskip("numba.cuda")
    from numba import cuda

    if gpwref.kernels.backends.cuda_unavailable_reason() is not None:
        pytest.skip("no CUDA and no simulator")
    message = _refused("embeddings", "finite in float32.*cast from float64 overflows",
                       lambda: gpwref.compute("multi_similarity", cuda.to_device(X * 1e39), y, profile="pml",
                                              backend="cuda", dtype="float32"))
    assert "must be finite (no NaN" not in message


def _tiny_row(scale):
    """X with row 0 scaled to norm ``scale`` (subnormal in the working dtype)."""
    small = X.copy()
    small[0] = X[0] / np.linalg.norm(X[0]) * scale
    return small


def _runs_on_the_plain_batch(entry, profile):
    try:
        gpwref.compute(entry.name, X, y, profile=profile)
    except gpwref.GpwrefError:
        return False
    return True


CATALOG_CASES = [pytest.param(entry.name, next(iter(entry.defaults)), id=entry.name) for entry in gpwref.CATALOG]


@pytest.mark.parametrize("loss,profile", CATALOG_CASES)
def test_a_subnormal_row_is_refused_or_finite_for_every_loss(loss, profile):
    # norm 1e-310 < 2.2e-308, float64's smallest normal: d u / d x = (I - u u^T) / |x| overflows
    # (before, 31 of the 33 losses returned infinite gradients).
    entry = gpwref.get_entry(loss)
    if not _runs_on_the_plain_batch(entry, profile):
        pytest.skip(f"{loss} needs other inputs than the plain batch")
    try:
        result = gpwref.compute(loss, _tiny_row(1e-310), y, profile=profile)
    except gpwref.GpwrefError as error:
        assert error.argument == "embeddings"
        assert "1/|x|" in error.rule and "float64" in error.rule
        return
    assert np.all(np.isfinite(result.grad_emb)) and np.isfinite(result.loss)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,scale,name", [(None, 1e-310, "float64"), ("float32", 1e-40, "float32")])
def test_a_subnormal_row_is_refused_by_the_kernels(backend, dtype, scale, name):
    message = _refused("embeddings", f"smallest normal {name}.*1/\\|x\\|",
                       lambda: gpwref.compute("multi_similarity", _tiny_row(scale), y, profile="pml", backend=backend,
                                              dtype=dtype))
    assert "row 0" in message


@pytest.mark.parametrize("backend", ["numba", "cuda"])
def test_float64_kernels_refuse_rows_whose_squares_overflow(backend):
    # The kernels sum a row's squares in float64: |x| ~ 1e200 would give an infinite norm and unit
    # rows of zeros (the NumPy reference scales first and is right).
    want = gpwref.compute("multi_similarity", X, y, profile="pml")
    assert gpwref.compute("multi_similarity", X * 1e200, y, profile="pml").loss == pytest.approx(want.loss, rel=1e-12)
    _refused("embeddings", r"\[1e-150, 1e\+150\]",
             lambda: gpwref.compute("multi_similarity", X * 1e200, y, profile="pml", backend=backend))
