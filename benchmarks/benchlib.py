"""Inputs, implementations, correctness gate and measurements shared by the benchmark files.

Every implementation computes the MS loss forward + backward (value and dL/dX) on the same inputs
with the same hyper-parameters, alpha = 2, beta = 50, lam = 0.5, eps = 0.1 (PML's loss defaults and
the paper's/official eps), under the semantics it declares (``Impl.profile``); before it is timed
its value and dL/dX must match gpwref's float64 reference for that profile (``gate``).

Inputs (docs/benchmark-design.md#inputs): class centres uniform on the sphere, X = c_y + sigma N(0, I/d),
sigma = 2 ("mid" regime: about 10 % of negatives and 80-90 % of positives mined), k = 4 per class,
except the paper's batch m = 80 = 16 classes x 5. The mined fraction is logged with every result.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

import gpwref

LOSS = "multi_similarity"
HYPER = {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": 0.1}
SIGMA = 2.0
GATE_RTOL = {"float32": 1e-4, "float64": 1e-9, "tf32": 5e-3}


def classes_per_batch(m: int) -> tuple[int, int]:
    """(classes, samples per class): the paper's 16 x 5 at m = 80, k = 4 otherwise."""
    return (16, 5) if m == 80 else (m // 4, 4)


@functools.lru_cache(maxsize=8)
def clustered(m: int, d: int, sigma: float = SIGMA, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered float64 embeddings (not normalised) and labels; cached so every impl sees the same."""
    classes, k = classes_per_batch(m)
    rng = np.random.default_rng(seed + 7919 * m + d)
    centres = rng.normal(size=(classes, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), k)
    X = centres[labels] + sigma * rng.normal(size=(m, d)) / np.sqrt(d)
    X.setflags(write=False)
    labels.setflags(write=False)
    return X, labels


@functools.lru_cache(maxsize=8)
def reference(m: int, d: int, profile: str) -> gpwref.Result:
    """gpwref's float64 NumPy reference for these inputs under ``profile``."""
    X, y = clustered(m, d)
    return gpwref.compute(LOSS, X, y, profile=profile, **HYPER)


def mined_fraction(m: int, d: int, profile: str) -> dict:
    """Fractions of the negative and positive pairs the reference mined (kept) on these inputs."""
    want = reference(m, d, profile)
    _, y = clustered(m, d)
    same = y[:, None] == y[None, :]
    return {
        "mined_neg_frac": float(want.neg_used.sum() / (~same).sum()),
        "mined_pos_frac": float(want.pos_used.sum() / max(same.sum() - m, 1)),
        "kept_pairs": int(want.neg_used.sum() + want.pos_used.sum()),
    }


# ---------------------------------------------------------------------------------------------
# implementations


@dataclass(frozen=True)
class Impl:
    """One implementation: ``prepare(X, y)`` (untimed: move data, build modules) returns a state;
    ``run(state)`` is the timed forward + backward and returns (value, dL/dX, kept pairs or None)
    with any device work finished (synchronised)."""

    name: str
    device: str  # "cpu" or "cuda"
    profile: str  # the gpwref profile whose semantics it implements
    precision: str  # "float32", "float64" or "tf32"
    prepare: Callable
    run: Callable
    max_m: int | None = None  # sizes above this are skipped (too slow by design)
    note: str = ""


def _gpwref_impl(name, backend, dtype, device="cpu"):
    def prepare(X, y):
        if backend == "cuda":
            from numba import cuda

            X_dev = cuda.to_device(np.ascontiguousarray(X, dtype=np.float32 if dtype == "float32" else np.float64))
            return {"X": X_dev, "y": cuda.to_device(np.asarray(y))}
        return {"X": np.ascontiguousarray(X, dtype=np.float32 if dtype == "float32" else np.float64), "y": y}

    def run(state):
        result = gpwref.compute(LOSS, state["X"], state["y"], profile="pml", backend=backend,
                                dtype=None if dtype == "float64" else dtype, **HYPER)
        if backend == "cuda":
            from numba import cuda

            cuda.synchronize()
        return result.loss, result.grad_emb, result

    return Impl(name, device, "pml", dtype, prepare, run)


def _torch_vectorised(X, y, alpha, beta, lam, eps):
    """A hand-vectorised torch MS loss with PML semantics (index self rule, margin on the pair)."""
    import torch

    m = X.shape[0]
    U = torch.nn.functional.normalize(X, dim=1)
    S = U @ U.T
    same = y[:, None] == y[None, :]
    pos = same & ~torch.eye(m, dtype=torch.bool, device=X.device)
    neg = ~same
    with torch.no_grad():
        inf = torch.tensor(float("inf"), dtype=S.dtype, device=S.device)
        min_pos = torch.where(pos, S, inf).amin(dim=1, keepdim=True)
        max_neg = torch.where(neg, S, -inf).amax(dim=1, keepdim=True)
        keep_neg = neg & (S + eps > min_pos)
        keep_pos = pos & (S - eps < max_neg)
    zero_col = S.new_zeros((m, 1))
    ninf = torch.tensor(float("-inf"), dtype=S.dtype, device=S.device)
    pos_term = torch.logsumexp(torch.cat([torch.where(keep_pos, -alpha * (S - lam), ninf), zero_col], dim=1), dim=1)
    neg_term = torch.logsumexp(torch.cat([torch.where(keep_neg, beta * (S - lam), ninf), zero_col], dim=1), dim=1)
    return (pos_term / alpha + neg_term / beta).mean(), (keep_pos, keep_neg)


def _torch_impl(name, device, tf32=False):
    def prepare(X, y):
        import torch

        return {"X": torch.tensor(X, dtype=torch.float32, device=device), "y": torch.tensor(y, device=device)}

    def run(state):
        import torch

        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        leaf = state["X"].detach().requires_grad_(True)
        value, kept = _torch_vectorised(leaf, state["y"], **HYPER)
        value.backward()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.backends.cuda.matmul.allow_tf32 = False
        return value.item(), leaf.grad, kept

    return Impl(name, device, "pml", "tf32" if tf32 else "float32", prepare, run)


def _pml_impl(name, device):
    def prepare(X, y):
        import torch
        from pytorch_metric_learning.losses import MultiSimilarityLoss
        from pytorch_metric_learning.miners import MultiSimilarityMiner

        return {
            "X": torch.tensor(X, dtype=torch.float32, device=device),
            "y": torch.tensor(y, device=device),
            "miner": MultiSimilarityMiner(epsilon=HYPER["eps"]),
            "loss": MultiSimilarityLoss(alpha=HYPER["alpha"], beta=HYPER["beta"], base=HYPER["lam"]),
        }

    def run(state):
        import torch

        leaf = state["X"].detach().requires_grad_(True)
        indices = state["miner"](leaf, state["y"])
        value = state["loss"](leaf, state["y"], indices)
        value.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return value.item(), leaf.grad, indices

    return Impl(name, device, "pml", "float32", prepare, run)


def _official_impl():
    """The official research-ms-loss per-anchor loop (its rules as transcribed and checked in
    verification/refs/multi_similarity.py), float32, with beta = 50 like the others."""

    def prepare(X, y):
        import torch

        return {"X": torch.tensor(X, dtype=torch.float32), "y": np.asarray(y)}

    def run(state):
        from gpwref_verification.refs.multi_similarity import official

        leaf = state["X"].detach().requires_grad_(True)
        value = official(leaf, state["y"], None, None, None, True, **HYPER)
        value.backward()
        return value.item(), leaf.grad, None

    return Impl("ms-official-loop", "cpu", "official", "float32", prepare, run, max_m=80,
                note="O(m) Python iterations per anchor (builtin max() over a tensor, as the official code): "
                     "one call took 43-50 s at m = 1024 here, so it runs at the paper's batch only")


IMPLS: tuple[Impl, ...] = (
    _gpwref_impl("numpy-ref-f64", "numpy", "float64"),
    _gpwref_impl("numpy-f32", "numpy", "float32"),
    _gpwref_impl("numba-f32", "numba", "float32"),
    _gpwref_impl("numba-f64", "numba", "float64"),
    _torch_impl("torch-cpu", "cpu"),
    _pml_impl("pml-cpu", "cpu"),
    _official_impl(),
    _gpwref_impl("numba-cuda-f32", "cuda", "float32", device="cuda"),
    _torch_impl("torch-cuda", "cuda"),
    _torch_impl("torch-cuda-tf32", "cuda", tf32=True),
    _pml_impl("pml-cuda", "cuda"),
)


def gpu_available() -> tuple[bool, str]:
    """(a real GPU usable by both torch and numba-cuda?, why not)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
    except ImportError:
        return False, "torch is not installed"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False, "NUMBA_ENABLE_CUDASIM=1 (the simulator is never timed)"
    from numba import cuda

    if not cuda.is_available():
        return False, "numba.cuda sees no GPU"
    return True, ""


# ---------------------------------------------------------------------------------------------
# correctness gate and measurements


def to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        return array.detach().cpu().double().numpy()
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host().astype(np.float64)
    return np.asarray(array, dtype=np.float64)


def kept_counts(kept) -> tuple[int, int] | None:
    """(kept positive pairs, kept negative pairs) from what an implementation returned."""
    if kept is None:
        return None
    if isinstance(kept, gpwref.Result):
        return int(to_numpy(kept.pos_used).sum()), int(to_numpy(kept.neg_used).sum())
    if len(kept) == 2:  # torch masks
        return int(kept[0].sum().item()), int(kept[1].sum().item())
    return len(kept[0]), len(kept[2])  # PML indices (a1, p, a2, n)


def gate(impl: Impl, value: float, grad, kept, m: int, d: int) -> dict:
    """Compare one run with the float64 reference of the impl's profile; raise AssertionError
    (the benchmark then fails and its time does not count) beyond the precision's tolerance.
    Mined pairs must agree too, up to 1e-4 of them (pairs within round-off of the boundary)."""
    want = reference(m, d, impl.profile)
    grad = to_numpy(grad)
    value_err = abs(value - want.loss) / max(abs(want.loss), 1e-30)
    grad_err = float(np.max(np.abs(grad - want.grad_emb)) / max(np.max(np.abs(want.grad_emb)), 1e-30))
    tol = GATE_RTOL[impl.precision]
    info = {"err_value": value_err, "err_grad_emb": grad_err, "gate_rtol": tol}
    counts = kept_counts(kept)
    if counts is not None:
        want_counts = (int(want.pos_used.sum()), int(want.neg_used.sum()))
        flipped = abs(counts[0] - want_counts[0]) + abs(counts[1] - want_counts[1])
        info["mined_pairs_flipped"] = flipped
        assert flipped <= 1e-4 * sum(want_counts), f"{impl.name} mined {counts}, the reference {want_counts}"
    assert value_err <= tol and grad_err <= tol, f"{impl.name} disagrees with the reference: {info}"
    return info


def peak_rss_delta(fn) -> int | None:
    """Peak resident memory above the starting point during one call of ``fn`` (bytes), using the
    kernel's resettable high-water mark (/proc/self/clear_refs); None where that is unavailable."""
    try:
        base = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    fn()
    peak = _status_kib("VmHWM")
    return max(0, (peak - base) * 1024)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def gpu_peak_bytes(impl: Impl, state) -> int | None:
    """Peak device memory of one call: torch's allocator statistics for torch/PML, the drop in
    free device memory for Numba (a lower bound: Numba frees its arrays when they are collected)."""
    import torch

    if impl.name.startswith("numba"):
        from numba import cuda

        free_before, _ = cuda.current_context().get_memory_info()
        result = impl.run(state)
        free_after, _ = cuda.current_context().get_memory_info()
        del result
        return max(0, free_before - free_after)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    impl.run(state)
    return torch.cuda.max_memory_allocated() - base


def rounds_for(seconds_per_call: float) -> int:
    """Repeats: at least 7, and enough for about 0.5 s, capped for slow calls (docs/benchmark-design.md#procedure)."""
    return int(min(50, max(7, np.ceil(0.5 / max(seconds_per_call, 1e-6)))))
