"""Input validation for every entry point and backend: one place, one record (``Inputs``).

``validate`` checks host inputs (NumPy arrays, anything ``np.asarray`` takes), ``validate_device``
device inputs of the CUDA backend (checked in place, no copy); ``check_device_rows`` applies the
row rules to the norms the CUDA backend measured on the device. ``validate_similarity`` checks
``from_similarity``'s S and labels. Every refusal is a ``GpwrefError`` naming the argument and rule.

Row rules (host and device alike), in the working dtype ``work``:
* the cast to ``work`` must not overflow (float32: |x| <= 3.4e38) nor, with ``normalize=True``,
  underflow a non-zero row to zeros;
* ``normalize=True``: every row's norm must be a normal number of ``work`` (the gradient through the
  normalisation is divided by |x|; below the smallest normal, 1/|x| is not representable); the
  float64 kernels sum a row's squares in float64, so there rows must lie in [1e-150, 1e150];
* ``normalize=False``: max_i |x_i| * max_j |r_j|, a bound on every |S_ij|, must be finite in ``work``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GpwrefError, as_float_matrix, as_labels

DTYPES = {None: np.dtype(np.float64), "float64": np.dtype(np.float64), "float32": np.dtype(np.float32)}
# The float64 kernels accumulate a row's squares in float64: norms outside this range over/underflow.
KERNEL_NORM_RANGE = (1e-150, 1e150)


@dataclass(frozen=True)
class Inputs:
    """A call's validated inputs. On the host: float64 arrays (``ref`` is ``embeddings`` and
    ``ref_labels`` is ``labels`` when the batch is its own reference set) and float64 row norms. On
    the device (``on_device``): the caller's device arrays cast to ``dtype``, norms measured later."""

    embeddings: object
    labels: np.ndarray
    ref: object
    ref_labels: np.ndarray
    ref_is_batch: bool
    ref_self: np.ndarray | None
    normalize: bool
    dtype: np.dtype
    on_device: bool = False
    norms: np.ndarray | None = None
    ref_norms: np.ndarray | None = None


@dataclass(frozen=True)
class SimilarityInputs:
    """``from_similarity``'s validated S (float64), labels and reference-set rules."""

    S: np.ndarray
    labels: np.ndarray
    ref_labels: np.ndarray
    ref_is_batch: bool
    ref_self: np.ndarray | None


def work_dtype(dtype) -> np.dtype:
    """The working dtype named by ``dtype`` (None: float64)."""
    if isinstance(dtype, str) or dtype is None:
        key = dtype
    else:
        try:
            key = np.dtype(dtype).name
        except TypeError:
            key = repr(dtype)
    if key not in DTYPES:
        raise GpwrefError("dtype", "must be None (float64), 'float32' or 'float64'", repr(dtype))
    return DTYPES[key]


def check_normalize(normalize) -> bool:
    if not isinstance(normalize, (bool, np.bool_)):
        raise GpwrefError("normalize", "must be True or False", repr(normalize))
    return bool(normalize)


def is_device_array(obj) -> bool:
    """An object with ``__cuda_array_interface__`` (torch CUDA tensors, CuPy, Numba device arrays)
    or a Numba device array (including the simulator's)."""
    return obj is not None and (hasattr(obj, "__cuda_array_interface__") or bool(getattr(obj, "__cuda_ndarray__", False)))


def check_ref_self(ref_self, m: int, n: int):
    """``ref_self`` as int64 (each anchor's row in ref, -1: none), or None."""
    if ref_self is None:
        return None
    array = np.asarray(ref_self)
    if array.ndim != 1 or array.shape[0] != m or not np.issubdtype(array.dtype, np.integer):
        raise GpwrefError("ref_self", f"must be an integer array of length {m} (each anchor's row in ref, -1 for none)", f"shape {array.shape}, dtype {array.dtype}")
    if np.any(array < -1) or np.any(array >= n):
        raise GpwrefError("ref_self", f"entries must lie in [-1, {n - 1}]", f"min {array.min()}, max {array.max()}")
    return array.astype(np.int64)


def _check_ref_pairing(entry, ref, ref_labels, ref_self, argument="ref") -> None:
    if (ref is None) != (ref_labels is None):
        raise GpwrefError("ref_labels", "ref and ref_labels must be given together (or neither)")
    if ref is None and ref_self is not None:
        raise GpwrefError("ref_self", "only applies with a reference set (ref=...); the batch's own diagonal is always excluded")
    if ref is not None and not entry.supports_ref:
        raise GpwrefError(argument, f"loss '{entry.name}' is defined on the batch only; a separate reference set is not supported ({entry.limits})")


def validate(entry, embeddings, labels, ref, ref_labels, ref_self, normalize, work, *, kernel: bool = False) -> Inputs:
    """Host inputs, checked (module doc's row rules for ``work``; ``kernel``: a Numba/CUDA backend)."""
    normalize = check_normalize(normalize)
    X = as_float_matrix(embeddings, "embeddings")
    m = X.shape[0]
    y = as_labels(labels, "labels", m, "embeddings")
    _check_ref_pairing(entry, ref, ref_labels, ref_self)
    norms = row_norms(X)
    _check_rows(X, norms, "embeddings", normalize, work, kernel)
    if ref is None:
        R, yr, ref_norms, ref_is_batch = X, y, norms, True
    else:
        R = as_float_matrix(ref, "ref")
        if R.shape[1] != X.shape[1]:
            raise GpwrefError("ref", f"must have the embeddings' dimension {X.shape[1]}", f"dimension {R.shape[1]}")
        yr = as_labels(ref_labels, "ref_labels", R.shape[0], "ref")
        ref_norms = row_norms(R)
        _check_rows(R, ref_norms, "ref", normalize, work, kernel)
        ref_self = check_ref_self(ref_self, m, R.shape[0])
        ref_is_batch = False
    if not normalize:
        check_similarity_bound(norms, ref_norms, work)
    return Inputs(X, y, R, yr, ref_is_batch, ref_self, normalize, work, False, norms, ref_norms)


def row_norms(X: np.ndarray) -> np.ndarray:
    """L2 norms of float64 rows, scaled first so that no square over- or underflows."""
    largest = np.max(np.abs(X), axis=1)
    safe = np.where(largest > 0, largest, 1.0)
    scaled = X / safe[:, None]
    with np.errstate(over="ignore"):
        return largest * np.sqrt(np.einsum("ij,ij->i", scaled, scaled))


def _check_rows(X, norms, argument, normalize, work, kernel) -> None:
    finfo = np.finfo(work)
    largest = np.max(np.abs(X), axis=1)
    if work != np.float64 and np.any(largest > finfo.max):
        row = int(np.argmax(largest > finfo.max))
        raise GpwrefError(argument, f"must be finite in {work.name} (dtype='{work.name}'): the cast overflows beyond "
                          f"{finfo.max:.4g}", f"|x| = {largest[row]:.4g} in row {row}")
    if not normalize:
        return
    if np.any(largest == 0.0):
        row = int(np.argmax(largest == 0.0))
        raise GpwrefError(argument, "rows must have non-zero norm to be L2-normalised (or pass normalize=False)", f"row {row} is all zeros")
    if work != np.float64:
        cast_zero = ~np.any(X.astype(work) != 0, axis=1)
        if np.any(cast_zero):
            row = int(np.argmax(cast_zero))
            raise GpwrefError(argument, f"rows must stay non-zero in {work.name} to be L2-normalised: the cast to "
                              f"{work.name} underflows to zeros (scale the rows up or use dtype=None)",
                              f"row {row} has |x| = {norms[row]:.4g}")
    _check_norm_range(norms, argument, work, kernel)


def _check_norm_range(norms, argument, work, kernel) -> None:
    tiny = np.finfo(work).tiny
    if np.any(norms < tiny):
        row = int(np.argmax(norms < tiny))
        raise GpwrefError(argument, f"with normalize=True every row's norm must be at least {tiny:.4g}, the smallest normal "
                          f"{work.name}: the gradient through the normalisation, 1/|x|, is not representable below it "
                          "(scale the rows up or pass normalize=False)", f"row {row} has norm {norms[row]:.4g}")
    low, high = KERNEL_NORM_RANGE
    if kernel and work == np.float64:
        bad = (norms < low) | (norms > high)
        if np.any(bad):
            row = int(np.argmax(bad))
            raise GpwrefError(argument, f"with normalize=True on the Numba/CUDA kernels in float64 every row's norm must lie in "
                              f"[{low:g}, {high:g}] (they sum a row's squares in float64; use backend='numpy' or scale "
                              "the rows)", f"row {row} has norm {norms[row]:.4g}")


def check_similarity_bound(norms, ref_norms, work) -> None:
    """normalize=False: max|x_i| * max|r_j| (>= every |S_ij|) must be finite in ``work``."""
    with np.errstate(over="ignore"):
        bound = np.max(norms) * np.max(ref_norms)
    if not bound <= np.finfo(work).max:
        raise GpwrefError("embeddings", f"with normalize=False the similarities X ref^T must be finite in {work.name}: "
                          f"max_i |x_i| * max_j |r_j| (a bound on every |S_ij|) overflows {work.name} above "
                          f"{np.finfo(work).max:.4g}; scale the rows down or normalise them",
                          f"{np.max(norms):.4g} * {np.max(ref_norms):.4g}")


def check_similarities_finite(S, work) -> None:
    """After the GEMM: S must be finite (rounding may push a bound just under the limit over it)."""
    if not np.all(np.isfinite(S)):
        raise GpwrefError("embeddings", f"with normalize=False the similarities X ref^T overflow {np.dtype(work).name}; "
                          "scale the rows down or normalise them")


# ---------------------------------------------------------------------------------------------
# Device inputs (CUDA backend)


def validate_device(entry, embeddings, labels, ref, ref_labels, ref_self, normalize, dtype) -> Inputs:
    """Device inputs, checked in place; labels and ``ref_self`` (m integers) come to the host.
    ``dtype=None`` keeps the arrays' own dtype; the row rules run on the device's norms
    (``check_device_rows``)."""
    normalize = check_normalize(normalize)
    X = _device_matrix(embeddings, "embeddings")
    m, d = X.shape
    work = np.dtype(X.dtype) if dtype is None else work_dtype(dtype)
    y = as_labels(_host(labels), "labels", m, "embeddings")
    _check_ref_pairing(entry, ref, ref_labels, ref_self)
    if ref is None:
        return Inputs(X, y, X, y, True, None, normalize, work, True)
    R = _device_matrix(ref, "ref")
    if R.shape[1] != d:
        raise GpwrefError("ref", f"must have the embeddings' dimension {d}", f"dimension {R.shape[1]}")
    yr = as_labels(_host(ref_labels), "ref_labels", R.shape[0], "ref")
    ref_self = check_ref_self(_host(ref_self) if ref_self is not None else None, m, R.shape[0])
    return Inputs(X, y, R, yr, False, ref_self, normalize, work, True)


def check_device_rows(flags, norms, argument, normalize, work, cast_from=None) -> None:
    """The row rules on what the device measured: ``flags`` (1: a non-finite entry, 2: all zeros)
    and float64 ``norms`` (sqrt of the summed squares). ``cast_from``: the caller's dtype when the
    arrays were cast to ``work`` on the device."""
    if np.any(flags == 1):
        row = int(np.argmax(flags == 1))
        if cast_from is not None and np.dtype(cast_from).itemsize > np.dtype(work).itemsize:
            raise GpwrefError(argument, f"must be finite in {work.name} (dtype='{work.name}'): the cast from {np.dtype(cast_from).name} "
                              "overflows, or the input holds NaN or inf", f"non-finite value in row {row}")
        raise GpwrefError(argument, "must be finite (no NaN or inf)", f"non-finite value in row {row}")
    if not normalize:
        return
    if np.any(flags == 2):
        row = int(np.argmax(flags == 2))
        raise GpwrefError(argument, "rows must have non-zero norm to be L2-normalised (or pass normalize=False); the device "
                          "sums the squares in float64, so entries below 1e-154 count as zero",
                          f"row {row} is all zeros")
    if np.any(~np.isfinite(norms)):
        row = int(np.argmax(~np.isfinite(norms)))
        raise GpwrefError(argument, f"with normalize=True on the CUDA kernels every row's norm must lie in "
                          f"[{KERNEL_NORM_RANGE[0]:g}, {KERNEL_NORM_RANGE[1]:g}] (the device sums a row's squares in float64)",
                          f"row {row}'s squares overflow")
    _check_norm_range(norms, argument, work, kernel=True)


def _device_matrix(obj, argument):
    """A Numba device array viewing ``obj`` (no copy), checked like ``as_float_matrix``."""
    from numba import cuda

    if getattr(obj, "__cuda_ndarray__", False):
        array = obj
    elif hasattr(obj, "__cuda_array_interface__"):
        array = cuda.as_cuda_array(obj)
    else:
        raise GpwrefError(argument, "must be a device array like the embeddings (both on the GPU or both on the host)", type(obj).__name__)
    if len(array.shape) != 2:
        raise GpwrefError(argument, "must be a 2-D array (rows are samples)", f"shape {tuple(array.shape)}")
    if np.dtype(array.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise GpwrefError(argument, "must hold float32 or float64 numbers on the device", f"dtype {array.dtype}")
    if array.shape[0] == 0:
        raise GpwrefError(argument, "must have at least one row (an empty batch has no loss)", f"shape {tuple(array.shape)}")
    if array.shape[1] == 0:
        raise GpwrefError(argument, "must have at least one column", f"shape {tuple(array.shape)}")
    if not array.is_c_contiguous():
        raise GpwrefError(argument, "must be C-contiguous on the device (call .contiguous() first)", f"strides {array.strides}")
    return array


def _host(obj):
    """Labels / indices may live on the device: bring them (m integers) to the host."""
    if getattr(obj, "__cuda_ndarray__", False):
        return obj.copy_to_host()
    if hasattr(obj, "__cuda_array_interface__"):
        from numba import cuda

        return cuda.as_cuda_array(obj).copy_to_host()
    return obj


# ---------------------------------------------------------------------------------------------
# from_similarity


def validate_similarity(entry, S, labels, ref_labels, ref_self) -> SimilarityInputs:
    S = as_float_matrix(S, "S")
    m, n = S.shape
    y = as_labels(labels, "labels", m, "S")
    if ref_labels is None:
        if m != n:
            raise GpwrefError("S", "must be square when ref_labels is None (the batch is its own reference set)", f"shape {S.shape}")
        if ref_self is not None:
            raise GpwrefError("ref_self", "only applies with ref_labels (a separate reference set)")
        return SimilarityInputs(S, y, y, True, None)
    if not entry.supports_ref:
        raise GpwrefError("ref_labels", f"loss '{entry.name}' is defined on the batch only ({entry.limits})")
    yr = as_labels(ref_labels, "ref_labels", n, "S's columns")
    return SimilarityInputs(S, y, yr, False, check_ref_self(ref_self, m, n))
