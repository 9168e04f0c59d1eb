"""The public entry points: ``compute`` (from embeddings) and ``from_similarity`` (from S)."""

from __future__ import annotations

import numpy as np

from .catalog import get_entry, resolve_hyper
from .errors import GpwrefError, as_float_matrix, as_labels, check_memory
from .pairs import PairResult, Result, build_pairs, check_degenerate, grad_embeddings, unit_rows
from .profiles import get_profile

# float64 m x n arrays a loss may hold at once (S, masks, weights, G, temporaries): for the memory guard.
_PAIR_ARRAYS = 10


def compute(
    loss: str,
    embeddings,
    labels,
    *,
    profile="paper",
    ref=None,
    ref_labels=None,
    normalize: bool = True,
    ref_self=None,
    backend: str = "numpy",
    dtype=None,
    **hyper,
) -> Result:
    """Value, GPW weights ``grad_sim = dL/dS``, embedding gradients and used-pair masks of a loss.

    ``embeddings`` (m x d) and integer ``labels`` (m,); optionally a reference set ``ref`` (n x d)
    with ``ref_labels`` (a memory bank): then S = X ref^T, gradients go to both (``grad_ref``), and
    ``ref_self`` (m,) may name each anchor's own row in ``ref`` (-1: none) so it is not a pair.
    ``normalize=True`` L2-normalises rows first and differentiates through it; ``normalize=False``
    uses the embeddings as given. Hyper-parameters default to the profile's values for this loss.

    ``backend``: "numpy" (the reference, every loss), "numba" (CPU kernels) or "cuda" (Numba CUDA;
    also takes device arrays, e.g. torch CUDA tensors, without a copy and then returns device
    arrays); ``dtype``: None (float64) or "float32". See ``gpwref.kernels.backends``.
    """
    entry = get_entry(loss)
    prof = get_profile(profile)
    params = resolve_hyper(entry, prof.name, hyper)
    if not isinstance(normalize, (bool, np.bool_)):
        raise GpwrefError("normalize", "must be True or False", repr(normalize))
    from .kernels import backends

    work_dtype = backends.select(backend, dtype, entry.name)
    if entry.embeddings_function is not None:  # not a function of S alone (numpy backend only)
        return entry.embeddings_function(embeddings, labels, profile=prof.name, ref=ref, ref_labels=ref_labels,
                                         normalize=normalize, ref_self=ref_self, dtype=dtype, **hyper)
    if backend == "cuda" and (backends.is_device_array(embeddings) or backends.is_device_array(ref)):
        return backends.run_device(entry, prof, params, embeddings, labels, ref, ref_labels, normalize, ref_self, dtype)
    X, y, R, yr, ref_is_batch, ref_self = validated_inputs(entry, embeddings, labels, ref, ref_labels, ref_self)
    m = X.shape[0]
    check_memory(m, R.shape[0], _PAIR_ARRAYS, "embeddings")
    if backend != "numpy":
        return backends.run_host(backend, entry, prof, params, X, y, R, yr, ref_is_batch, ref_self, normalize, work_dtype)
    if work_dtype != X.dtype:  # the reference's own code, run in float32
        X = X.astype(work_dtype)
        R = X if ref_is_batch else R.astype(work_dtype)

    if normalize:
        U, norms = unit_rows(X, "embeddings")
        V, ref_norms = (U, norms) if ref_is_batch else unit_rows(R, "ref")
    else:
        U, norms, V, ref_norms = X, None, R, None
    with np.errstate(over="ignore", invalid="ignore"):
        S = U @ V.T
    if not np.all(np.isfinite(S)):
        raise GpwrefError("embeddings", "with normalize=False the similarities X ref^T overflow float64; scale the rows down or normalise them")
    pairs = build_pairs(S, y, yr, ref_is_batch, prof, ref_self)
    check_degenerate(pairs, prof, entry.name)
    pair_result: PairResult = entry.function(S, pairs, prof, **params)
    grad_emb, grad_ref = grad_embeddings(pair_result.grad_sim, U, norms, V, ref_norms, ref_is_batch)
    return Result(
        loss=pair_result.loss,
        per_anchor=pair_result.per_anchor,
        grad_sim=pair_result.grad_sim,
        pos_used=pair_result.pos_used,
        neg_used=pair_result.neg_used,
        extras=pair_result.extras,
        grad_emb=grad_emb,
        grad_ref=grad_ref,
        sim=S,
        loss_name=entry.name,
        profile=prof.name,
        hyper=params,
    )


def validated_inputs(entry, embeddings, labels, ref, ref_labels, ref_self):
    """The checked float64 embeddings, labels and reference set of a call (shared by every entry point).

    Returns (X, y, R, yr, ref_is_batch, ref_self); R, yr are X, y when the batch is its own reference.
    """
    X = as_float_matrix(embeddings, "embeddings")
    m = X.shape[0]
    y = as_labels(labels, "labels", m, "embeddings")
    if (ref is None) != (ref_labels is None):
        raise GpwrefError("ref_labels", "ref and ref_labels must be given together (or neither)")
    if ref is None:
        if ref_self is not None:
            raise GpwrefError("ref_self", "only applies with a reference set (ref=...); the batch's own diagonal is always excluded")
        return X, y, X, y, True, None
    if not entry.supports_ref:
        raise GpwrefError("ref", f"loss '{entry.name}' is defined on the batch only; a separate reference set is not supported ({entry.limits})")
    R = as_float_matrix(ref, "ref")
    if R.shape[1] != X.shape[1]:
        raise GpwrefError("ref", f"must have the embeddings' dimension {X.shape[1]}", f"dimension {R.shape[1]}")
    yr = as_labels(ref_labels, "ref_labels", R.shape[0], "ref")
    return X, y, R, yr, False, _check_ref_self(ref_self, m, R.shape[0])


def from_similarity(loss: str, S, labels, ref_labels=None, *, profile="paper", ref_self=None, **hyper) -> PairResult:
    """A loss as a function of a similarity matrix you already have.

    ``ref_labels=None`` means the reference set is the batch: S must be square and its diagonal is
    the self pair. Otherwise S is m x n against a reference set labelled ``ref_labels``.
    """
    entry = get_entry(loss)
    prof = get_profile(profile)
    params = resolve_hyper(entry, prof.name, hyper)
    S = as_float_matrix(S, "S")
    m, n = S.shape
    y = as_labels(labels, "labels", m, "S")
    ref_is_batch = ref_labels is None
    if ref_is_batch:
        if m != n:
            raise GpwrefError("S", "must be square when ref_labels is None (the batch is its own reference set)", f"shape {S.shape}")
        if ref_self is not None:
            raise GpwrefError("ref_self", "only applies with ref_labels (a separate reference set)")
        yr = y
    else:
        if not entry.supports_ref:
            raise GpwrefError("ref_labels", f"loss '{entry.name}' is defined on the batch only ({entry.limits})")
        yr = as_labels(ref_labels, "ref_labels", n, "S's columns")
        ref_self = _check_ref_self(ref_self, m, n)
    check_memory(m, n, _PAIR_ARRAYS, "S")
    pairs = build_pairs(S, y, yr, ref_is_batch, prof, ref_self)
    check_degenerate(pairs, prof, entry.name)
    return entry.function(S, pairs, prof, **params)


def _check_ref_self(ref_self, m: int, n: int):
    if ref_self is None:
        return None
    array = np.asarray(ref_self)
    if array.ndim != 1 or array.shape[0] != m or not np.issubdtype(array.dtype, np.integer):
        raise GpwrefError("ref_self", f"must be an integer array of length {m} (each anchor's row in ref, -1 for none)", f"shape {array.shape}, dtype {array.dtype}")
    if np.any(array < -1) or np.any(array >= n):
        raise GpwrefError("ref_self", f"entries must lie in [-1, {n - 1}]", f"min {array.min()}, max {array.max()}")
    return array.astype(np.int64)
