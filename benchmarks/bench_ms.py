"""MS loss forward + backward (value, grad_sim, dL/dX), every implementation on the same inputs.

Run (CPU, the committed results)::

    OPENBLAS_NUM_THREADS=2 NUMBA_NUM_THREADS=2 python -m pytest benchmarks/bench_ms.py benchmarks/bench_stages.py \
        --benchmark-json=benchmarks/results/cpu-$(date +%F).json -p no:cacheprovider

GPU implementations skip (with the reason) where there is no GPU; the simulator is never timed.
Each implementation is run twice untimed (compilation / caches / allocator warm-up), must pass the
correctness gate (``benchlib.gate``) and is then timed with at least 7 rounds; GPU calls
synchronise inside the timed function.
"""

from __future__ import annotations

import time

import pytest

import os
import subprocess
import sys

from benchlib import HYPER, IMPLS, SIGMA, classes_per_batch, clustered, gate, gpu_available, gpu_peak_bytes, mined_fraction, rounds_for

CPU_MAX_M = 8192  # docs/benchmark-design.md#sizes: the CPU sweep stops at 2^13


def _cpu_peak_bytes(impl, m, d):
    """Peak resident bytes of one call, measured in a fresh process (benchmarks/peakmem.py)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peakmem.py")
    try:
        out = subprocess.run([sys.executable, script, impl.name, str(m), str(d)], capture_output=True, text=True,
                             timeout=600, check=True)
        return int(out.stdout.split()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


@pytest.mark.parametrize("impl", IMPLS, ids=lambda impl: impl.name)
def test_ms_forward_backward(benchmark, impl, m, d):
    if impl.device == "cuda":
        ok, why = gpu_available()
        if not ok:
            pytest.skip(f"GPU benchmark, no GPU here: {why}; GPU figures are pending")
    elif m > CPU_MAX_M:
        pytest.skip(f"CPU sizes stop at m = {CPU_MAX_M}")
    if impl.max_m is not None and m > impl.max_m:
        pytest.skip(f"{impl.name} runs up to m = {impl.max_m} ({impl.note})")
    X, y = clustered(m, d)
    state = impl.prepare(X, y)
    started = time.perf_counter()
    impl.run(state)  # first call: JIT compilation or cache load, allocator warm-up
    first_call = time.perf_counter() - started
    started = time.perf_counter()
    value, grad, kept = impl.run(state)
    warm_call = time.perf_counter() - started
    checked = gate(impl, value, grad, kept, m, d)
    del value, grad, kept
    if impl.device == "cuda":
        peak = gpu_peak_bytes(impl, state)
    else:
        peak = _cpu_peak_bytes(impl, m, d)
    classes, k = classes_per_batch(m)
    benchmark.group = f"ms fwd+bwd m={m} d={d}"
    benchmark.extra_info.update({
        "impl": impl.name, "device": impl.device, "precision": impl.precision, "profile": impl.profile,
        "stage": "forward+backward", "m": m, "d": d, "classes": classes, "per_class": k, "sigma": SIGMA,
        "hyper": HYPER, "first_call_s": first_call, "flops_4m2d": 4.0 * m * m * d,
        "peak_bytes": peak, **checked, **mined_fraction(m, d, impl.profile),
        "load_average": os.getloadavg()[0],
    })
    benchmark.pedantic(impl.run, args=(state,), rounds=rounds_for(warm_call), iterations=1, warmup_rounds=1)
