"""Numba CUDA kernels and the CUDA backend.

Launch plan of one forward + backward (issue 3's GPU goal: at most 3 launches at m = 80):

1. ``similarity``     S = U V^T with the normalisation fused: TILE x TILE blocks, one output each;
                      each block first computes the norms of its tile's rows of X and of V's rows
                      (float64, tree over the tile's threads), then divides every element by its
                      row's norm as it loads it into shared memory. The norms (for launch 3) and
                      per-row flags (non-finite / all zeros: device inputs are validated here and
                      the host raises) are written once, by the blocks of tile column 0 (X) and of
                      tile row 0 (the reference set), one thread per row;
2. ``ms_rows``        one block per anchor row: pair kinds, hardest positive/negative, mining,
                      exponentials, add-one log-sum-exp, G and the kept-pair masks, per-anchor value
                      (``binomial_rows`` / ``contrastive_rows`` for the other kernel losses);
3. ``embedding_grad`` dL/dX = P((G + G^T) U) (G V, and dL/dR = P(G^T U) in the same launch, with a
                      reference set), P_i(g) = (g - u_i (g . u_i)) / |x_i| the normalisation's
                      backward, fused: unit rows are formed on load from the raw rows and launch
                      1's norms, G + G^T while a tile is loaded (the CPU's order G[i, j] + G[j, i]),
                      and the radial part g_i . u_i = sum_j H_ij S_ij (u_j . u_i = S_ij) is summed
                      from tiles of H and S next to the GEMM's, so every output tile is
                      independent (no block has to own a whole row of d columns).

Launches per path (counted in tests/kernels/test_kernels_cuda.py at the simulator's kernel call): MS on the
batch or with a reference set, binomial deviance: 3; contrastive: 4 (its batch-wide rescaling,
``scale_rows``, needs every row's totals first); lifted_structure: 4 (two row passes, measured
once, not asserted); a device input in another dtype: +1 (``cast``);
PML's "at most one kept pair" zero rule: +4 (``fill_zero``). Host synchronisation besides
launches: the row flags (m integers, host inputs too: a float32 cast can overflow), the pair
counts where the profile needs them, and the per-anchor values.

Determinism: no kernel uses atomics. Every reduction is a thread-strided partial sum in a fixed
order followed by a shared-memory tree in a fixed order, and every output element is written by
exactly one thread, so two runs on the same device give identical bits (the only mode there is).

The per-pair formulas are ``scalar.py``'s, compiled here with ``cuda.jit(device=True)``; the CPU
kernels compile the same functions with ``numba.njit``. Sizes: ``THREADS`` threads per row block
and ``TILE`` x ``TILE`` GEMM tiles; under ``NUMBA_ENABLE_CUDASIM=1`` they default to small values
(the simulator runs one Python thread per CUDA thread) and no warp-level intrinsic is used, so the
same kernels run in the simulator.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numba
import numpy as np
from numba import cuda

from ..errors import GpwrefError
from ..inputs import check_device_rows, check_similarity_bound
from ..pairs import PairResult, Result
from . import scalar
from .backends import (ZERO_RULE_LOSSES, binomial_scalars, check_counts, contrastive_scalars, contrastive_scales,
                       lifted_scalars, lifted_zero_rule, ms_rules, ms_scalars, pair_rules, same_label_columns,
                       self_columns)

try:  # numba.cuda decides between the GPU and the simulator from its own config at import
    from numba.cuda.core import config as _cuda_config

    SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)
except ImportError:  # pragma: no cover - older numba-cuda layouts
    SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
# Threads per row block and GEMM tile edge (powers of two), and the most blocks a launch uses:
# kernels stride over rows / tiles by gridDim.x, so the grid may be smaller than the work. On a GPU
# every row or tile gets its own block; the simulator runs blocks one after another, each costing
# tens of milliseconds of thread start-up, so there a launch uses two blocks.
THREADS, TILE, MAX_BLOCKS = (8, 4, 2) if SIMULATOR else (256, 16, 2**31 - 1)

_S = scalar.compile_all(cuda.jit(device=True))
pair_kind = _S["pair_kind"]
ms_keep_negative = _S["ms_keep_negative"]
ms_keep_positive = _S["ms_keep_positive"]
ms_positive_logit = _S["ms_positive_logit"]
ms_negative_logit = _S["ms_negative_logit"]
ms_pair_weight = _S["ms_pair_weight"]
log1p_sum_exp = _S["log1p_sum_exp"]
add_one_total = _S["add_one_total"]
softplus = _S["softplus"]
logistic = _S["logistic"]
binomial_positive_logit = _S["binomial_positive_logit"]
binomial_negative_logit = _S["binomial_negative_logit"]
contrastive_pair = _S["contrastive_pair"]
lifted_scores = _S["lifted_scores"]
lifted_song_positive = _S["lifted_song_positive"]
lifted_generalized_logit = _S["lifted_generalized_logit"]
lifted_generalized_pair = _S["lifted_generalized_pair"]
log_sum_from_shifted = _S["log_sum_from_shifted"]

POSITIVE = scalar.POSITIVE
NEGATIVE = scalar.NEGATIVE


@functools.lru_cache(maxsize=None)
def kernels(dtype_name: str, threads: int = THREADS, tile: int = TILE, max_blocks: int = MAX_BLOCKS):
    """The kernels for one working dtype and launch geometry (compiled lazily, once each)."""
    if threads & (threads - 1) or tile & (tile - 1):
        raise ValueError("threads and tile must be powers of two")
    real = numba.float32 if dtype_name == "float32" else numba.float64
    real_np = np.float32 if dtype_name == "float32" else np.float64
    f64 = numba.float64
    i64 = numba.int64
    T = tile
    TP = tile + 1  # padded shared tile: transposed stores hit distinct banks

    @cuda.jit
    def similarity(A, B, C, a_norms, b_norms, a_flags, b_flags, normalize, same):
        """C = U V^T with u_i = a_i / |a_i|, v_j = b_j / |b_j| (C = A B^T without ``normalize``): the
        normalisation fused into the GEMM. A (TILE, TILE) block first computes the norms of its
        tile's TILE rows of A and TILE rows of B (thread (ty, tx) sums the squares of columns tx,
        tx + TILE, ... in float64, then a tree over tx), then divides each element by its row's norm
        as it loads it into shared memory (``x / |x|`` as the reference). Every block computes a
        row's norm with the same code in the same order, so every copy has the same bits; the
        norms and flags are written once: A's by the blocks of tile column 0, B's by those of tile
        row 0 (none when ``same``: B is A), one thread per row. Flags: 0 finite and non-zero, 1 a
        non-finite entry, 2 all zeros (such rows are not divided; the host then raises). The price
        of the saved launch: every tile reads its 2 TILE rows twice (norms, then the product) and
        recomputes norms other tiles also compute, O(m n d / TILE) extra reads and flops."""
        a_tile = cuda.shared.array((T, TP), real)
        b_tile = cuda.shared.array((T, TP), real)  # b_tile[k, j] = V[j, k]
        a_sq = cuda.shared.array((T, TP), f64)
        b_sq = cuda.shared.array((T, TP), f64)
        a_ok = cuda.shared.array((T, TP), i64)
        b_ok = cuda.shared.array((T, TP), i64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        m, d = A.shape
        n = B.shape[0]
        tiles_n = (n + T - 1) // T
        tiles = ((m + T - 1) // T) * tiles_n
        for tile_id in range(cuda.blockIdx.x, tiles, cuda.gridDim.x):
            tile_row = tile_id // tiles_n
            tile_col = tile_id % tiles_n
            row = tile_row * T + ty
            col0 = tile_col * T
            col = col0 + tx
            b_row = col0 + ty
            # pass 1: |A[row]| and |B[b_row]| (the TILE threads of row ty)
            sq_a = 0.0
            sq_b = 0.0
            ok_a = 1
            ok_b = 1
            for k in range(tx, d, T):
                if row < m:
                    x = f64(A[row, k])
                    if math.isinf(x) or math.isnan(x):
                        ok_a = 0
                    else:
                        sq_a += x * x
                if b_row < n:
                    x = f64(B[b_row, k])
                    if math.isinf(x) or math.isnan(x):
                        ok_b = 0
                    else:
                        sq_b += x * x
            a_sq[ty, tx] = sq_a
            b_sq[ty, tx] = sq_b
            a_ok[ty, tx] = ok_a
            b_ok[ty, tx] = ok_b
            cuda.syncthreads()
            step = T // 2
            while step > 0:
                if tx < step:
                    a_sq[ty, tx] += a_sq[ty, tx + step]
                    b_sq[ty, tx] += b_sq[ty, tx + step]
                    a_ok[ty, tx] = min(a_ok[ty, tx], a_ok[ty, tx + step])
                    b_ok[ty, tx] = min(b_ok[ty, tx], b_ok[ty, tx + step])
                cuda.syncthreads()
                step //= 2
            a_norm = math.sqrt(a_sq[ty, 0])
            b_norm = math.sqrt(b_sq[ty, 0])
            a_flag = 1 if a_ok[ty, 0] == 0 else (2 if a_norm == 0.0 else 0)
            b_flag = 1 if b_ok[ty, 0] == 0 else (2 if b_norm == 0.0 else 0)
            if tx == 0 and tile_col == 0 and row < m:
                a_norms[row] = a_norm
                a_flags[row] = a_flag
            if tx == 0 and tile_row == 0 and b_row < n and not same:
                b_norms[b_row] = b_norm
                b_flags[b_row] = b_flag
            a_div = a_norm if (normalize and a_flag == 0) else 1.0
            b_div = b_norm if (normalize and b_flag == 0) else 1.0
            a_load = row < m and a_flag != 1  # a non-finite row loads zeros: no inf * 0 in S (the
            b_load = b_row < n and b_flag != 1  # host raises on its flag before S is used)
            # pass 2: the tile of S (pass 1's shared arrays are not touched again in this tile and
            # the loop below ends with a barrier, so the next tile may overwrite them)
            acc = real_np(0)
            for k0 in range(0, d, T):
                k = k0 + tx
                a_tile[ty, tx] = A[row, k] / a_div if (a_load and k < d) else real_np(0)
                b_tile[tx, ty] = B[b_row, k] / b_div if (b_load and k < d) else real_np(0)
                cuda.syncthreads()
                for kk in range(T):
                    acc += a_tile[ty, kk] * b_tile[kk, tx]
                cuda.syncthreads()
            if row < m and col < n:
                C[row, col] = acc

    @cuda.jit(device=True)
    def embedding_grad_tile(G, S, V, v_norms, own, own_norms, out, row0, col0, mode, normalize,
                            h_tile, v_tile, s_tile, radial):
        """One TILE x TILE tile (rows row0.., columns col0..) of an embedding gradient
        (``embedding_grad``): g = H V' with V' the unit rows of V (formed on load, ``v / |v|`` as in ``similarity``) and
        H = G (mode 0), G^T (mode 1) or G + G^T (mode 2, formed on load in the CPU's order
        ``G[i, j] + G[j, i]``); with ``normalize``, out_i = (g_i - u_i (g_i . u_i)) / |own_i|.

        The radial component needs no sweep over the row's d columns: g_i . u_i = sum_k H_ik
        (v_k . u_i) = sum_k H_ik S_ik (S^T for mode 1), accumulated in float64 from tiles of H and S
        loaded next to the GEMM's, then a tree over tx. So every output tile is independent (the
        grid covers rows x columns, as a plain GEMM's) and each entry is written once."""
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        rows, d = out.shape
        inner = V.shape[0]
        row = row0 + ty
        col = col0 + tx
        acc = real_np(0)
        part = 0.0  # this thread's share of sum_k H_row,k S_row,k: columns k0 + tx
        for k0 in range(0, inner, T):
            if mode == 1:
                h_tile[ty, tx] = real_np(0)
            else:  # H[row, k0 + tx] = G[row, k0 + tx]
                h_tile[ty, tx] = G[row, k0 + tx] if (row < rows and k0 + tx < inner) else real_np(0)
            if normalize:
                if mode == 1:  # S^T[row0 + tx, k0 + ty] = S[k0 + ty, row0 + tx] (coalesced over tx)
                    s_tile[tx, ty] = S[k0 + ty, row0 + tx] if (k0 + ty < inner and row0 + tx < rows) else real_np(0)
                else:
                    s_tile[ty, tx] = S[row, k0 + tx] if (row < rows and k0 + tx < inner) else real_np(0)
            cuda.syncthreads()
            if mode != 0:  # H[row0 + tx, k0 + ty] += G[k0 + ty, row0 + tx] (coalesced over tx)
                if k0 + ty < inner and row0 + tx < rows:
                    h_tile[tx, ty] = h_tile[tx, ty] + G[k0 + ty, row0 + tx]
            v_row = k0 + ty
            if v_row < inner and col < d:
                v_tile[ty, tx] = V[v_row, col] / v_norms[v_row] if normalize else V[v_row, col]
            else:
                v_tile[ty, tx] = real_np(0)
            cuda.syncthreads()
            if normalize:
                part += f64(h_tile[ty, tx]) * f64(s_tile[ty, tx])
            for kk in range(T):
                acc += h_tile[ty, kk] * v_tile[kk, tx]
            cuda.syncthreads()
        if normalize:
            radial[ty, tx] = part
            cuda.syncthreads()
            step = T // 2
            while step > 0:
                if tx < step:
                    radial[ty, tx] += radial[ty, tx + step]
                cuda.syncthreads()
                step //= 2
            if row < rows and col < d:  # (radial is rewritten only after the next tile's barriers)
                unit = real(own[row, col] / own_norms[row])
                out[row, col] = (acc - unit * radial[ty, 0]) * (1.0 / own_norms[row])
        elif row < rows and col < d:
            out[row, col] = acc

    @cuda.jit
    def embedding_grad(G, S, A, a_norms, B, b_norms, grad_a, grad_b, symmetric, normalize):
        """The embedding gradients with the normalisation's backward fused in (``embedding_grad_tile``).
        Jobs, TILE x TILE output tiles (blocks stride over them by gridDim.x): the tiles of grad_a
        = (G + G^T) U on the batch (``symmetric``; B is A) or G V with a reference set, then, with a
        reference set, those of grad_b = G^T U. Unit rows come from the raw rows and the norms that
        ``similarity`` wrote."""
        h_tile = cuda.shared.array((T, TP), real)
        v_tile = cuda.shared.array((T, TP), real)
        s_tile = cuda.shared.array((T, TP), real)
        radial = cuda.shared.array((T, TP), f64)
        d = A.shape[1]
        tiles_d = (d + T - 1) // T
        jobs_a = ((A.shape[0] + T - 1) // T) * tiles_d
        jobs = jobs_a if symmetric else jobs_a + ((B.shape[0] + T - 1) // T) * tiles_d
        for job in range(cuda.blockIdx.x, jobs, cuda.gridDim.x):
            if job < jobs_a:
                embedding_grad_tile(G, S, B, b_norms, A, a_norms, grad_a, (job // tiles_d) * T,
                                    (job % tiles_d) * T, 2 if symmetric else 0, normalize,
                                    h_tile, v_tile, s_tile, radial)
            else:
                job_b = job - jobs_a
                embedding_grad_tile(G, S, A, a_norms, B, b_norms, grad_b, (job_b // tiles_d) * T,
                                    (job_b % tiles_d) * T, 1, normalize, h_tile, v_tile, s_tile, radial)

    @cuda.jit
    def ms_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, mine, eps, compare, skip_empty,
                alpha, beta, lam, inf, G, pos_used, neg_used, per_anchor, counts):
        """The MS loss, one anchor row per block (striding by gridDim.x): the passes of
        ``cpu.ms_row_stats`` then ``cpu.ms_rows`` in one kernel, with block-wide tree reductions in
        place of the sequential loops (G + G^T is formed later, inside ``embedding_grad``)."""
        lo = cuda.shared.array(threads, real)
        hi = cuda.shared.array(threads, real)
        num_pos = cuda.shared.array(threads, i64)
        num_neg = cuda.shared.array(threads, i64)
        sum_p = cuda.shared.array(threads, f64)
        sum_n = cuda.shared.array(threads, f64)
        t = cuda.threadIdx.x
        m, n = S.shape
        for i in range(cuda.blockIdx.x, m, cuda.gridDim.x):
            label = labels[i]
            own = self_col[i]
            # pass 1: hardest positive and negative, pair counts
            min_pos = inf
            max_neg = -inf
            c_pos = 0
            c_neg = 0
            for j in range(t, n, threads):
                s = S[i, j]
                kind = pair_kind(s, ref_labels[j] == label, j == own, value_rule, self_threshold)
                if kind == POSITIVE:
                    c_pos += 1
                    if s < min_pos:
                        min_pos = s
                elif kind == NEGATIVE:
                    c_neg += 1
                    if s > max_neg:
                        max_neg = s
            lo[t] = min_pos
            hi[t] = max_neg
            num_pos[t] = c_pos
            num_neg[t] = c_neg
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    lo[t] = min(lo[t], lo[t + step])
                    hi[t] = max(hi[t], hi[t + step])
                    num_pos[t] += num_pos[t + step]
                    num_neg[t] += num_neg[t + step]
                cuda.syncthreads()
                step //= 2
            min_pos = lo[0]
            max_neg = hi[0]
            n_pos = num_pos[0]
            n_neg = num_neg[0]
            any_pos = n_pos > 0 and (not mine or ms_keep_positive(min_pos, max_neg, eps, compare))
            any_neg = n_neg > 0 and (not mine or ms_keep_negative(max_neg, min_pos, eps, compare))
            if skip_empty and not (any_pos and any_neg):
                any_pos = False
                any_neg = False
            top_pos = 0.0
            if any_pos:
                top_pos = max(ms_positive_logit(f64(min_pos), alpha, lam), 0.0)
            top_neg = 0.0
            if any_neg:
                top_neg = max(ms_negative_logit(f64(max_neg), beta, lam), 0.0)
            cuda.syncthreads()  # everyone has read the pass-1 results before the arrays are reused
            # pass 2: sums of the kept pairs' exponentials (largest logit taken out)
            acc_p = 0.0
            acc_n = 0.0
            c_pos = 0
            c_neg = 0
            for j in range(t, n, threads):
                s = S[i, j]
                kind = pair_kind(s, ref_labels[j] == label, j == own, value_rule, self_threshold)
                if kind == POSITIVE and any_pos:
                    if not mine or ms_keep_positive(s, max_neg, eps, compare):
                        acc_p += math.exp(ms_positive_logit(f64(s), alpha, lam) - top_pos)
                        c_pos += 1
                elif kind == NEGATIVE and any_neg:
                    if not mine or ms_keep_negative(s, min_pos, eps, compare):
                        acc_n += math.exp(ms_negative_logit(f64(s), beta, lam) - top_neg)
                        c_neg += 1
            sum_p[t] = acc_p
            sum_n[t] = acc_n
            num_pos[t] = c_pos
            num_neg[t] = c_neg
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    sum_p[t] += sum_p[t + step]
                    sum_n[t] += sum_n[t + step]
                    num_pos[t] += num_pos[t + step]
                    num_neg[t] += num_neg[t + step]
                cuda.syncthreads()
                step //= 2
            total_pos = add_one_total(sum_p[0], top_pos)
            total_neg = add_one_total(sum_n[0], top_neg)
            if t == 0:
                per_anchor[i] = (log1p_sum_exp(sum_p[0], top_pos) / alpha + log1p_sum_exp(sum_n[0], top_neg) / beta) / m
                counts[i, 0] = n_pos
                counts[i, 1] = n_neg
                counts[i, 2] = num_pos[0]
                counts[i, 3] = num_neg[0]
            # pass 3: the weights and masks (each thread its own columns)
            for j in range(t, n, threads):
                s = S[i, j]
                kind = pair_kind(s, ref_labels[j] == label, j == own, value_rule, self_threshold)
                g, keep_p, keep_n = ms_pair_weight(s, kind, min_pos, max_neg, any_pos, any_neg, top_pos, top_neg,
                                                   total_pos, total_neg, mine, eps, compare, alpha, beta, lam, m)
                G[i, j] = g
                pos_used[i, j] = keep_p
                neg_used[i, j] = keep_n
            cuda.syncthreads()  # the shared arrays are reused by the next row

    @cuda.jit
    def binomial_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, alpha, beta, lam,
                      G, pos_used, neg_used, per_anchor, counts):
        """Binomial deviance, one anchor row per block; the passes of ``cpu.binomial_rows``."""
        num_pos = cuda.shared.array(threads, i64)
        num_neg = cuda.shared.array(threads, i64)
        sum_p = cuda.shared.array(threads, f64)
        sum_n = cuda.shared.array(threads, f64)
        t = cuda.threadIdx.x
        m, n = S.shape
        for i in range(cuda.blockIdx.x, m, cuda.gridDim.x):
            label = labels[i]
            own = self_col[i]
            c_pos = 0
            c_neg = 0
            for j in range(t, n, threads):
                kind = pair_kind(S[i, j], ref_labels[j] == label, j == own, value_rule, self_threshold)
                if kind == POSITIVE:
                    c_pos += 1
                elif kind == NEGATIVE:
                    c_neg += 1
            num_pos[t] = c_pos
            num_neg[t] = c_neg
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    num_pos[t] += num_pos[t + step]
                    num_neg[t] += num_neg[t + step]
                cuda.syncthreads()
                step //= 2
            n_pos = num_pos[0]
            n_neg = num_neg[0]
            pos_count = max(n_pos, 1)
            neg_count = max(n_neg, 1)
            acc_p = 0.0
            acc_n = 0.0
            for j in range(t, n, threads):
                s = S[i, j]
                kind = pair_kind(s, ref_labels[j] == label, j == own, value_rule, self_threshold)
                pos_used[i, j] = kind == POSITIVE
                neg_used[i, j] = kind == NEGATIVE
                if kind == POSITIVE:
                    z = binomial_positive_logit(f64(s), alpha, lam)
                    acc_p += softplus(z) / pos_count
                    G[i, j] = -((alpha * logistic(z)) / pos_count) / m
                elif kind == NEGATIVE:
                    z = binomial_negative_logit(f64(s), beta, lam)
                    acc_n += softplus(z) / neg_count
                    G[i, j] = ((beta * logistic(z)) / neg_count) / m
                else:
                    G[i, j] = real_np(0)
            sum_p[t] = acc_p
            sum_n[t] = acc_n
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    sum_p[t] += sum_p[t + step]
                    sum_n[t] += sum_n[t + step]
                cuda.syncthreads()
                step //= 2
            if t == 0:
                per_anchor[i] = (sum_p[0] + sum_n[0]) / m
                counts[i, 0] = n_pos
                counts[i, 1] = n_neg
                counts[i, 2] = n_pos
                counts[i, 3] = n_neg
            cuda.syncthreads()

    @cuda.jit
    def contrastive_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, distance, linear_pos,
                         pos_margin, neg_margin, duplicate_gap, G, pos_used, neg_used, sums, counts):
        """Contrastive loss, first pass, one anchor row per block (``cpu.contrastive_rows``)."""
        num = cuda.shared.array((4, threads), i64)
        acc = cuda.shared.array((2, threads), f64)
        t = cuda.threadIdx.x
        m, n = S.shape
        for i in range(cuda.blockIdx.x, m, cuda.gridDim.x):
            label = labels[i]
            own = self_col[i]
            n_pos = 0
            n_neg = 0
            c_pos = 0
            c_neg = 0
            t_pos = 0.0
            t_neg = 0.0
            for j in range(t, n, threads):
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
            num[0, t] = n_pos
            num[1, t] = n_neg
            num[2, t] = c_pos
            num[3, t] = c_neg
            acc[0, t] = t_pos
            acc[1, t] = t_neg
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    for r in range(4):
                        num[r, t] += num[r, t + step]
                    acc[0, t] += acc[0, t + step]
                    acc[1, t] += acc[1, t + step]
                cuda.syncthreads()
                step //= 2
            if t == 0:
                sums[i, 0] = acc[0, 0]
                sums[i, 1] = acc[1, 0]
                for r in range(4):
                    counts[i, r] = num[r, 0]
            cuda.syncthreads()

    @cuda.jit
    def scale_rows(G, pos_used, neg_used, pos_scale, neg_scale):
        m, n = G.shape
        for i in range(cuda.blockIdx.x, m, cuda.gridDim.x):
            for j in range(cuda.threadIdx.x, n, threads):
                if pos_used[i, j]:
                    G[i, j] = G[i, j] * pos_scale
                elif neg_used[i, j]:
                    G[i, j] = G[i, j] * neg_scale

    @cuda.jit
    def fill_zero(A):
        for i in range(cuda.blockIdx.x, A.shape[0], cuda.gridDim.x):
            for j in range(cuda.threadIdx.x, A.shape[1], threads):
                A[i, j] = 0

    @cuda.jit
    def fill_zero_1d(a):
        for k in range(cuda.blockIdx.x * threads + cuda.threadIdx.x, a.shape[0], cuda.gridDim.x * threads):
            a[k] = 0

    @cuda.jit
    def lifted_row_stats(S, labels, self_col, same_order, same_start, same_end, value_rule, self_threshold,
                         distance, pos_margin, neg_margin, duplicate_gap, stats, counts):
        """Lifted loss, pass 1, one row per block (``cpu.lifted_row_stats``): the row's largest
        positive and negative scores and its pair counts by one fixed-shape tree, then the sums of
        exp(z - largest) by another; thread 0 writes ``stats[i]`` and ``counts[i]``."""
        acc = cuda.shared.array((2, threads), f64)
        num = cuda.shared.array((2, threads), i64)
        t = cuda.threadIdx.x
        m, n = S.shape
        for i in range(cuda.blockIdx.x, m, cuda.gridDim.x):
            label = labels[i]
            own = self_col[i]
            lo = same_start[i]
            hi = same_end[i]
            pos_top = -math.inf
            neg_top = -math.inf
            n_pos = 0
            n_neg = 0
            for q in range(lo + t, hi, threads):
                j = same_order[q]
                s = S[i, j]
                if pair_kind(s, True, j == own, value_rule, self_threshold) == POSITIVE:
                    z_pos, _, _ = lifted_scores(f64(s), distance, pos_margin, neg_margin, duplicate_gap)
                    n_pos += 1
                    pos_top = max(pos_top, z_pos)
            for j in range(t, n, threads):
                if labels[j] != label:
                    _, z_neg, _ = lifted_scores(f64(S[i, j]), distance, pos_margin, neg_margin, duplicate_gap)
                    n_neg += 1
                    neg_top = max(neg_top, z_neg)
            acc[0, t] = pos_top
            acc[1, t] = neg_top
            num[0, t] = n_pos
            num[1, t] = n_neg
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    acc[0, t] = max(acc[0, t], acc[0, t + step])
                    acc[1, t] = max(acc[1, t], acc[1, t + step])
                    num[0, t] += num[0, t + step]
                    num[1, t] += num[1, t + step]
                cuda.syncthreads()
                step //= 2
            n_pos = num[0, 0]
            n_neg = num[1, 0]
            pos_top = acc[0, 0] if n_pos > 0 else 0.0
            neg_top = acc[1, 0] if n_neg > 0 else 0.0
            cuda.syncthreads()  # everyone has read the maxima before the arrays are reused
            pos_sum = 0.0
            neg_sum = 0.0
            for q in range(lo + t, hi, threads):
                j = same_order[q]
                s = S[i, j]
                if pair_kind(s, True, j == own, value_rule, self_threshold) == POSITIVE:
                    z_pos, _, _ = lifted_scores(f64(s), distance, pos_margin, neg_margin, duplicate_gap)
                    pos_sum += math.exp(z_pos - pos_top)
            for j in range(t, n, threads):
                if labels[j] != label:
                    _, z_neg, _ = lifted_scores(f64(S[i, j]), distance, pos_margin, neg_margin, duplicate_gap)
                    neg_sum += math.exp(z_neg - neg_top)
            acc[0, t] = pos_sum
            acc[1, t] = neg_sum
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    acc[0, t] += acc[0, t + step]
                    acc[1, t] += acc[1, t + step]
                cuda.syncthreads()
                step //= 2
            if t == 0:
                stats[i, 0] = pos_top
                stats[i, 1] = acc[0, 0]
                stats[i, 2] = neg_top
                stats[i, 3] = acc[1, 0]
                stats[i, 4] = log_sum_from_shifted(acc[0, 0], pos_top)
                stats[i, 5] = log_sum_from_shifted(acc[1, 0], neg_top)
                counts[i, 0] = n_pos
                counts[i, 1] = n_neg
                counts[i, 2] = n_pos
                counts[i, 3] = n_neg
            cuda.syncthreads()  # the shared arrays are reused by the next row

    @cuda.jit
    def lifted_song_rows(S, labels, self_col, same_order, same_start, same_end, value_rule, self_threshold,
                         distance, pos_margin, neg_margin, duplicate_gap, ordered_pairs, stats,
                         G, pos_used, neg_used, per_anchor):
        """Song's lifted loss, pass 2, one row per block (``cpu.lifted_song_rows``): the row's
        positives (strided over the threads) give G_ip, hinge^2 and the two parts of the negative
        factor, summed by a fixed-shape tree; then every thread writes its columns' negatives."""
        acc = cuda.shared.array((3, threads), f64)
        t = cuda.threadIdx.x
        m, n = S.shape
        for i in range(cuda.blockIdx.x, m, cuda.gridDim.x):
            label = labels[i]
            own = self_col[i]
            lse_i = stats[i, 5]
            anchor_part = 0.0
            partner_part = 0.0
            hinge_sq = 0.0
            for q in range(same_start[i] + t, same_end[i], threads):
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
            acc[0, t] = anchor_part
            acc[1, t] = partner_part
            acc[2, t] = hinge_sq
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if t < step:
                    acc[0, t] += acc[0, t + step]
                    acc[1, t] += acc[1, t + step]
                    acc[2, t] += acc[2, t + step]
                cuda.syncthreads()
                step //= 2
            factor = acc[0, 0] + acc[1, 0]
            if t == 0:
                per_anchor[i] = acc[2, 0] / (2.0 * ordered_pairs)
            top = stats[i, 2]
            total = stats[i, 3]
            for j in range(t, n, threads):
                if labels[j] != label:
                    _, z_neg, phi = lifted_scores(f64(S[i, j]), distance, pos_margin, neg_margin, duplicate_gap)
                    weight = 0.0
                    if factor > 0:
                        weight = factor * (math.exp(z_neg - top) / total)
                    G[i, j] = phi * weight
                    pos_used[i, j] = False
                    neg_used[i, j] = factor > 0 and phi != 0
                elif pair_kind(S[i, j], True, j == own, value_rule, self_threshold) != POSITIVE:
                    G[i, j] = real_np(0)
                    pos_used[i, j] = False
                    neg_used[i, j] = False
            cuda.syncthreads()  # everyone has read the factor before the next row's tree

    @cuda.jit
    def lifted_generalized_rows(S, labels, self_col, value_rule, self_threshold, distance, pos_margin, neg_margin,
                                duplicate_gap, empty_zero, stats, counts, G, pos_used, neg_used, per_anchor):
        """The generalised lifted loss, pass 2, one row per block (``cpu.lifted_generalized_rows``):
        no reduction left, every thread writes its own columns."""
        t = cuda.threadIdx.x
        m, n = S.shape
        for i in range(cuda.blockIdx.x, m, cuda.gridDim.x):
            label = labels[i]
            own = self_col[i]
            logit = lifted_generalized_logit(stats[i, 4], stats[i, 5], counts[i, 0], counts[i, 1], empty_zero)
            active = logit > 0
            if t == 0:
                per_anchor[i] = (logit if active else 0.0) / m
            scale = (1.0 if active else 0.0) / m
            for j in range(t, n, threads):
                s = S[i, j]
                kind = pair_kind(s, labels[j] == label, j == own, value_rule, self_threshold)
                weight, used = lifted_generalized_pair(f64(s), kind, active, scale, stats[i, 0], stats[i, 1], stats[i, 2],
                                                       stats[i, 3], distance, pos_margin, neg_margin, duplicate_gap)
                G[i, j] = weight
                pos_used[i, j] = used and kind == POSITIVE
                neg_used[i, j] = used and kind == NEGATIVE

    kernels_ = _Kernels(ms_rows, binomial_rows, fill_zero, fill_zero_1d, threads, tile, max_blocks)
    kernels_.contrastive_rows = contrastive_rows
    kernels_.scale_rows = scale_rows
    kernels_.lifted_row_stats = lifted_row_stats
    kernels_.lifted_song_rows = lifted_song_rows
    kernels_.lifted_generalized_rows = lifted_generalized_rows
    kernels_.similarity = similarity
    kernels_.embedding_grad = embedding_grad
    return kernels_


class _Kernels:
    """One dtype's kernels and their launch geometry (grids computed next to the launches)."""

    def __init__(self, ms_rows, binomial_rows, fill_zero, fill_zero_1d, threads, tile, max_blocks):
        self.ms_rows = ms_rows
        self.binomial_rows = binomial_rows
        self.fill_zero = fill_zero
        self.fill_zero_1d = fill_zero_1d
        self.threads = threads
        self.tile = tile
        self.max_blocks = max_blocks

    def rows(self, m: int):
        """(grid, block) for a one-row-per-block kernel over m rows."""
        return min(m, self.max_blocks), self.threads

    def tiles(self, rows: int, cols: int):
        """(grid, block) for a GEMM writing a rows x cols output in TILE x TILE tiles."""
        count = _ceil_div(rows, self.tile) * _ceil_div(cols, self.tile)
        return min(count, self.max_blocks), (self.tile, self.tile)


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


# ---------------------------------------------------------------------------------------------
# The backend


class CudaStages:
    """The CUDA backend's stages of ``gpwref.pipeline``: launch 1 (norms + S), the row kernels, the
    fused gradient launch. Host inputs are copied in and the result copied out; device inputs stay
    on the device (a cast when ``dtype`` differs) and the result is device arrays."""

    def __init__(self, inputs):
        self.inputs = inputs
        dtype = self.dtype = np.dtype(inputs.dtype)
        self.k = kernels(dtype.name)
        X, R = inputs.embeddings, inputs.ref
        m, d = X.shape
        self.n = m if inputs.ref_is_batch else R.shape[0]
        _check_device_memory(m, self.n, d, dtype, inputs.ref_is_batch)
        self.cast_from = None  # the caller's dtype when device arrays are cast to a narrower one
        if inputs.on_device:
            for array in (X, R):
                if np.dtype(array.dtype) != dtype:
                    self.cast_from = np.dtype(array.dtype)
            self.d_X = _cast(self.k, X, dtype)
            self.d_R = self.d_X if inputs.ref_is_batch else _cast(self.k, R, dtype)
        else:  # validated float64 host arrays
            self.d_X = cuda.to_device(np.ascontiguousarray(X, dtype=dtype))
            self.d_R = self.d_X if inputs.ref_is_batch else cuda.to_device(np.ascontiguousarray(R, dtype=dtype))

    def context(self):
        return contextlib.nullcontext()

    def similarity(self):
        """Launch 1: row norms + S = U V^T (V = U on the batch); the row rules on the device's norms."""
        inputs, k, dtype = self.inputs, self.k, self.dtype
        m, n = self.d_X.shape[0], self.n
        self.d_norms = cuda.device_array(m, dtype=np.float64)
        d_flags = cuda.device_array(m, dtype=np.int64)
        if inputs.ref_is_batch:
            self.d_ref_norms, d_ref_flags = self.d_norms, d_flags
        else:
            self.d_ref_norms = cuda.device_array(n, dtype=np.float64)
            d_ref_flags = cuda.device_array(n, dtype=np.int64)
        d_S = self.d_S = cuda.device_array((m, n), dtype=dtype)
        grid, block = k.tiles(m, n)
        k.similarity[grid, block](self.d_X, self.d_R, d_S, self.d_norms, self.d_ref_norms, d_flags, d_ref_flags,
                                  inputs.normalize, inputs.ref_is_batch)
        # m flags and norms to the host (no launch): the row rules, also for device inputs
        norms = self.d_norms.copy_to_host()
        check_device_rows(d_flags.copy_to_host(), norms, "embeddings", inputs.normalize, dtype, self.cast_from)
        ref_norms = norms
        if not inputs.ref_is_batch:
            ref_norms = self.d_ref_norms.copy_to_host()
            check_device_rows(d_ref_flags.copy_to_host(), ref_norms, "ref", inputs.normalize, dtype, self.cast_from)
        if not inputs.normalize:
            check_similarity_bound(norms, ref_norms, dtype)
        return d_S

    def pair_weights(self, entry, profile, params, d_S) -> PairResult:
        inputs, k, dtype = self.inputs, self.k, self.dtype
        m, n = self.d_X.shape[0], self.n
        y, yr = inputs.labels, inputs.ref_labels
        d_G = cuda.device_array((m, n), dtype=dtype)
        d_pos = cuda.device_array((m, n), dtype=np.bool_)
        d_neg = cuda.device_array((m, n), dtype=np.bool_)
        d_per_anchor = cuda.device_array(m, dtype=np.float64)
        d_counts = cuda.device_array((m, 4), dtype=np.int64)
        extras = {}
        d_y, d_yr = cuda.to_device(y), cuda.to_device(yr)
        d_own = cuda.to_device(self_columns(m, inputs.ref_is_batch, inputs.ref_self))
        grid, block = k.rows(m)
        if entry.name == "multi_similarity":
            hp = ms_scalars(params, dtype)
            rules = ms_rules(profile, dtype)
            k.ms_rows[grid, block](
                d_S, d_y, d_yr, d_own, rules["value_rule"], rules["self_threshold"], hp["mine"], hp["eps"], rules["compare"],
                rules["skip_empty"], hp["alpha"], hp["beta"], hp["lam"], dtype.type(np.inf),
                d_G, d_pos, d_neg, d_per_anchor, d_counts)
        elif entry.name == "binomial_deviance":
            k.binomial_rows[grid, block](d_S, d_y, d_yr, d_own, *pair_rules(profile, dtype), *binomial_scalars(params),
                                         d_G, d_pos, d_neg, d_per_anchor, d_counts)
        elif entry.name == "contrastive":
            d_sums = cuda.device_array((m, 2), dtype=np.float64)
            k.contrastive_rows[grid, block](d_S, d_y, d_yr, d_own, *pair_rules(profile, dtype), *contrastive_scalars(params, dtype),
                                            d_G, d_pos, d_neg, d_sums, d_counts)
            counts = d_counts.copy_to_host()
            check_counts(counts, profile, entry.name)
            zero, pos_scale, neg_scale, per_anchor, extras = contrastive_scales(counts, d_sums.copy_to_host(), profile, params, m)
            if zero:
                for array in (d_G, d_pos, d_neg):
                    k.fill_zero[grid, block](array)
            else:
                k.scale_rows[grid, block](d_G, d_pos, d_neg, pos_scale, neg_scale)
            d_per_anchor = cuda.to_device(per_anchor)
        elif entry.name == "lifted_structure":
            _lifted(k, profile, params, d_S, y, d_y, d_own, dtype, d_G, d_pos, d_neg, d_per_anchor, d_counts)
        else:  # pragma: no cover - select() admits only KERNEL_LOSSES
            raise AssertionError(entry.name)
        if profile.degenerate == "raise" or (profile.zero_if_at_most_one_pair and entry.name in ZERO_RULE_LOSSES):
            if check_counts(d_counts.copy_to_host(), profile, entry.name):
                for array in (d_G, d_pos, d_neg):
                    k.fill_zero[grid, block](array)
                k.fill_zero_1d[grid, block](d_per_anchor)
        per_anchor = d_per_anchor.copy_to_host()
        return PairResult(loss=float(per_anchor.sum()), per_anchor=d_per_anchor, grad_sim=d_G, pos_used=d_pos,
                          neg_used=d_neg, extras=extras)

    def gradients(self, pair: PairResult):
        """Last launch: dL/dX (and dL/dR) with the normalisation's backward fused, one job per output tile."""
        inputs, k, dtype = self.inputs, self.k, self.dtype
        m, d = self.d_X.shape
        n = self.n
        batch = inputs.ref_is_batch
        d_gu = cuda.device_array((m, d), dtype=dtype)
        d_gv = None if batch else cuda.device_array((n, d), dtype=dtype)
        jobs = (_ceil_div(m, k.tile) + (0 if batch else _ceil_div(n, k.tile))) * _ceil_div(d, k.tile)
        k.embedding_grad[min(jobs, k.max_blocks), (k.tile, k.tile)](
            pair.grad_sim, self.d_S, self.d_X, self.d_norms, self.d_R, self.d_ref_norms, d_gu, d_gu if batch else d_gv,
            batch, inputs.normalize)
        return d_gu, d_gv

    def finish(self, result: Result) -> Result:
        return result if self.inputs.on_device else _to_host(result)


def _cast(k, d_A, dtype):
    if np.dtype(d_A.dtype) == dtype:
        return d_A
    out = cuda.device_array(d_A.shape, dtype=dtype)
    grid, block = k.rows(d_A.shape[0])
    _cast_kernel(dtype.name)[grid, block](d_A, out)
    return out


@functools.lru_cache(maxsize=None)
def _cast_kernel(dtype_name):
    @cuda.jit
    def cast(A, out):
        for i in range(cuda.blockIdx.x, A.shape[0], cuda.gridDim.x):
            for j in range(cuda.threadIdx.x, A.shape[1], cuda.blockDim.x):
                out[i, j] = A[i, j]

    return cast


def _check_device_memory(m, n, d, dtype, ref_is_batch):
    """Refuse up front a batch whose device arrays would not fit (S, G, two masks, U, gradients)."""
    item = np.dtype(dtype).itemsize
    needed = m * n * (2 * item + 2) + (m + n) * d * item * 3
    try:
        free, _total = cuda.current_context().get_memory_info()
    except Exception:  # pragma: no cover - a context without memory queries
        return
    if needed > free:
        raise GpwrefError(
            "embeddings",
            f"the {m} x {n} pair matrices need about {needed / 2**30:.1f} GiB of device memory but only "
            f"{free / 2**30:.1f} GiB is free; use a smaller batch or a reference set in chunks",
        )


def _to_host(result: Result) -> Result:
    def host(a):
        return None if a is None else a.copy_to_host()

    return Result(
        loss=result.loss,
        per_anchor=host(result.per_anchor),
        grad_sim=host(result.grad_sim),
        pos_used=host(result.pos_used),
        neg_used=host(result.neg_used),
        extras=result.extras,
        grad_emb=host(result.grad_emb),
        grad_ref=host(result.grad_ref),
        sim=host(result.sim),
        loss_name=result.loss_name,
        profile=result.profile,
        hyper=result.hyper,
    )


# ---------------------------------------------------------------------------------------------
# Lifted structured loss (both forms, batch only)


def _lifted(k, profile, params, d_S, y, d_y, d_own, dtype, d_G, d_pos, d_neg, d_per_anchor, d_counts):
    """The lifted loss's rows on the device, the passes of ``backends.lifted_numba``: pass 1 (every
    row's log-sum-exps and counts), a host sum of the counts (Q, PML's pair-count rule), pass 2
    (the chosen form's rows, or zeros). Two launches plus one m x 4 copy to the host."""
    form, distance, pos_margin, neg_margin, gap = lifted_scalars(params, dtype)
    rules = pair_rules(profile, dtype)
    scores = (distance, pos_margin, neg_margin, gap)
    groups = tuple(cuda.to_device(array) for array in same_label_columns(y, y))
    m = d_S.shape[0]
    d_stats = cuda.device_array((m, 6), dtype=np.float64)
    grid, block = k.rows(m)
    k.lifted_row_stats[grid, block](d_S, d_y, d_own, *groups, *rules, *scores, d_stats, d_counts)
    counts = d_counts.copy_to_host()
    check_counts(counts, profile, "lifted_structure")
    ordered_pairs = int(counts[:, 0].sum())
    if lifted_zero_rule(counts, profile) or (form == "song" and ordered_pairs == 0):
        for array in (d_G, d_pos, d_neg):
            k.fill_zero[grid, block](array)
        k.fill_zero_1d[grid, block](d_per_anchor)
    elif form == "song":
        k.lifted_song_rows[grid, block](d_S, d_y, d_own, *groups, *rules, *scores, float(ordered_pairs), d_stats,
                                        d_G, d_pos, d_neg, d_per_anchor)
    else:
        k.lifted_generalized_rows[grid, block](d_S, d_y, d_own, *rules, *scores, profile.empty_lse == "zero", d_stats,
                                               d_counts, d_G, d_pos, d_neg, d_per_anchor)
