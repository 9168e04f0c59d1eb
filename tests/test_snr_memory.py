"""snr_contrastive's memory guard counts what the loss really allocates: two m x n x D float64
arrays (V - U and its centred copy) plus about ten m x n matrices, i.e. 8 m n (2 D + 10) bytes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpwref
from gpwref import errors


def _batch(m, dims, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, dims)), np.arange(m) % 7


def test_guard_counts_both_three_dimensional_arrays(monkeypatch):
    """m = n = 200, D = 64: the work arrays need 8 * 200^2 * (2 * 64 + 10) bytes = 44.2 MB. A limit
    of 42 MB (above the 41.0 MB of the two m x n x D arrays alone) must refuse, 50 MB must run."""
    m, dims = 200, 64
    X, y = _batch(m, dims)
    needed = 8 * m * m * (2 * dims + 10)
    assert needed == 44_160_000
    monkeypatch.setattr(errors, "memory_limits", lambda: {"a test limit": 42_000_000})
    with pytest.raises(gpwref.GpwrefError, match=r"SNR distance's two 200 x 200 x 64 work arrays .* under a test limit"):
        gpwref.compute("snr_contrastive", X, y, profile="pml")
    monkeypatch.setattr(errors, "memory_limits", lambda: {"a test limit": 50_000_000})
    assert np.isfinite(gpwref.compute("snr_contrastive", X, y, profile="pml").loss)


def test_guard_figure_covers_the_measured_peak():
    """The guard's figure is an upper bound on the Python-visible peak (tracemalloc sees NumPy's
    allocations) and not a gross over-estimate."""
    m, dims = 150, 64
    X, y = _batch(m, dims, seed=1)
    tracemalloc.start()
    try:
        gpwref.compute("snr_contrastive", X, y, profile="pml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    guard = 8 * m * m * (2 * dims + 10)
    assert peak <= guard, (peak, guard)
    assert peak >= 0.5 * guard, (peak, guard)
