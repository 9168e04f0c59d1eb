"""The CPU kernels' BLAS limit (``cpu.blas_single``) from threads other than the main one.

Each scenario runs in a fresh interpreter, because which thread first touched the BLAS thread count
is process state. OPENBLAS_NUM_THREADS=2 makes BLAS multi-threaded to start with, so a limit that
does not take effect changes the bits, and a limit that is not restored shows in the counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("threadpoolctl")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRELUDE = """
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_info

import gpwref
from gpwref.kernels import cpu

def counts():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

def grad(inputs):
    X, y = inputs
    result = gpwref.compute("multi_similarity", X, y, backend="numba", dtype="float32")
    return result.grad_emb, result.sim

rng = np.random.default_rng(0)
INPUTS = [(rng.normal(size=(600, 256)), np.arange(600) % 20) for _ in range(8)]
before = counts()
assert before and max(before) > 1, before  # else the scenario could not fail
"""


def _run(body: str) -> None:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", PYTHONPATH=ROOT)
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_other_threads_get_the_main_threads_bits_and_leave_the_counts():
    """A call from the main thread first (it used to become threadpoolctl's controlling thread),
    then the same inputs from a worker thread: identical bits, and BLAS's counts as before."""
    _run("""
        on_main = [grad(inputs) for inputs in INPUTS]
        assert counts() == before, (counts(), before)
        with ThreadPoolExecutor(1) as pool:
            on_worker = list(pool.map(grad, INPUTS))
        differ = [i for i, (a, b) in enumerate(zip(on_main, on_worker))
                  if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))]
        assert not differ, f"inputs {differ} differ between the main thread and a worker"
        assert counts() == before, (counts(), before)
    """)


def test_overlapping_blocks_from_pool_threads_restore_the_counts():
    """Two pool threads (never the main one) overlap inside blas_single, A entering first and
    leaving first; inside, BLAS runs one thread; after both threads exit the counts are as before."""
    _run("""
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        seen = {}

        def a():
            with cpu.blas_single():
                a_in.set()
                b_in.wait()
                seen["a"] = counts()
            a_out.set()

        def b():
            a_in.wait()
            with cpu.blas_single():
                b_in.set()
                a_out.wait()
                seen["b"] = counts()

        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(a), pool.submit(b)]:
                future.result()
        assert seen == {"a": [1] * len(before), "b": [1] * len(before)}, seen
        assert counts() == before, (counts(), before)
    """)


def test_concurrent_calls_from_pool_threads_match_and_restore():
    """Many overlapping calls from two pool threads first, then the main thread: the same bits
    everywhere, and BLAS's counts as before once the threads are gone."""
    _run("""
        with ThreadPoolExecutor(2) as pool:
            on_pool = list(pool.map(grad, INPUTS + INPUTS))
        assert counts() == before, (counts(), before)
        on_main = [grad(inputs) for inputs in INPUTS]
        for i, (a, b) in enumerate(zip(on_main + on_main, on_pool)):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), f"input {i % 8} differs"
        assert counts() == before, (counts(), before)
    """)
