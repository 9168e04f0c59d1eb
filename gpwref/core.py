"""The public entry points: ``compute`` (from embeddings) and ``from_similarity`` (from S)."""

from __future__ import annotations

from . import pipeline
from .catalog import get_entry, resolve_hyper
from .errors import check_memory
from .inputs import check_normalize, is_device_array, validate, validate_device, validate_similarity
from .kernels import backends
from .pairs import PairResult, Result, build_pairs, check_degenerate
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
    check_normalize(normalize)
    work_dtype = backends.select(backend, dtype, entry.name)
    if backend == "cuda" and (is_device_array(embeddings) or is_device_array(ref)):
        inputs = validate_device(entry, embeddings, labels, ref, ref_labels, ref_self, normalize, dtype)
    else:
        inputs = validate(entry, embeddings, labels, ref, ref_labels, ref_self, normalize, work_dtype, kernel=backend != "numpy")
        check_memory(inputs.embeddings.shape[0], inputs.ref.shape[0], _PAIR_ARRAYS, "embeddings")
    return pipeline.run(entry, prof, params, inputs, backend)


def from_similarity(loss: str, S, labels, ref_labels=None, *, profile="paper", ref_self=None, **hyper) -> PairResult:
    """A loss as a function of a similarity matrix you already have.

    ``ref_labels=None`` means the reference set is the batch: S must be square and its diagonal is
    the self pair. Otherwise S is m x n against a reference set labelled ``ref_labels``.
    """
    entry = get_entry(loss)
    prof = get_profile(profile)
    params = resolve_hyper(entry, prof.name, hyper)
    checked = validate_similarity(entry, S, labels, ref_labels, ref_self)
    S, y, yr, ref_is_batch, ref_self = checked.S, checked.labels, checked.ref_labels, checked.ref_is_batch, checked.ref_self
    m, n = S.shape
    check_memory(m, n, _PAIR_ARRAYS, "S")
    pairs = build_pairs(S, y, yr, ref_is_batch, prof, ref_self)
    check_degenerate(pairs, prof, entry.name)
    return entry.function(S, pairs, prof, **params)

