"""Benchmark set-up: pinned threads, the size matrix, and the machine/versions record.

Threads are pinned to 2 (BLAS, Numba, torch; override with GPWREF_BENCH_THREADS) before anything
heavy is imported, so every implementation gets the same cores. ``--gpwref-m`` / ``--gpwref-d``
choose sizes (comma-separated); by default the CPU matrix is m in {80, 1024, 4096} x d in {128, 512},
and on a machine with a GPU the GPU implementations also run m = 16384, 32768, 65536.
"""

from __future__ import annotations

import os
import platform
import sys

THREADS = os.environ.get("GPWREF_BENCH_THREADS", "2")
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, THREADS)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # verification/

CPU_M = (80, 1024, 4096)
GPU_EXTRA_M = (16384, 32768, 65536)
DEFAULT_D = (128, 512)


def pytest_addoption(parser):
    group = parser.getgroup("gpwref")
    group.addoption("--gpwref-m", default=None, help="comma-separated batch sizes (default 80,1024,4096 [+GPU sizes])")
    group.addoption("--gpwref-d", default=None, help="comma-separated dimensions (default 128,512)")


def _ints(text, default):
    return tuple(int(v) for v in text.split(",")) if text else default


def pytest_generate_tests(metafunc):
    from benchlib import gpu_available

    if "m" in metafunc.fixturenames:
        sizes = _ints(metafunc.config.getoption("--gpwref-m"), None)
        if sizes is None:
            sizes = CPU_M + (GPU_EXTRA_M if gpu_available()[0] else ())
        metafunc.parametrize("m", sizes)
    if "d" in metafunc.fixturenames:
        metafunc.parametrize("d", _ints(metafunc.config.getoption("--gpwref-d"), DEFAULT_D))


def pytest_configure(config):
    import numba
    import torch

    from gpwref.kernels import cpu

    torch.set_num_threads(int(THREADS))
    numba.set_num_threads(min(int(THREADS), numba.config.NUMBA_NUM_THREADS))
    cpu.set_max_threads(int(THREADS))  # gpwref's CPU kernels run on their own thread pool
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(THREADS))
    except ImportError:  # pragma: no cover
        pass


def pytest_benchmark_update_machine_info(config, machine_info):
    """Versions, thread settings, BLAS, CPU model and the GPU (or why there is none)."""
    import numba
    import numpy
    import torch

    from benchlib import gpu_available

    info = {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "threads": {"requested": THREADS, "gpwref_cpu_pool": _gpwref_threads(), "torch": torch.get_num_threads(),
                    "numba_threading_layer": _threading_layer()},
        "cpu_model": _cpu_model(),
        "load_average_at_start": os.getloadavg(),  # other processes on a shared machine inflate wall times
        "logical_cpus": os.cpu_count(),
        "mem_total_gib": _mem_total_gib(),
    }
    for module in ("pytorch_metric_learning", "numba_cuda", "scipy"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: v.get(k) for k in ("internal_api", "version", "num_threads", "architecture")} for v in threadpool_info()]
    except ImportError:  # pragma: no cover
        info["blas"] = None
    ok, why = gpu_available()
    if ok:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
                       "cuda_runtime": torch.version.cuda,
                       "torch_float32_matmul_precision": torch.get_float32_matmul_precision()}
    else:
        info["gpu"] = None
        info["gpu_absent_because"] = why
    machine_info["gpwref"] = info


def _gpwref_threads():
    from gpwref.kernels import cpu

    return cpu.max_threads()


def _threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # not initialised until the first parallel kernel runs
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total_gib():
    try:
        with open("/proc/meminfo") as handle:
            return round(int(handle.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None
