"""Backends behind ``gpwref.compute(..., backend=...)``: "numpy" (the reference), "numba", "cuda".

``select(backend, dtype, loss)`` validates the choice before any work (an unknown name, a loss
without a kernel, or a backend this machine cannot run is a ``GpwrefError``, never a silent
fall-back). ``NumbaStages`` are the Numba CPU backend's stages of ``gpwref.pipeline``, run on inputs
``gpwref.inputs`` validated; the helpers below turn a profile and hyper-parameters into kernel
arguments for both kernel backends (``gpwref.kernels.cuda`` holds the CUDA stages).

Working precision (``dtype``): ``None`` means float64, the reference's precision, on every backend;
``"float32"`` stores X, S, G and the gradients in float32, runs the GEMMs and the comparisons
(self rule, mining) in float32, and evaluates the logits, exponentials, sums and values in float64
(they are O(m n) work next to the O(m n d) GEMMs, and float32 logits would cost beta * 2^-24 * |z|
of relative accuracy, about 1e-5 at beta = 50). The float32 NumPy path is the reference's own
vectorised code run on float32 arrays, float32 throughout.

Every backend returns the same ``Result``: arrays in the working dtype (``per_anchor`` always
float64). The CUDA backend returns device arrays when it was given device arrays, NumPy arrays
otherwise.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..errors import GpwrefError
from ..inputs import check_similarities_finite, work_dtype
from ..pairs import PairResult, check_degenerate
from ..rules import DUPLICATE_GAP, DUPLICATE_SQ_DISTANCE, check_margins, duplicate_cutoff, for_form
from . import scalar

BACKENDS = ("numpy", "numba", "cuda")

# Losses with kernels (the NumPy backend runs every catalog loss).
KERNEL_LOSSES = ("multi_similarity", "binomial_deviance", "contrastive", "lifted_structure")


def select(backend, dtype, loss: str) -> np.dtype:
    """Validate ``backend`` and ``dtype`` for ``loss``; return the working dtype."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise GpwrefError("backend", f"must be one of {list(BACKENDS)}", repr(backend))
    work = work_dtype(dtype)
    if backend == "numpy":
        return work
    if loss not in KERNEL_LOSSES:
        raise GpwrefError("backend", f"'{backend}' has kernels for {list(KERNEL_LOSSES)} only; loss '{loss}' runs on backend='numpy'")
    if backend == "numba":
        _require_numba()
    else:
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise GpwrefError("backend", "'cuda' is unavailable on this machine: " + reason)
    return work


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can (a GPU, or Numba's simulator)."""
    try:
        from numba import cuda
    except ImportError as error:
        return f"numba.cuda cannot be imported ({error}); install the 'cuda' extra (numba-cuda)"
    if cuda.is_available():
        return None
    return ("numba.cuda.is_available() is False: no NVIDIA GPU or CUDA driver was found "
            "(NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernels in Numba's simulator instead)")


def _require_numba() -> None:
    try:
        import numba  # noqa: F401
    except ImportError as error:  # pragma: no cover - numba is a dependency
        raise GpwrefError("backend", "'numba' is unavailable: the numba package cannot be imported", str(error)) from error


def ms_scalars(params: dict, dtype: np.dtype) -> dict:
    """The MS hyper-parameters as kernel arguments: ``eps`` (compared with S) in the working dtype,
    ``alpha``, ``beta``, ``lam`` (in the float64 logits) as float64; ``mine`` is False for eps None."""
    mine = params["eps"] is not None
    return {
        "mine": mine,
        "eps": dtype.type(params["eps"] if mine else 0.0),
        "alpha": float(params["alpha"]),
        "beta": float(params["beta"]),
        "lam": float(params["lam"]),
    }


def self_columns(m: int, ref_is_batch: bool, ref_self) -> np.ndarray:
    """Each anchor's own column in S: i for the batch, ``ref_self[i]`` (or -1) for a reference set."""
    if ref_is_batch:
        return np.arange(m, dtype=np.int64)
    if ref_self is None:
        return np.full(m, -1, dtype=np.int64)
    return np.asarray(ref_self, dtype=np.int64)


def ms_rules(profile, dtype: np.dtype) -> dict:
    """The profile's rules for the MS kernels, as kernel arguments."""
    return {
        "value_rule": profile.self_rule == "value",
        "self_threshold": dtype.type(profile.self_threshold if profile.self_rule == "value" else 0.0),
        "compare": scalar.MINING_CODES[profile.mining_compare],
        "skip_empty": profile.empty_mined == "skip_anchor",
    }


class _Degenerate:
    """Per-anchor pair counts in the shape ``gpwref.pairs.check_degenerate`` reads (``.pos``/``.neg``),
    so that a kernel backend raises the reference's own error for the same batch."""

    def __init__(self, counts: np.ndarray):
        self.pos = counts[:, 0:1] > 0
        self.neg = counts[:, 1:2] > 0


# Losses whose reference applies the profile rule zero_if_at_most_one_pair to the kept pairs.
ZERO_RULE_LOSSES = ("multi_similarity",)


def check_counts(counts: np.ndarray, profile, loss: str) -> bool:
    """Raise as the reference does on anchors without positives/negatives; return True when the
    PML rule 'zero loss if at most one kept positive and one kept negative pair' applies."""
    check_degenerate(_Degenerate(counts), profile, loss)
    return bool(loss in ZERO_RULE_LOSSES and profile.zero_if_at_most_one_pair
                and counts[:, 2].sum() <= 1 and counts[:, 3].sum() <= 1)


def pair_rules(profile, dtype: np.dtype) -> tuple:
    """The self rule as kernel arguments: (value_rule, self_threshold in the working dtype)."""
    value_rule = profile.self_rule == "value"
    return value_rule, dtype.type(profile.self_threshold if value_rule else 0.0)


def binomial_scalars(params: dict) -> tuple:
    return float(params["alpha"]), float(params["beta"]), float(params["lam"])


def contrastive_scalars(params: dict, dtype) -> tuple:
    """(distance code, linear positive term?, pos_margin, neg_margin, duplicate gap for S in
    ``dtype``), after the reference's own margin check (euclidean margins are distances, >= 0)."""
    check_margins(params["distance"], pos_margin=params["pos_margin"], neg_margin=params["neg_margin"])
    linear = params["distance"] == "cosine" and params["pos_margin"] is None and params["reduction"] == "anchor_sum"
    return (scalar.DISTANCE_CODES[params["distance"]], linear, float(params["pos_margin"] or 0.0),
            float(params["neg_margin"]), duplicate_cutoff(dtype, DUPLICATE_SQ_DISTANCE))


def contrastive_scales(counts: np.ndarray, sums: np.ndarray, profile, params: dict, m: int):
    """After the row pass: (zero everything?, pos_scale, neg_scale, per_anchor, extras), the
    reference's reduction applied to the batch totals."""
    if profile.zero_if_at_most_one_pair and counts[:, 0].sum() <= 1 and counts[:, 1].sum() <= 1:
        return True, 0.0, 0.0, np.zeros(m), {"active_pos_pairs": 0, "active_neg_pairs": 0}
    active_pos, active_neg = int(counts[:, 2].sum()), int(counts[:, 3].sum())
    if params["reduction"] == "avg_nonzero":
        pos_scale = 1.0 / active_pos if active_pos else 0.0
        neg_scale = 1.0 / active_neg if active_neg else 0.0
    else:
        pos_scale = neg_scale = 1.0 / m
    per_anchor = sums[:, 0] * pos_scale + sums[:, 1] * neg_scale
    return False, pos_scale, neg_scale, per_anchor, {"active_pos_pairs": active_pos, "active_neg_pairs": active_neg}


# ---------------------------------------------------------------------------------------------
# The Numba CPU backend's stages of gpwref.pipeline

# Below this many pairs a parallel region costs more than it saves (and on a busy machine waiting
# for the second thread's time slice can cost milliseconds): the Numba kernels then run on one thread.
PARALLEL_MIN_PAIRS = 1 << 15
# Rows of H = G + G^T formed at a time by each worker of the symmetric MS kernel (then multiplied
# by U): 8 MiB per worker.
SYMMETRIC_BLOCK_BYTES = 8 << 20


class NumbaStages:
    """S by ``cpu.gram`` / ``cpu.matmul_rows``, the loss's row kernels, the gradient GEMMs and the
    normalisation's backward, on the pool (one thread below ``PARALLEL_MIN_PAIRS`` pairs)."""

    def __init__(self, inputs):
        from . import cpu

        self.cpu = cpu
        self.inputs = inputs
        dtype = inputs.dtype
        self.X = inputs.embeddings.astype(dtype, copy=False)
        self.R = self.X if inputs.ref_is_batch else inputs.ref.astype(dtype, copy=False)
        self.grad_unit = None

    @contextmanager
    def context(self):
        cpu = self.cpu
        pairs = self.X.shape[0] * self.R.shape[0]
        with cpu.threads(1 if pairs < PARALLEL_MIN_PAIRS else cpu.max_threads()):
            yield

    def similarity(self) -> np.ndarray:
        cpu, inputs = self.cpu, self.inputs
        if inputs.normalize:
            self.U, self.norms = _unit_rows(cpu, self.X, "embeddings")
            self.V, self.ref_norms = (self.U, self.norms) if inputs.ref_is_batch else _unit_rows(cpu, self.R, "ref")
        else:
            self.U, self.V = self.X, self.R
        # On the batch S = U U^T is its lower triangle, mirrored: exactly symmetric (the MS kernels use it).
        S = cpu.gram(self.U) if inputs.ref_is_batch else cpu.matmul_rows(self.U, self.V.T)
        if not inputs.normalize:  # unit rows bound |S| by 1
            check_similarities_finite(S, inputs.dtype)
        return S

    def pair_weights(self, entry, profile, params, S) -> PairResult:
        inputs = self.inputs
        self.symmetric = inputs.ref_is_batch and entry.name == "multi_similarity"
        pair = _numba_pairs(self.cpu, entry, profile, params, S, inputs.labels, inputs.ref_labels, inputs.ref_is_batch,
                            inputs.ref_self, inputs.dtype, self.U if self.symmetric else None)
        self.grad_unit = pair.get("grad_unit")
        per_anchor = pair["per_anchor"]
        return PairResult(loss=float(per_anchor.sum()), per_anchor=per_anchor, grad_sim=pair["grad_sim"],
                          pos_used=pair["pos_used"], neg_used=pair["neg_used"], extras=pair.get("extras", {}))

    def gradients(self, pair: PairResult):
        cpu, inputs, G, U, V = self.cpu, self.inputs, pair.grad_sim, self.U, self.V
        if inputs.ref_is_batch:
            if self.grad_unit is not None:  # the symmetric MS kernels produced (G + G^T) U block by block
                grad_u = self.grad_unit
            else:
                H = np.empty_like(G)
                cpu.symmetrize(G, H)
                grad_u = cpu.matmul_rows(H, U)
            grad_v = None
        else:
            grad_u, grad_v = cpu.matmul_rows(G, V), cpu.matmul_rows(G.T, U)
        if inputs.normalize:
            grad_u = _through(cpu, grad_u, U, self.norms)
            if grad_v is not None:
                grad_v = _through(cpu, grad_v, V, self.ref_norms)
        return grad_u, grad_v

    def finish(self, result):
        return result


def _unit_rows(cpu, X, argument):
    U = np.empty_like(X)
    norms = np.empty(X.shape[0], dtype=np.float64)
    cpu.unit_rows(X, U, norms)
    if np.any(norms == 0.0):
        row = int(np.argmax(norms == 0.0))
        raise GpwrefError(argument, "rows must have non-zero norm to be L2-normalised (or pass normalize=False)", f"row {row} is all zeros")
    return U, norms


def _through(cpu, grad_unit, U, norms):
    out = np.empty_like(grad_unit)
    cpu.through_normalisation(grad_unit, U, norms, out)
    return out


def same_label_columns(labels: np.ndarray, ref_labels: np.ndarray):
    """Columns grouped by label: row i's same-label columns are ``order[start[i]:end[i]]``, in
    increasing column order (a stable sort), so kernels visit an anchor's few positives directly."""
    order = np.argsort(ref_labels, kind="stable")
    sorted_labels = ref_labels[order]
    start = np.searchsorted(sorted_labels, labels, side="left")
    end = np.searchsorted(sorted_labels, labels, side="right")
    return order.astype(np.int64), start.astype(np.int64), end.astype(np.int64)


def _numba_pairs(cpu, entry, profile, params, S, y, yr, ref_is_batch, ref_self, dtype, unit=None) -> dict:
    """The loss's row kernels on S: G, masks, per-anchor values. With ``unit`` (the batch's U, S =
    U U^T exactly symmetric; MS only) also ``grad_unit`` = (G + G^T) U, formed block by block."""
    symmetric = unit is not None
    m, n = S.shape
    per_anchor = np.empty(m, dtype=np.float64)
    counts = np.empty((m, 4), dtype=np.int64)
    own = self_columns(m, ref_is_batch, ref_self)
    if entry.name == "multi_similarity":  # the MS kernels write kept pairs only: zeroed outputs
        G = np.zeros((m, n), dtype=dtype)
        pos_used = np.zeros((m, n), dtype=bool)
        neg_used = np.zeros((m, n), dtype=bool)
    else:
        G = np.empty((m, n), dtype=dtype)
        pos_used = np.empty((m, n), dtype=bool)
        neg_used = np.empty((m, n), dtype=bool)
    if entry.name == "multi_similarity":
        hp = ms_scalars(params, dtype)
        rules = ms_rules(profile, dtype)
        extremes = np.empty((m, 2), dtype=dtype)
        kept = np.empty((m, 2), dtype=np.bool_)
        sums = np.empty((m, 5), dtype=np.float64)
        common = (rules["value_rule"], rules["self_threshold"], hp["mine"], hp["eps"], rules["compare"])
        cpu.ms_row_stats(S, y, yr, own, *same_label_columns(y, yr), *common, rules["skip_empty"], hp["alpha"],
                         hp["beta"], hp["lam"], dtype.type(np.inf), extremes, kept, sums, per_anchor, counts)
        if check_counts(counts, profile, entry.name):  # PML: at most one kept pair of each kind
            zeros = {"grad_sim": np.zeros((m, n), dtype=dtype), "pos_used": np.zeros((m, n), dtype=bool),
                     "neg_used": np.zeros((m, n), dtype=bool), "per_anchor": np.zeros(m)}
            if symmetric:
                zeros["grad_unit"] = np.zeros((m, unit.shape[1]), dtype=dtype)
            return zeros
        out = {"grad_sim": G, "pos_used": pos_used, "neg_used": neg_used, "per_anchor": per_anchor}
        scalars = (hp["alpha"], hp["beta"], hp["lam"], extremes, kept, sums)
        if symmetric:  # H = G + G^T in blocks of rows, each multiplied by U at once (H is never whole)
            block = max(1, min(m, SYMMETRIC_BLOCK_BYTES // (m * dtype.itemsize)))
            out["grad_unit"] = cpu.ms_symmetric_gradient(S, y, *common, *scalars, G, pos_used, neg_used, unit, block)
        else:
            cpu.ms_rows(S, y, yr, own, *common, *scalars, G, pos_used, neg_used)
        return out
    if entry.name == "lifted_structure":
        return lifted_numba(cpu, profile, params, S, y, own, dtype, G, pos_used, neg_used, per_anchor, counts)
    if entry.name == "binomial_deviance":
        cpu.binomial_rows(S, y, yr, own, *pair_rules(profile, dtype), *binomial_scalars(params),
                          G, pos_used, neg_used, per_anchor, counts)
    elif entry.name == "contrastive":
        sums = np.empty((m, 2), dtype=np.float64)
        cpu.contrastive_rows(S, y, yr, own, *pair_rules(profile, dtype), *contrastive_scalars(params, dtype),
                             G, pos_used, neg_used, sums, counts)
        check_counts(counts, profile, entry.name)
        zero, pos_scale, neg_scale, per_anchor, extras = contrastive_scales(counts, sums, profile, params, m)
        if zero:
            G[:] = 0
            pos_used[:] = False
            neg_used[:] = False
        else:
            cpu.scale_rows(G, pos_used, neg_used, pos_scale, neg_scale)
        return {"grad_sim": G, "pos_used": pos_used, "neg_used": neg_used, "per_anchor": per_anchor, "extras": extras}
    else:  # pragma: no cover - select() admits only KERNEL_LOSSES
        raise AssertionError(entry.name)
    if check_counts(counts, profile, entry.name):
        G[:] = 0
        pos_used[:] = False
        neg_used[:] = False
        per_anchor[:] = 0
    return {"grad_sim": G, "pos_used": pos_used, "neg_used": neg_used, "per_anchor": per_anchor}


# ---------------------------------------------------------------------------------------------
# Lifted structured loss (both forms, batch only)


def lifted_scalars(params: dict, dtype) -> tuple:
    """(form, distance code, pos_margin, neg_margin, duplicate gap for S in ``dtype``) of the chosen
    form (the distance and margins may be given per form, ``rules.for_form``)."""
    form = params["form"]
    return (form, scalar.DISTANCE_CODES[for_form(params["distance"], form)], float(for_form(params["pos_margin"], form)),
            float(for_form(params["neg_margin"], form)), duplicate_cutoff(dtype, DUPLICATE_GAP))


def lifted_zero_rule(counts: np.ndarray, profile) -> bool:
    """PML's pair-count rule (``gpwref.pairs.zero_by_pair_count``) on the row counts of every pair."""
    return bool(profile.zero_if_at_most_one_pair and counts[:, 0].sum() <= 1 and counts[:, 1].sum() <= 1)


def lifted_numba(cpu, profile, params, S, y, own, dtype, G, pos_used, neg_used, per_anchor, counts) -> dict:
    """The lifted loss's Numba kernels on the batch's S (pass 1: every row's log-sum-exps; pass 2:
    the chosen form's rows). Song's pass 2 needs Q, the batch's count of ordered positive pairs:
    a host sum of the per-row counts between the passes."""
    form, distance, pos_margin, neg_margin, gap = lifted_scalars(params, dtype)
    rules = pair_rules(profile, dtype)
    scores = (distance, pos_margin, neg_margin, gap)
    groups = same_label_columns(y, y)
    m = S.shape[0]
    stats = np.empty((m, 6), dtype=np.float64)
    cpu.lifted_row_stats(S, y, own, *groups, *rules, *scores, stats, counts)
    check_counts(counts, profile, "lifted_structure")
    ordered_pairs = int(counts[:, 0].sum())
    if lifted_zero_rule(counts, profile) or (form == "song" and ordered_pairs == 0):
        G[:] = 0
        pos_used[:] = False
        neg_used[:] = False
        per_anchor[:] = 0.0
    elif form == "song":
        cpu.lifted_song_rows(S, y, own, *groups, *rules, *scores, float(ordered_pairs), stats,
                             G, pos_used, neg_used, per_anchor)
    else:
        cpu.lifted_generalized_rows(S, y, own, *rules, *scores, profile.empty_lse == "zero", stats, counts,
                                    G, pos_used, neg_used, per_anchor)
    return {"grad_sim": G, "pos_used": pos_used, "neg_used": neg_used, "per_anchor": per_anchor}
