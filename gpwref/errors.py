"""One error type for the whole library, and the input checks that raise it.

Every message names the argument and the rule it broke, so that a caller never has to read our
source to learn what went wrong (SPEC.md, "Bad input").
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


def as_float_matrix(value, argument: str, *, allow_empty_rows: bool = False) -> np.ndarray:
    """A 2-D array of finite real numbers, returned as float64 (a copy only when needed)."""
    try:
        array = np.asarray(value)
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
    """A 1-D integer label vector of the given length, returned as int64."""
    array = np.asarray(value)
    if array.ndim != 1:
        raise GpwrefError(argument, "must be a 1-D array of integer class labels", f"shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise GpwrefError(argument, "must have an integer dtype (class ids), not floats or booleans", f"dtype {array.dtype}")
    if array.shape[0] != length:
        raise GpwrefError(argument, f"must have one label per row of {length_argument} ({length})", f"length {array.shape[0]}")
    return array.astype(np.int64, copy=False)


def check_memory(rows: int, cols: int, arrays: int, argument: str) -> None:
    """Refuse up front a call whose m x n work arrays would not fit in available memory."""
    needed = rows * cols * 8 * arrays
    available = _available_bytes()
    if available is not None and needed > available:
        raise GpwrefError(
            argument,
            f"the {rows} x {cols} pair matrices need about {needed / 2**30:.1f} GiB "
            f"({arrays} float64 arrays) but only {available / 2**30:.1f} GiB is available; "
            "use a smaller batch or a reference set in chunks",
        )


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
