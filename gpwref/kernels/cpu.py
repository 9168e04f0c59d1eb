"""Numba CPU kernels: parallel over anchors (rows), one thread owns a row, fixed reduction order.

Each kernel writes only its own rows of the outputs and keeps its accumulators in local variables,
so there are no races and two runs give identical bits whatever the thread schedule or chunking
(rows run in chunks on gpwref's own thread pool, not Numba's OpenMP layer: see "Parallel rows without
OpenMP" below). The GEMMs (S = U V^T and the embedding gradient) are BLAS, called one thread per
call on blocks of rows on the same pool (``matmul_rows``; ``gram`` forms S = U U^T on the batch as its
lower triangle and a tiled mirror; see "BLAS on the pool, one thread per call").

The MS row kernels visit an m x m matrix in two steps per row: a branch-free sweep that collects the
columns that can carry a weight (same label, or kept by the exact mining test), then the weights of
those columns only; with mining most negatives are in neither set, and the sweep costs them no
mispredicted branch (timings: benchmarks/README.md, "Kernel design notes").

The per-pair formulas come from ``scalar.py`` (compiled here with ``njit(inline="always")``); the
CUDA kernels in ``cuda.py`` compile the same functions as device functions.

The MS loss on the batch as its own reference set (the training case) never transposes G: with S
exactly symmetric, ``(G + G^T)_ij = G_ij + G_ji`` where G_ji is the weight of pair (j, i), a function
of S_ji = S_ij and of row j's statistics. So one pass collects every row's statistics
(``ms_row_stats``) and a second pass writes row i of G and of H = G + G^T together
(``ms_rows_symmetric``), both streaming along rows; a transposed sweep through an m x m matrix is
many times slower than a streaming one (every row segment is a separate cache and TLB miss).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np

from . import scalar

_S = scalar.compile_all(numba.njit(inline="always", cache=True))
pair_kind = _S["pair_kind"]
ms_keep_negative = _S["ms_keep_negative"]
ms_keep_positive = _S["ms_keep_positive"]
ms_positive_logit = _S["ms_positive_logit"]
ms_negative_logit = _S["ms_negative_logit"]
ms_pair_weight = _S["ms_pair_weight"]
ms_negative_scale = _S["ms_negative_scale"]
ms_negative_weight_unshifted = _S["ms_negative_weight_unshifted"]
log1p_sum_exp = _S["log1p_sum_exp"]
add_one_total = _S["add_one_total"]
softplus = _S["softplus"]
logistic = _S["logistic"]
binomial_positive_logit = _S["binomial_positive_logit"]
binomial_negative_logit = _S["binomial_negative_logit"]
contrastive_pair = _S["contrastive_pair"]

f64 = np.float64
POSITIVE = scalar.POSITIVE
NEGATIVE = scalar.NEGATIVE

_inline = numba.njit(inline="always", cache=True)


# ---------------------------------------------------------------------------------------------
# Parallel rows without OpenMP
#
# A kernel is compiled serial (``nogil``) over rows ``[row0, row1)``; ``rows_kernel`` runs it in chunks
# on gpwref's thread pool, not OpenMP, whose spinning workers fought BLAS for the cores (benchmarks/README.md,
# "Kernel design notes"). Each chunk writes only its own rows, in row order: the bits do not depend on the schedule.

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
CHUNKS_PER_THREAD = 4  # load balance when the machine is shared


_max_threads: int | None = None


def max_threads() -> int:
    """Threads of the pool: ``set_max_threads``'s value, else Numba's configured thread count
    (``NUMBA_NUM_THREADS``, default: the CPUs)."""
    return _max_threads or max(1, int(numba.config.NUMBA_NUM_THREADS))


def set_max_threads(count: int) -> None:
    """Use at most ``count`` threads for the CPU kernels from now on (the pool is rebuilt)."""
    global _max_threads, _pool
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
        from ..errors import GpwrefError

        raise GpwrefError("count", "must be a positive integer", repr(count))
    with _pool_lock:
        _max_threads = int(count)
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


_pool_pid: int | None = None


def _executor() -> ThreadPoolExecutor:
    """The pool, created on first use, and again in a forked child (which inherits the pool object
    but none of its threads: work submitted there would never run)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=max_threads(), thread_name_prefix="gpwref-rows")
            _pool_pid = os.getpid()
        return _pool


@contextmanager
def threads(count: int):
    """Run the kernels called in this block (on this thread) on at most ``count`` threads."""
    previous = getattr(_local, "threads", None)
    _local.threads = max(1, min(int(count), max_threads()))
    try:
        yield
    finally:
        _local.threads = previous


def run_rows(compiled, items: int, args: tuple) -> None:
    """``compiled(*args, row0, row1)`` over ``[0, items)``: on this thread, or in chunks on the pool."""
    workers = min(getattr(_local, "threads", None) or max_threads(), items)
    if workers <= 1:
        compiled(*args, 0, items)
        return
    chunks = min(items, workers * CHUNKS_PER_THREAD)
    bounds = [items * c // chunks for c in range(chunks + 1)]
    futures = [_executor().submit(compiled, *args, bounds[c], bounds[c + 1]) for c in range(chunks)]
    for future in futures:
        future.result()


def run_items(work, items) -> None:
    """``work(item)`` for each item: on this thread, or on the pool, one task per item taken in the
    order given by whichever worker is free (list the costliest items first for balance). Each item
    must write only its own part of the outputs, so the result does not depend on the schedule."""
    items = list(items)
    workers = min(getattr(_local, "threads", None) or max_threads(), len(items))
    if workers <= 1:
        for item in items:
            work(item)
        return
    futures = [_executor().submit(work, item) for item in items]
    for future in futures:
        future.result()


# ---------------------------------------------------------------------------------------------
# BLAS on the pool, one thread per call
#
# OpenBLAS's own threads spin for a while after every call (``OPENBLAS_THREAD_TIMEOUT``, about 0.1 s
# by default) waiting for the next one; on 2 cores they took the cores from the Numba kernels that
# follow each GEMM (and NumPy and SciPy each load their own OpenBLAS, with its own spinning threads).
# Measured at m = 4096, d = 512, float32, 2 threads (benchmarks/README.md): the same pipeline took
# 409 ms with BLAS's threads spinning and 266 ms with OPENBLAS_THREAD_TIMEOUT=4 (they then sleep at
# once; an environment variable read when OpenBLAS loads, which a library cannot set). The
# kernels therefore call BLAS limited to one thread (``blas_single``) and split each GEMM into fixed
# blocks of rows run on gpwref's pool (``matmul_rows``, ``gram``): BLAS's threads are never woken,
# and since the blocks do not depend on the thread count, neither do the bits.
#
# The limit is set through each library's own process-wide call (ctypes on the libraries that
# threadpoolctl finds), not threadpoolctl's ``limit``: for a pthreads OpenBLAS threadpoolctl obeys
# only the first thread that set a count and silently ignores the others, so a call from any other
# thread ran BLAS multi-threaded (other bits) and could leave BLAS at one thread for good. OpenBLAS's
# ``openblas_set_num_threads_local`` is no way out: in a pthreads build it is process-wide too.

_OPENBLAS_AFFIXES = [(prefix, suffix) for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]


class _BlasThreads:
    """One loaded BLAS library's process-wide thread count: ``get()`` and ``set(count)``."""

    def __init__(self, controller):
        self.name = controller.filepath
        self.get, self.set = controller.get_num_threads, controller.set_num_threads
        if controller.internal_api == "openblas" and getattr(controller, "threading_layer", None) != "openmp":
            for prefix, suffix in _OPENBLAS_AFFIXES:  # e.g. scipy_openblas_set_num_threads64_
                getter = getattr(controller.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
                setter = getattr(controller.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if getter is not None and setter is not None:
                    getter.restype, setter.restype, setter.argtypes = ctypes.c_int, None, [ctypes.c_int]
                    self.get, self.set = getter, setter
                    break


def _find_blas() -> list:
    try:
        from threadpoolctl import ThreadpoolController

        return [_BlasThreads(lib) for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
    except Exception:  # pragma: no cover - threadpoolctl missing or unable to inspect
        return []


_blas_libraries: list | None = None
_blas_lock = threading.Lock()
_blas_users = 0  # blocks inside blas_single now, over every thread
_blas_found: list = []  # (library, its count when the first of them entered), restored by the last


@contextmanager
def blas_single():
    """Limit the loaded BLAS libraries to one thread within this block. Without threadpoolctl this
    does nothing (BLAS then runs its own threads, which is correct but slower).

    The limit is process-wide and does not depend on which thread enters: the first block to enter
    (on any thread) records each library's count and sets one, the last to leave sets the recorded
    counts back, so nested and overlapping calls from several threads never leave BLAS
    single-threaded. While any block is inside, BLAS called elsewhere in the process runs
    single-threaded too."""
    global _blas_libraries, _blas_users, _blas_found
    with _blas_lock:
        if _blas_libraries is None:
            _blas_libraries = _find_blas()
        if _blas_users == 0:
            _blas_found = [(library, library.get()) for library in _blas_libraries]
            for library, count in _blas_found:
                if count != 1:
                    library.set(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for library, count in _blas_found:
                    if count != 1:
                        library.set(count)
                _blas_found = []


# Rows per BLAS call in ``matmul_rows`` and ``gram``: the GEMM's efficiency is flat from 256 rows
# up (one thread, 4096 x 4096 @ 4096 x 512, float32: 179 ms at 256 rows, 173 ms whole).
BLAS_BLOCK_ROWS = 256


def matmul_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` (C-ordered result) as single-threaded BLAS calls on blocks of A's rows, in parallel."""
    out = np.empty((A.shape[0], B.shape[1]), dtype=np.result_type(A, B))

    def block(row0):
        np.matmul(A[row0:row0 + BLAS_BLOCK_ROWS], B, out=out[row0:row0 + BLAS_BLOCK_ROWS])

    with blas_single():
        run_items(block, range(0, A.shape[0], BLAS_BLOCK_ROWS))
    return out


def rows_kernel(count):
    """Decorator: compile ``fn(*args, row0, row1)`` serial (nogil, cached) and return ``f(*args)``
    that runs its ``count(*args)`` rows in parallel (``run_rows``); ``f.compiled`` is the kernel."""

    def wrap(fn):
        compiled = numba.njit(cache=True, nogil=True)(fn)

        @functools.wraps(fn)
        def run(*args):
            run_rows(compiled, count(*args), args)

        run.compiled = compiled
        return run

    return wrap


def _rows_of_first(*args) -> int:
    return args[0].shape[0]


def _symmetric_rows(*args) -> int:
    return args[-3].shape[0]  # ms_rows_symmetric(..., row0, G, H, pos_used, neg_used): H's rows


@rows_kernel(_rows_of_first)
def unit_rows(X, U, norms, row0, row1):
    """``norms[i] = |X_i|`` (accumulated in float64) and ``U_i = X_i / |X_i|`` in U's dtype.

    A zero row gets norm 0 and is left unwritten; the caller refuses it before using U.
    """
    m, d = X.shape
    for i in range(row0, row1):
        total = 0.0
        for k in range(d):
            total += np.float64(X[i, k]) * np.float64(X[i, k])
        norm = math.sqrt(total)
        norms[i] = norm
        if norm > 0.0:
            for k in range(d):
                U[i, k] = X[i, k] / norm


@rows_kernel(_rows_of_first)
def ms_row_stats(S, labels, ref_labels, self_col, same_order, same_start, same_end, value_rule, self_threshold,
                 mine, eps, compare, skip_empty, alpha, beta, lam, inf, extremes, kept, sums, per_anchor, counts, row0, row1):
    """MS loss, the statistics of every anchor row: mining thresholds, kept sets, log-sum-exps, value.

    Per row i: ``extremes[i] = (min_pos, max_neg)`` (S's dtype), ``kept[i] = (any positive kept, any
    negative kept)``, ``sums[i] = (top_pos, top_neg, total_pos, total_neg, negative row factor)``
    (float64: the largest kept logits, at least 0, the add-one softmax denominators
    ``exp(-top) + sum exp(z - top)``, and ``scalar.ms_negative_scale``),
    ``per_anchor[i]`` (already / m), ``counts[i] = (positives, negatives, kept positives, kept
    negatives)``. ``self_col[i]`` is anchor i's own column (-1: none); ``mine=False`` keeps every
    pair (eps None); ``skip_empty`` drops an anchor whose kept positive or kept negative set is empty.

    The same-label columns of row i are ``same_order[same_start[i]:same_end[i]]`` (columns sorted by
    label, in increasing order within a label), so the positives (few) are visited directly:
    (1) positives: min_pos; (2) one streaming pass over the row: max_neg, and the kept negatives'
    exponentials summed with the running maximum taken out (rescaled when it grows); (3) positives
    again: their exponentials, now that max_neg decides which are kept.

    Precision: comparisons (self rule, mining) in S's dtype, with ``self_threshold``, ``eps`` and
    ``inf`` given in that dtype, as the reference does when run in float32; logits, exponentials,
    sums and values in float64 (``alpha``, ``beta``, ``lam`` are float64), so a float32 kernel's
    weights differ from the float64 reference only through S's own rounding and G's final rounding.
    """
    m, n = S.shape
    candidates = np.empty(n, dtype=np.int64)
    for i in range(row0, row1):
        label = labels[i]
        own = self_col[i]
        lo = same_start[i]
        hi = same_end[i]
        # (1) positives
        min_pos = inf
        n_pos = 0
        for q in range(lo, hi):
            j = same_order[q]
            s = S[i, j]
            if pair_kind(s, True, j == own, value_rule, self_threshold) == POSITIVE:
                n_pos += 1
                if s < min_pos:
                    min_pos = s
        n_neg = n - (hi - lo)
        # (2) negatives: max_neg and, for those kept against min_pos, the running log-sum-exp
        max_neg = -inf
        top_neg = 0.0  # the add-one term's logit is 0
        sum_neg = 0.0
        kept_neg = 0
        can_keep = n_pos > 0 or not mine
        # without branches: max_neg, and the kept negatives' columns (in increasing order)
        count = 0
        for j in range(n):
            s = S[i, j]
            negative = ref_labels[j] != label
            max_neg = max(max_neg, s if negative else -inf)
            candidates[count] = j
            count += negative & can_keep & ((not mine) | ms_keep_negative(s, min_pos, eps, compare))
        for c in range(count):
            z = ms_negative_logit(f64(S[i, candidates[c]]), beta, lam)
            if z > top_neg:
                sum_neg = sum_neg * math.exp(top_neg - z)
                top_neg = z
            sum_neg += math.exp(z - top_neg)
        kept_neg = count
        # (3) positives kept against max_neg
        any_pos = n_pos > 0 and (not mine or ms_keep_positive(min_pos, max_neg, eps, compare))
        any_neg = kept_neg > 0
        top_pos = max(ms_positive_logit(f64(min_pos), alpha, lam), 0.0) if any_pos else 0.0
        sum_pos = 0.0
        kept_pos = 0
        if any_pos:
            for q in range(lo, hi):
                j = same_order[q]
                s = S[i, j]
                if pair_kind(s, True, j == own, value_rule, self_threshold) == POSITIVE:
                    if not mine or ms_keep_positive(s, max_neg, eps, compare):
                        sum_pos += math.exp(ms_positive_logit(f64(s), alpha, lam) - top_pos)
                        kept_pos += 1
        if skip_empty and not (any_pos and any_neg):
            any_pos = False
            any_neg = False
            top_pos = 0.0
            top_neg = 0.0
            sum_pos = 0.0
            sum_neg = 0.0
            kept_pos = 0
            kept_neg = 0
        if not any_neg:
            top_neg = 0.0
            sum_neg = 0.0
        extremes[i, 0] = min_pos
        extremes[i, 1] = max_neg
        kept[i, 0] = any_pos
        kept[i, 1] = any_neg
        sums[i, 0] = top_pos
        sums[i, 1] = top_neg
        sums[i, 2] = add_one_total(sum_pos, top_pos)
        sums[i, 3] = add_one_total(sum_neg, top_neg)
        sums[i, 4] = ms_negative_scale(top_neg, sums[i, 3])
        # the reference's order of operations: (lse_pos / alpha + lse_neg / beta) / m
        per_anchor[i] = (log1p_sum_exp(sum_pos, top_pos) / alpha + log1p_sum_exp(sum_neg, top_neg) / beta) / m
        counts[i, 0] = n_pos
        counts[i, 1] = n_neg
        counts[i, 2] = kept_pos
        counts[i, 3] = kept_neg


@_inline
def _negative_weight(s, z, exp_z, keep, row, extremes, kept, sums, mine, eps, compare, alpha, beta, lam, m):
    """G of a negative pair kept by ``row``: the unshifted form when the row allows it, else the
    shifted one (``scalar.ms_pair_weight``). Depends on the row only, so every kernel gives the same bits."""
    if not keep:
        return 0.0
    if sums[row, 4] >= 0.0:
        return ms_negative_weight_unshifted(exp_z, sums[row, 4], m)
    g, _, _ = ms_pair_weight(s, NEGATIVE, extremes[row, 0], extremes[row, 1], kept[row, 0], kept[row, 1],
                             sums[row, 0], sums[row, 1], sums[row, 2], sums[row, 3], mine, eps, compare, alpha, beta, lam, m)
    return g


@rows_kernel(_rows_of_first)
def ms_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, mine, eps, compare,
            alpha, beta, lam, extremes, kept, sums, G, pos_used, neg_used, row0, row1):
    """MS loss, G and the kept-pair masks from ``ms_row_stats``' statistics (any reference set).

    G and the masks must come in zeroed: only kept pairs are written (with mining most negatives
    are not kept, and ``np.zeros`` memory costs nothing until it is touched).
    """
    m, n = S.shape
    for i in range(row0, row1):
        label = labels[i]
        own = self_col[i]
        min_pos = extremes[i, 0]
        any_neg = kept[i, 1]
        for j in range(n):
            s = S[i, j]
            if ref_labels[j] != label:
                if any_neg and (not mine or ms_keep_negative(s, min_pos, eps, compare)):
                    z = ms_negative_logit(f64(s), beta, lam)
                    exp_z = math.exp(z) if sums[i, 4] >= 0.0 else 0.0
                    G[i, j] = _negative_weight(s, z, exp_z, True, i, extremes, kept, sums, mine, eps, compare, alpha, beta, lam, m)
                    neg_used[i, j] = True
                continue
            kind = pair_kind(s, True, j == own, value_rule, self_threshold)
            g, keep_p, _ = ms_pair_weight(s, kind, min_pos, extremes[i, 1], kept[i, 0], any_neg,
                                          sums[i, 0], sums[i, 1], sums[i, 2], sums[i, 3],
                                          mine, eps, compare, alpha, beta, lam, m)
            if keep_p:
                G[i, j] = g
                pos_used[i, j] = True


@rows_kernel(_symmetric_rows)
def ms_rows_symmetric(S, labels, value_rule, self_threshold, mine, eps, compare, alpha, beta, lam,
                      extremes, kept, sums, row0, G, H, pos_used, neg_used, first, stop):
    """MS loss on the batch (S square and exactly symmetric): rows ``row0 .. row0 + len(H)`` of G, of
    the masks, and of H = G + G^T (``H[r]`` is row ``row0 + r``).

    ``H_ij = G_ij + G_ji`` with G_ji computed here from S_ij (= S_ji) and row j's statistics; both
    are rounded to G's dtype before the addition, so H equals ``G + G.T`` bit for bit. G, H and the
    masks must come in zeroed: a pair that neither row keeps (most negatives, with mining) is
    recognised with the mining test alone and not written. A negative kept by either row costs one
    exponential e^z for both weights (the unshifted form, when the rows allow it).
    """
    m = S.shape[0]
    min_pos = np.ascontiguousarray(extremes[:, 0])
    any_neg = np.ascontiguousarray(kept[:, 1])
    row_scale = np.ascontiguousarray(sums[:, 4])  # the unshifted form's row factor, -1: not usable
    flags = np.empty(m, dtype=np.uint8)
    candidates = np.empty(m, dtype=np.int64)
    for r in range(first, stop):  # rows row0 + first .. row0 + stop of this call's block
        i = row0 + r
        label = labels[i]
        # (1) without branches (a loop of flags that vectorises, then the compaction), the columns that
        # can carry a weight: same label, or a negative that row i or row j keeps by the exact mining test
        min_pos_i = min_pos[i]
        for j in range(m):
            s = S[i, j]
            flags[j] = (labels[j] == label) | (not mine) | ms_keep_negative(s, min_pos_i, eps, compare) \
                | ms_keep_negative(s, min_pos[j], eps, compare)
        count = 0
        for j in range(m):
            candidates[count] = j
            count += flags[j]
        # (2) those columns' weights
        for c in range(count):
            j = candidates[c]
            s = S[i, j]
            if labels[j] != label:  # a negative for both rows: kept by row i? by row j?
                keep_i = any_neg[i] & ((not mine) | ms_keep_negative(s, min_pos[i], eps, compare))
                keep_j = any_neg[j] & ((not mine) | ms_keep_negative(s, min_pos[j], eps, compare))
                z = ms_negative_logit(f64(s), beta, lam)
                if not ((keep_i & (row_scale[i] < 0.0)) | (keep_j & (row_scale[j] < 0.0))):
                    # the common case, with no branch on which of the two rows keeps the pair (a coin
                    # toss for the predictor): both weights in the unshifted form, 0 where not kept
                    # (G and H come in zeroed, so writing 0 changes nothing)
                    exp_z = math.exp(z)
                    G[i, j] = ms_negative_weight_unshifted(exp_z, row_scale[i], m) if keep_i else 0.0
                    H[r, j] = ms_negative_weight_unshifted(exp_z, row_scale[j], m) if keep_j else 0.0
                    H[r, j] = G[i, j] + H[r, j]
                    neg_used[i, j] = keep_i
                    continue
                if not (keep_i or keep_j):
                    continue
                fast = (keep_i and sums[i, 4] >= 0.0) or (keep_j and sums[j, 4] >= 0.0)
                exp_z = math.exp(z) if fast else 0.0
                g = _negative_weight(s, z, exp_z, keep_i, i, extremes, kept, sums, mine, eps, compare, alpha, beta, lam, m)
                g_t = _negative_weight(s, z, exp_z, keep_j, j, extremes, kept, sums, mine, eps, compare, alpha, beta, lam, m)
                G[i, j] = g
                H[r, j] = g_t
                H[r, j] = G[i, j] + H[r, j]
                neg_used[i, j] = keep_i
                continue
            kind = pair_kind(s, True, j == i, value_rule, self_threshold)  # symmetric in (i, j)
            g, keep_p, _ = ms_pair_weight(s, kind, extremes[i, 0], extremes[i, 1], kept[i, 0], kept[i, 1],
                                          sums[i, 0], sums[i, 1], sums[i, 2], sums[i, 3],
                                          mine, eps, compare, alpha, beta, lam, m)
            g_t, keep_t, _ = ms_pair_weight(s, kind, extremes[j, 0], extremes[j, 1], kept[j, 0], kept[j, 1],
                                            sums[j, 0], sums[j, 1], sums[j, 2], sums[j, 3],
                                            mine, eps, compare, alpha, beta, lam, m)
            if keep_p or keep_t:
                G[i, j] = g
                H[r, j] = g_t
                H[r, j] = G[i, j] + H[r, j]
                pos_used[i, j] = keep_p


def ms_symmetric_gradient(S, labels, value_rule, self_threshold, mine, eps, compare, alpha, beta, lam,
                          extremes, kept, sums, G, pos_used, neg_used, U, block_rows):
    """MS loss on the batch: G and the masks (zeroed on entry) and ``grad_unit = (G + G^T) U``.

    Blocks of ``block_rows`` rows are pool tasks: each forms its rows of H = G + G^T
    (``ms_rows_symmetric``) in a buffer of its own and multiplies them by U at once with one
    single-threaded BLAS call, so H is never whole and the block is still in cache for its GEMM. The
    blocks do not depend on the thread count, so neither do the bits.
    """
    m = S.shape[0]
    grad = np.empty((m, U.shape[1]), dtype=U.dtype)
    buffers = queue.SimpleQueue()  # one H buffer per worker, reused by its later blocks

    def block(row0):
        rows = min(block_rows, m - row0)
        try:
            H = buffers.get_nowait()
        except queue.Empty:
            H = np.empty((block_rows, m), dtype=G.dtype)
        H[:rows] = 0
        ms_rows_symmetric.compiled(S, labels, value_rule, self_threshold, mine, eps, compare, alpha, beta, lam,
                                   extremes, kept, sums, row0, G, H[:rows], pos_used, neg_used, 0, rows)
        np.matmul(H[:rows], U, out=grad[row0:row0 + rows])
        buffers.put(H)

    with blas_single():
        run_items(block, range(0, m, block_rows))
    return grad


@rows_kernel(_rows_of_first)
def binomial_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, alpha, beta, lam,
                  G, pos_used, neg_used, per_anchor, counts, row0, row1):
    """Binomial deviance from S, one anchor per iteration (``gpwref.losses.binomial_deviance``).

    Two passes over the row: (1) pair kinds and the set sizes |P_i|, |N_i|; (2) the softplus terms
    (divided by their set size, as the reference does) and the logistic weights. Every positive and
    negative pair is used. Logits and sums in float64 (``alpha``, ``beta``, ``lam`` float64).
    """
    m, n = S.shape
    for i in range(row0, row1):
        label = labels[i]
        own = self_col[i]
        n_pos = 0
        n_neg = 0
        for j in range(n):
            kind = pair_kind(S[i, j], ref_labels[j] == label, j == own, value_rule, self_threshold)
            if kind == POSITIVE:
                n_pos += 1
            elif kind == NEGATIVE:
                n_neg += 1
        counts[i, 0] = n_pos
        counts[i, 1] = n_neg
        counts[i, 2] = n_pos
        counts[i, 3] = n_neg
        pos_count = max(n_pos, 1)  # an empty set sums to 0 whatever the divisor
        neg_count = max(n_neg, 1)
        pos_part = 0.0
        neg_part = 0.0
        for j in range(n):
            s = S[i, j]
            kind = pair_kind(s, ref_labels[j] == label, j == own, value_rule, self_threshold)
            pos_used[i, j] = kind == POSITIVE
            neg_used[i, j] = kind == NEGATIVE
            if kind == POSITIVE:
                z = binomial_positive_logit(f64(s), alpha, lam)
                pos_part += softplus(z) / pos_count
                G[i, j] = -((alpha * logistic(z)) / pos_count) / m
            elif kind == NEGATIVE:
                z = binomial_negative_logit(f64(s), beta, lam)
                neg_part += softplus(z) / neg_count
                G[i, j] = ((beta * logistic(z)) / neg_count) / m
            else:
                G[i, j] = 0.0
        per_anchor[i] = (pos_part + neg_part) / m


@rows_kernel(_rows_of_first)
def contrastive_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, distance, linear_pos,
                     pos_margin, neg_margin, duplicate_gap, G, pos_used, neg_used, sums, counts, row0, row1):
    """Contrastive loss, first pass (``gpwref.losses.contrastive``): per pair the term and slope
    (``scalar.contrastive_pair``); G holds the unscaled slopes of the counted pairs, ``sums[i]`` the
    row's counted positive and negative terms, ``counts[i]`` (positives, negatives, counted
    positives, counted negatives). The reduction's scales (1/m, or 1/count over the whole batch
    for avg_nonzero) are applied by ``scale_rows`` once the batch totals are known."""
    m, n = S.shape
    for i in range(row0, row1):
        label = labels[i]
        own = self_col[i]
        n_pos = 0
        n_neg = 0
        c_pos = 0
        c_neg = 0
        t_pos = 0.0
        t_neg = 0.0
        for j in range(n):
            s = S[i, j]
            kind = pair_kind(s, ref_labels[j] == label, j == own, value_rule, self_threshold)
            counted = False
            slope = 0.0
            if kind == POSITIVE:
                n_pos += 1
                term, slope, counted = contrastive_pair(f64(s), True, distance, linear_pos, pos_margin, neg_margin, duplicate_gap)
                if counted:
                    c_pos += 1
                    t_pos += term
            elif kind == NEGATIVE:
                n_neg += 1
                term, slope, counted = contrastive_pair(f64(s), False, distance, linear_pos, pos_margin, neg_margin, duplicate_gap)
                if counted:
                    c_neg += 1
                    t_neg += term
            pos_used[i, j] = counted and kind == POSITIVE
            neg_used[i, j] = counted and kind == NEGATIVE
            G[i, j] = slope if counted else 0.0
        sums[i, 0] = t_pos
        sums[i, 1] = t_neg
        counts[i, 0] = n_pos
        counts[i, 1] = n_neg
        counts[i, 2] = c_pos
        counts[i, 3] = c_neg


@rows_kernel(_rows_of_first)
def scale_rows(G, pos_used, neg_used, pos_scale, neg_scale, row0, row1):
    """G_ij *= pos_scale on used positives, neg_scale on used negatives (rows in parallel)."""
    m, n = G.shape
    for i in range(row0, row1):
        for j in range(n):
            if pos_used[i, j]:
                G[i, j] = G[i, j] * pos_scale
            elif neg_used[i, j]:
                G[i, j] = G[i, j] * neg_scale


_TILE = 32
_SUBTILE = 16


def _tile_pairs(m: int, upper: bool) -> np.ndarray:
    """(block row, block column) of the 32 x 32 tiles of an m x m matrix on and above (``upper``)
    or on and below the diagonal, row by row: the work items of the tiled transposing kernels."""
    blocks = (m + _TILE - 1) // _TILE
    rows, columns = np.triu_indices(blocks) if upper else np.tril_indices(blocks)
    return np.stack([rows, columns], axis=1).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _symmetrize_tiles(G, H, tiles, row0, row1):
    """``H = G + G^T`` (square G), ``H_ij = G_ij + G_ji`` in that order.

    Works on pairs of 32 x 32 tiles (I, J), (J, I): both are copied row by row (contiguous reads)
    into small buffers, so the transposed reads hit L1 instead of striding through memory at the
    row pitch (which, for pitches that are multiples of 4 KiB, also collide in the same cache sets).
    Items ``row0 .. row1`` of ``tiles`` (block row, block column); every H entry is written by
    exactly one item.
    """
    m = G.shape[0]
    a = np.empty((_TILE, _TILE), G.dtype)  # a[x, y] = G[i0 + x, j0 + y]
    b = np.empty((_TILE, _TILE), G.dtype)  # b[y, x] = G[j0 + y, i0 + x]
    for q in range(row0, row1):
        i0 = tiles[q, 0] * _TILE
        j0 = tiles[q, 1] * _TILE
        ni = min(_TILE, m - i0)
        nj = min(_TILE, m - j0)
        for x in range(ni):
            for y in range(nj):
                a[x, y] = G[i0 + x, j0 + y]
        for y in range(nj):
            for x in range(ni):
                b[y, x] = G[j0 + y, i0 + x]
        for x in range(ni):
            for y in range(nj):
                H[i0 + x, j0 + y] = a[x, y] + b[y, x]
        if j0 != i0:
            for y in range(nj):
                for x in range(ni):
                    H[j0 + y, i0 + x] = b[y, x] + a[x, y]


def symmetrize(G, H):
    """``H = G + G^T`` (square G): ``_symmetrize_tiles`` over the pairs of 32 x 32 tiles (I <= J)."""
    tiles = _tile_pairs(G.shape[0], upper=True)
    run_rows(_symmetrize_tiles, len(tiles), (G, H, tiles))



@numba.njit(cache=True, nogil=True)
def _mirror_lower_tiles(S, tiles, first, stop):
    """Copy S's lower triangle onto its upper one (``S_ji = S_ij`` for i > j), items ``first ..
    stop`` of ``tiles`` (block row I >= block column J, 32 x 32): tile (I, J) is written to (J, I)
    in 16 x 16 sub-tiles, each row by row reading down its columns, which stay in L1."""
    m = S.shape[0]
    for q in range(first, stop):
        i0 = tiles[q, 0] * _TILE
        j0 = tiles[q, 1] * _TILE
        ni = min(_TILE, m - i0)
        nj = min(_TILE, m - j0)
        for y0 in range(0, nj, _SUBTILE):
            for x0 in range(0, ni, _SUBTILE):
                for y in range(y0, min(nj, y0 + _SUBTILE)):
                    start = max(x0, y + 1) if i0 == j0 else x0  # a diagonal tile: its own lower part only
                    for x in range(start, min(ni, x0 + _SUBTILE)):
                        S[j0 + y, i0 + x] = S[i0 + x, j0 + y]


def gram(U: np.ndarray) -> np.ndarray:
    """S = U U^T, exactly symmetric, C-ordered: the lower triangle in blocks of rows,
    ``S[r0:r1, :r1] = U[r0:r1] U[:r1]^T`` (single-threaded BLAS calls on the pool, largest first), then
    ``_mirror_lower_tiles`` copies it across in parallel tiles.

    The upper part of each diagonal block is computed and then overwritten by the mirror (about
    6 % more flops than syrk's half GEMM at 256-row blocks), and the GEMMs run where the kernels do
    (``blas_single``). Measured at m = 4096, d = 512, float32, 2 threads: 67 ms, against 80 ms for
    multi-threaded syrk + mirror and 110 ms for NumPy's ``U @ U.T`` (which also calls syrk, then
    mirrors the triangle in a single-threaded strided loop).
    """
    m = U.shape[0]
    S = np.empty((m, m), dtype=U.dtype)

    def block(row0):
        row1 = min(m, row0 + BLAS_BLOCK_ROWS)
        np.matmul(U[row0:row1], U[:row1].T, out=S[row0:row1, :row1])

    with blas_single():
        run_items(block, reversed(range(0, m, BLAS_BLOCK_ROWS)))
    tiles = _tile_pairs(m, upper=False)
    run_rows(_mirror_lower_tiles, len(tiles), (S, tiles))
    return S

@rows_kernel(_rows_of_first)
def through_normalisation(grad_unit, U, norms, out, row0, row1):
    """``out_i = (g_i - u_i (g_i . u_i)) / |x_i|``: dL/dx_i from dL/du_i through u = x / |x|."""
    m, d = grad_unit.shape
    for i in range(row0, row1):
        radial = 0.0
        for k in range(d):
            radial += np.float64(grad_unit[i, k]) * np.float64(U[i, k])
        inv_norm = 1.0 / norms[i]
        for k in range(d):
            out[i, k] = (grad_unit[i, k] - U[i, k] * radial) * inv_norm


# ---------------------------------------------------------------------------------------------
# Lifted structured loss (``gpwref.losses.lifted_structure``), both forms, batch only.

lifted_scores = _S["lifted_scores"]
lifted_song_positive = _S["lifted_song_positive"]
lifted_generalized_logit = _S["lifted_generalized_logit"]
lifted_generalized_pair = _S["lifted_generalized_pair"]
log_sum_from_shifted = _S["log_sum_from_shifted"]


@rows_kernel(_rows_of_first)
def lifted_row_stats(S, labels, self_col, same_order, same_start, same_end, value_rule, self_threshold,
                     distance, pos_margin, neg_margin, duplicate_gap, stats, counts, row0, row1):
    """Lifted loss, pass 1 (both forms): every row's log-sum-exps over its own positives (of z+)
    and negatives (of z-), each with its maximum taken out first, as the reference's ``masked_lse``.

    ``stats[i] = (pos_top, pos_total, neg_top, neg_total, pos_lse, neg_lse)``: the largest score
    (0 for an empty set), ``total = sum exp(z - top)`` (0 for an empty set) and
    ``lse = log(total) + top`` (-inf for an empty set); ``counts[i] = (|P_i|, |N_i|, |P_i|, |N_i|)``.
    Positives are visited through the same-label columns ``same_order[same_start[i]:same_end[i]]``,
    negatives by one streaming pass over the row (their scores, kept in a scratch row, and their
    maximum), then the sum. Scores, exponentials and sums in float64 whatever S's dtype.
    """
    m, n = S.shape
    scores = np.empty(n, dtype=np.float64)  # one row's negative scores (this chunk's own scratch)
    for i in range(row0, row1):
        label = labels[i]
        own = self_col[i]
        lo = same_start[i]
        hi = same_end[i]
        n_pos = 0
        pos_top = -math.inf
        for q in range(lo, hi):
            j = same_order[q]
            s = S[i, j]
            if pair_kind(s, True, j == own, value_rule, self_threshold) == POSITIVE:
                z_pos, _, _ = lifted_scores(f64(s), distance, pos_margin, neg_margin, duplicate_gap)
                n_pos += 1
                if z_pos > pos_top:
                    pos_top = z_pos
        pos_total = 0.0
        if n_pos > 0:
            for q in range(lo, hi):
                j = same_order[q]
                s = S[i, j]
                if pair_kind(s, True, j == own, value_rule, self_threshold) == POSITIVE:
                    z_pos, _, _ = lifted_scores(f64(s), distance, pos_margin, neg_margin, duplicate_gap)
                    pos_total += math.exp(z_pos - pos_top)
        else:
            pos_top = 0.0
        n_neg = 0
        neg_top = -math.inf
        for j in range(n):
            if labels[j] != label:
                _, z_neg, _ = lifted_scores(f64(S[i, j]), distance, pos_margin, neg_margin, duplicate_gap)
                scores[n_neg] = z_neg
                n_neg += 1
                if z_neg > neg_top:
                    neg_top = z_neg
        neg_total = 0.0
        for c in range(n_neg):  # in column order
            neg_total += math.exp(scores[c] - neg_top)
        if n_neg == 0:
            neg_top = 0.0
        stats[i, 0] = pos_top
        stats[i, 1] = pos_total
        stats[i, 2] = neg_top
        stats[i, 3] = neg_total
        stats[i, 4] = log_sum_from_shifted(pos_total, pos_top)
        stats[i, 5] = log_sum_from_shifted(neg_total, neg_top)
        counts[i, 0] = n_pos
        counts[i, 1] = n_neg
        counts[i, 2] = n_pos
        counts[i, 3] = n_neg


@rows_kernel(_rows_of_first)
def lifted_song_rows(S, labels, self_col, same_order, same_start, same_end, value_rule, self_threshold,
                     distance, pos_margin, neg_margin, duplicate_gap, ordered_pairs, stats,
                     G, pos_used, neg_used, per_anchor, row0, row1):
    """Song's lifted loss, pass 2: row i of G and of the masks, and ``per_anchor[i]``, from every
    row's negative log-sum-exp (``stats[:, 5]``, pass 1) and Q = ``ordered_pairs`` (>= 1).

    (a) Row i's positives p (same-label columns): the pair (i, p) with S_ip gives J_ip, its weight
    ``G_ip = -phi_ip c_ip``, its hinge^2 and ``c_ip E_i / E_ip``; the pair (p, i), read from S_pi
    (S is not assumed symmetric), gives ``c_pi E_i / E_pi``. Their two sums, added in the
    reference's order, are row i's negative factor ``sum_p c_ip / E_ip + sum_a c_ai / E_ai`` times
    E_i. (b) One streaming pass over the row: a negative's weight is
    ``phi_ik * (factor * exp(z-_ik - top_i) / total_i)``; every other entry is 0.
    """
    m, n = S.shape
    for i in range(row0, row1):
        label = labels[i]
        own = self_col[i]
        lse_i = stats[i, 5]
        anchor_part = 0.0
        partner_part = 0.0
        hinge_sq = 0.0
        for q in range(same_start[i], same_end[i]):
            p = same_order[q]
            s, s_t = S[i, p], S[p, i]
            is_pos = pair_kind(s, True, p == own, value_rule, self_threshold) == POSITIVE
            is_pos_t = pair_kind(s_t, True, i == self_col[p], value_rule, self_threshold) == POSITIVE
            h, a_term, p_term, g, used = lifted_song_positive(f64(s), f64(s_t), is_pos, is_pos_t, lse_i, stats[p, 5],
                                                              distance, pos_margin, neg_margin, duplicate_gap, ordered_pairs)
            hinge_sq += h
            anchor_part += a_term
            partner_part += p_term
            if is_pos:
                G[i, p] = g
                pos_used[i, p] = used
                neg_used[i, p] = False
        factor = anchor_part + partner_part
        per_anchor[i] = hinge_sq / (2.0 * ordered_pairs)
        top = stats[i, 2]
        total = stats[i, 3]
        for j in range(n):
            if labels[j] != label:
                _, z_neg, phi = lifted_scores(f64(S[i, j]), distance, pos_margin, neg_margin, duplicate_gap)
                weight = 0.0
                if factor > 0:
                    weight = factor * (math.exp(z_neg - top) / total)
                G[i, j] = phi * weight
                pos_used[i, j] = False
                neg_used[i, j] = factor > 0 and phi != 0
            elif pair_kind(S[i, j], True, j == own, value_rule, self_threshold) != POSITIVE:
                G[i, j] = 0.0
                pos_used[i, j] = False
                neg_used[i, j] = False


@rows_kernel(_rows_of_first)
def lifted_generalized_rows(S, labels, self_col, value_rule, self_threshold, distance, pos_margin, neg_margin,
                            duplicate_gap, empty_zero, stats, counts, G, pos_used, neg_used, per_anchor, row0, row1):
    """The generalised lifted loss, pass 2: anchor i's ``A_i`` from its log-sum-exps (pass 1, the
    profile's empty-set rule ``empty_zero``), ``per_anchor[i] = [A_i]_+ / m`` and, for an active
    anchor (A_i > 0), ``G_ij = (phi_ij / m) (softmax_N(z-)_j - softmax_P(z+)_j)`` in the reference's
    order of operations; an inactive anchor's row is 0."""
    m, n = S.shape
    for i in range(row0, row1):
        label = labels[i]
        own = self_col[i]
        logit = lifted_generalized_logit(stats[i, 4], stats[i, 5], counts[i, 0], counts[i, 1], empty_zero)
        active = logit > 0
        per_anchor[i] = (logit if active else 0.0) / m
        scale = (1.0 if active else 0.0) / m
        for j in range(n):
            s = S[i, j]
            kind = pair_kind(s, labels[j] == label, j == own, value_rule, self_threshold)
            weight, used = lifted_generalized_pair(f64(s), kind, active, scale, stats[i, 0], stats[i, 1], stats[i, 2],
                                                   stats[i, 3], distance, pos_margin, neg_margin, duplicate_gap)
            G[i, j] = weight
            pos_used[i, j] = used and kind == POSITIVE
            neg_used[i, j] = used and kind == NEGATIVE
