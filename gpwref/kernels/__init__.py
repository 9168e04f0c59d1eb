"""Fast kernels behind ``gpwref.compute(..., backend=...)``.

* ``scalar.py``: the per-pair formulas, plain Python, compiled for both targets;
* ``cpu.py``: Numba CPU kernels (``njit(parallel=True)``, one thread per anchor row);
* ``cuda.py``: Numba CUDA kernels (one block per anchor row, no float atomics), imported lazily;
* ``backends.py``: input handling and dispatch for ``backend="numpy" | "numba" | "cuda"``;
* ``tolerance.py``: how closely a kernel result must match the float64 reference, and why.

Nothing here is imported by ``import gpwref``: ``numba.cuda`` is loaded only when the CUDA backend
is asked for, so gpwref imports on machines without a GPU driver.
"""
