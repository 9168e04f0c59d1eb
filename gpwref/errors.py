"""One error type for the whole library, and the input checks that raise it.

Every message names the argument and the rule it broke, so that a caller never has to read our
source to learn what went wrong (docs/oracle-contract.md#bad-input).
"""

from __future__ import annotations

import os

import numpy as np


class GpwrefError(ValueError):
    """Raised for any input that gpwref refuses. Subclasses ValueError so generic handlers work."""

    def __init__(self, argument: str, rule: str, got: object = None):
        self.argument = argument
        self.rule = rule
        message = f"{argument}: {rule}"
        if got is not None:
            message += f" (got {got})"
        super().__init__(message)


def _host_array(value):
    """A torch tensor as a NumPy array on the host (gpwref only reads it: detached, floats as
    float64, which holds float16/bfloat16/float32 exactly); anything else unchanged. torch is never
    imported here: a tensor is recognised by its type's module."""
    if not type(value).__module__.startswith("torch") or not hasattr(value, "detach"):
        return value
    try:
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.double()
        return tensor.numpy()
    except Exception:  # pragma: no cover - e.g. a sparse or meta tensor
        return value


def as_float_matrix(value, argument: str, *, allow_empty_rows: bool = False) -> np.ndarray:
    """A 2-D array of finite real numbers, returned as float64 (a copy only when needed). A torch
    tensor (any device or float dtype, with or without requires_grad) is read as float64 on the host."""
    try:
        array = np.asarray(_host_array(value))
    except Exception as exc:  # pragma: no cover - exotic objects
        raise GpwrefError(argument, "must be convertible to a NumPy array", type(value).__name__) from exc
    if array.ndim != 2:
        raise GpwrefError(argument, "must be a 2-D array (rows are samples)", f"shape {array.shape}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise GpwrefError(argument, "must hold real numbers", f"dtype {array.dtype}")
    if array.shape[0] == 0 and not allow_empty_rows:
        raise GpwrefError(argument, "must have at least one row (an empty batch has no loss)", f"shape {array.shape}")
    if array.shape[1] == 0:
        raise GpwrefError(argument, "must have at least one column", f"shape {array.shape}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise GpwrefError(argument, "must be finite (no NaN or inf)", f"non-finite value at row {bad[0]}, column {bad[1]}")
    return array


def as_labels(value, argument: str, length: int, length_argument: str) -> np.ndarray:
    """A 1-D integer label vector of the given length, returned as int64 (a torch tensor is read on the host)."""
    try:
        array = np.asarray(_host_array(value))
    except Exception as exc:  # pragma: no cover - exotic objects
        raise GpwrefError(argument, "must be convertible to a NumPy array", type(value).__name__) from exc
    if array.ndim != 1:
        raise GpwrefError(argument, "must be a 1-D array of integer class labels", f"shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise GpwrefError(argument, "must have an integer dtype (class ids), not floats or booleans", f"dtype {array.dtype}")
    if array.shape[0] != length:
        raise GpwrefError(argument, f"must have one label per row of {length_argument} ({length})", f"length {array.shape[0]}")
    return array.astype(np.int64, copy=False)


def check_memory(rows: int, cols: int, arrays: int, argument: str, *, what: str | None = None,
                 advice: str = "use a smaller batch or a reference set in chunks") -> None:
    """Refuse up front a call whose ``arrays`` float64 work arrays of rows x cols would not fit in the
    memory this process can still get (``memory_limits``: free memory, cgroup, rlimits).
    ``what`` names one such array in the message (default: "the rows x cols pair matrices")."""
    needed = rows * cols * 8 * arrays
    available = _available_bytes()
    if available is not None and needed > available:
        tightest = [name for name, value in memory_limits().items() if value == available]
        raise GpwrefError(
            argument,
            f"{what or f'the {rows} x {cols} pair matrices'} need about {needed / 2**30:.1f} GiB "
            f"({arrays} float64 arrays) but only {available / 2**30:.1f} GiB is left "
            f"under {' and '.join(tightest) or 'the memory limits'}; {advice}",
        )


def _available_bytes() -> int | None:
    """The tightest of ``memory_limits``, or None when none is known."""
    limits = memory_limits()
    return min(limits.values()) if limits else None


def _read_text(path: str) -> str | None:
    """A small system file's text, or None when it cannot be read (tests replace this reader)."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as about 2**63


def memory_limits() -> dict[str, int]:
    """Bytes this process can still allocate under each limit that applies to it, by name:
    MemAvailable, cgroup v2 memory.max - memory.current and cgroup v1 limit - usage (of the
    process's cgroup and every ancestor), RLIMIT_AS - virtual size, RLIMIT_DATA - data size."""
    limits: dict[str, int] = {}

    def keep(name: str, value: int) -> None:
        limits[name] = max(0, min(value, limits.get(name, value)))

    meminfo = _read_text("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            keep("MemAvailable", int(line.split()[1]) * 1024)
    if "MemAvailable" not in limits:
        try:
            keep("free memory", os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for line in (_read_text("/proc/self/cgroup") or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            root, limit_file, usage_file, name = "/sys/fs/cgroup", "memory.max", "memory.current", "the cgroup v2 memory.max"
        elif "memory" in parts[1].split(","):
            root, limit_file, usage_file, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "the cgroup v1 memory limit"
        else:
            continue
        folders = [parts[2].strip("/")]
        while folders[-1]:
            folders.append(os.path.dirname(folders[-1]))
        for folder in folders:  # the process's cgroup and its ancestors (a missing one reads None)
            limit = _read_text(os.path.join(root, folder, limit_file))
            usage = _read_text(os.path.join(root, folder, usage_file))
            if limit is None or usage is None or not limit.strip().isdigit() or not usage.strip().isdigit():
                continue  # "max", absent, or outside this namespace
            if int(limit) < _UNLIMITED:
                keep(name, int(limit) - int(usage))
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return limits
    status = _read_text("/proc/self/status") or ""
    sizes = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines()
             if line.startswith(("VmSize:", "VmData:"))}
    for limit_name, size_name in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        soft = resource.getrlimit(getattr(resource, limit_name))[0]
        if soft != resource.RLIM_INFINITY and soft >= 0:
            keep(f"{limit_name} ({'ulimit -v' if limit_name == 'RLIMIT_AS' else 'ulimit -d'})", soft - sizes.get(size_name, 0))
    return limits
