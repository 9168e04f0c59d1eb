"""Numba CPU kernels: parallel over anchors (rows), one thread owns a row, fixed reduction order.

Each kernel writes only its own rows of the outputs and keeps its accumulators in local variables,
so there are no races and two runs give identical bits whatever the thread schedule. The GEMMs
(S = U V^T and the embedding gradient) are not here: the backend calls BLAS through NumPy for them.

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

import math

import numba
import numpy as np
from numba import prange

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

_kernel = numba.njit(parallel=True, cache=True, nogil=True)
_inline = numba.njit(inline="always", cache=True)


@_kernel
def unit_rows(X, U, norms):
    """``norms[i] = |X_i|`` (accumulated in float64) and ``U_i = X_i / |X_i|`` in U's dtype.

    A zero row gets norm 0 and is left unwritten; the caller refuses it before using U.
    """
    m, d = X.shape
    for i in prange(m):
        total = 0.0
        for k in range(d):
            total += np.float64(X[i, k]) * np.float64(X[i, k])
        norm = math.sqrt(total)
        norms[i] = norm
        if norm > 0.0:
            for k in range(d):
                U[i, k] = X[i, k] / norm


@_kernel
def ms_row_stats(S, labels, ref_labels, self_col, same_order, same_start, same_end, value_rule, self_threshold,
                 mine, eps, compare, skip_empty, alpha, beta, lam, inf, extremes, kept, sums, per_anchor, counts):
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
    for i in prange(m):
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
        for j in range(n):
            if ref_labels[j] == label:
                continue
            s = S[i, j]
            if s > max_neg:
                max_neg = s
            if can_keep and (not mine or ms_keep_negative(s, min_pos, eps, compare)):
                z = ms_negative_logit(f64(s), beta, lam)
                if z > top_neg:
                    sum_neg = sum_neg * math.exp(top_neg - z)
                    top_neg = z
                sum_neg += math.exp(z - top_neg)
                kept_neg += 1
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


@_kernel
def ms_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, mine, eps, compare,
            alpha, beta, lam, extremes, kept, sums, G, pos_used, neg_used):
    """MS loss, G and the kept-pair masks from ``ms_row_stats``' statistics (any reference set).

    G and the masks must come in zeroed: only kept pairs are written (with mining most negatives
    are not kept, and ``np.zeros`` memory costs nothing until it is touched).
    """
    m, n = S.shape
    for i in prange(m):
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


@_kernel
def ms_rows_symmetric(S, labels, value_rule, self_threshold, mine, eps, compare, alpha, beta, lam,
                      extremes, kept, sums, row0, G, H, pos_used, neg_used):
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
    for r in prange(H.shape[0]):
        i = row0 + r
        label = labels[i]
        for j in range(m):
            s = S[i, j]
            if labels[j] != label:  # a negative for both rows: kept by row i? by row j?
                keep_i = any_neg[i] and (not mine or ms_keep_negative(s, min_pos[i], eps, compare))
                keep_j = any_neg[j] and (not mine or ms_keep_negative(s, min_pos[j], eps, compare))
                if not (keep_i or keep_j):
                    continue
                z = ms_negative_logit(f64(s), beta, lam)
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


@_kernel
def binomial_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, alpha, beta, lam,
                  G, pos_used, neg_used, per_anchor, counts):
    """Binomial deviance from S, one anchor per iteration (``gpwref.losses.binomial_deviance``).

    Two passes over the row: (1) pair kinds and the set sizes |P_i|, |N_i|; (2) the softplus terms
    (divided by their set size, as the reference does) and the logistic weights. Every positive and
    negative pair is used. Logits and sums in float64 (``alpha``, ``beta``, ``lam`` float64).
    """
    m, n = S.shape
    for i in prange(m):
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


@_kernel
def contrastive_rows(S, labels, ref_labels, self_col, value_rule, self_threshold, distance, linear_pos,
                     pos_margin, neg_margin, duplicate_gap, G, pos_used, neg_used, sums, counts):
    """Contrastive loss, first pass (``gpwref.losses.contrastive``): per pair the term and slope
    (``scalar.contrastive_pair``); G holds the unscaled slopes of the counted pairs, ``sums[i]`` the
    row's counted positive and negative terms, ``counts[i]`` (positives, negatives, counted
    positives, counted negatives). The reduction's scales (1/m, or 1/count over the whole batch
    for avg_nonzero) are applied by ``scale_rows`` once the batch totals are known."""
    m, n = S.shape
    for i in prange(m):
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


@_kernel
def scale_rows(G, pos_used, neg_used, pos_scale, neg_scale):
    """G_ij *= pos_scale on used positives, neg_scale on used negatives (rows in parallel)."""
    m, n = G.shape
    for i in prange(m):
        for j in range(n):
            if pos_used[i, j]:
                G[i, j] = G[i, j] * pos_scale
            elif neg_used[i, j]:
                G[i, j] = G[i, j] * neg_scale


_TILE = 32


@_kernel
def symmetrize(G, H):
    """``H = G + G^T`` (square G), ``H_ij = G_ij + G_ji`` in that order.

    Works on pairs of 32 x 32 tiles (I, J), (J, I): both are copied row by row (contiguous reads)
    into small buffers, so the transposed reads hit L1 instead of striding through memory at the
    row pitch (which, for pitches that are multiples of 4 KiB, also collide in the same cache sets).
    Each pair of tiles is one parallel work item; every H entry is written by exactly one item.
    """
    m = G.shape[0]
    blocks = (m + _TILE - 1) // _TILE
    items = blocks * (blocks + 1) // 2
    tiles = np.empty((items, 2), np.int64)
    item = 0
    for bi in range(blocks):
        for bj in range(bi, blocks):
            tiles[item, 0] = bi
            tiles[item, 1] = bj
            item += 1
    for q in prange(items):
        i0 = tiles[q, 0] * _TILE
        j0 = tiles[q, 1] * _TILE
        ni = min(_TILE, m - i0)
        nj = min(_TILE, m - j0)
        a = np.empty((_TILE, _TILE), G.dtype)  # a[x, y] = G[i0 + x, j0 + y]
        b = np.empty((_TILE, _TILE), G.dtype)  # b[y, x] = G[j0 + y, i0 + x]
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


@_kernel
def through_normalisation(grad_unit, U, norms, out):
    """``out_i = (g_i - u_i (g_i . u_i)) / |x_i|``: dL/dx_i from dL/du_i through u = x / |x|."""
    m, d = grad_unit.shape
    for i in prange(m):
        radial = 0.0
        for k in range(d):
            radial += np.float64(grad_unit[i, k]) * np.float64(U[i, k])
        inv_norm = 1.0 / norms[i]
        for k in range(d):
            out[i, k] = (grad_unit[i, k] - U[i, k] * radial) * inv_norm
