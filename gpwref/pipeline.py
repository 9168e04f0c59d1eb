"""The one pipeline every backend runs: validated inputs -> S -> pairs and weights -> gradients.

A backend supplies its stages (an object built from the validated ``Inputs``):

* ``context()``: a context manager the stages run in (threads, nothing);
* ``similarity()``: S (normalised rows when ``inputs.normalize``), checked finite where it is formed;
* ``pair_weights(entry, profile, params, S)``: a ``PairResult`` (value, G = dL/dS, used masks);
* ``gradients(pair)``: (dL/dX, dL/dref or None) from G, through the normalisation;
* ``finish(result)``: the ``Result`` as the caller gets it (e.g. host copies).

A loss that is not a function of S alone names an ``embeddings_function`` in its catalog entry:
the pipeline hands it the validated record instead, ``embeddings_function(inputs, profile, params)
-> Result`` (numpy backend only; ``backends.select`` admits no kernel for it).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from .errors import GpwrefError
from .inputs import Inputs, check_similarities_finite
from .pairs import PairResult, Result, build_pairs, check_degenerate, grad_embeddings, unit_rows


def run(entry, profile, params, inputs: Inputs, backend: str) -> Result:
    """The loss of ``entry`` on ``inputs`` with ``backend``'s stages (inputs already validated);
    a result with a non-finite loss or gradient is refused (``check_finite_result``)."""
    return check_finite_result(_run(entry, profile, params, inputs, backend), inputs)


def _run(entry, profile, params, inputs: Inputs, backend: str) -> Result:
    if entry.embeddings_function is not None:
        return entry.embeddings_function(inputs, profile, params)
    stages = stages_for(backend, inputs)
    with stages.context():
        S = stages.similarity()
        pair = stages.pair_weights(entry, profile, params, S)
        grad_emb, grad_ref = stages.gradients(pair)
    result = Result(
        loss=pair.loss,
        per_anchor=pair.per_anchor,
        grad_sim=pair.grad_sim,
        pos_used=pair.pos_used,
        neg_used=pair.neg_used,
        extras=pair.extras,
        grad_emb=grad_emb,
        grad_ref=grad_ref,
        sim=S,
        loss_name=entry.name,
        profile=profile.name,
        hyper=params,
    )
    return stages.finish(result)


# The quantities checked, in the order they arise; grad_sim (m x n) is only scanned to name the
# culprit once a cheaper one failed: a non-finite G_ij always reaches dL/dX (G_ij times a row).
_CHECKED = ("loss", "per_anchor", "grad_emb", "grad_ref")


def check_finite_result(result: Result, inputs: Inputs) -> Result:
    """``result`` when its loss, per_anchor and gradients are finite, else a GpwrefError naming the
    first non-finite quantity and the input rule that keeps it finite. Cost O((m + n) d)."""
    for name in _CHECKED:
        value = getattr(result, name)
        if value is None or _all_finite(value):
            continue
        if name in ("grad_emb", "grad_ref") and not _all_finite(result.grad_sim):
            name, value = "grad_sim", result.grad_sim
        argument, rule = _prevention(inputs)
        raise GpwrefError(argument, f"gave a non-finite {name} for loss '{result.loss_name}' "
                          f"(profile '{result.profile}'); {rule}", _first_bad(name, value))
    return result


def _prevention(inputs: Inputs) -> tuple[str, str]:
    """(argument, rule): the input rule that keeps the loss's intermediate values finite here."""
    if not inputs.normalize:
        return "embeddings", ("with normalize=False keep max|x_i| * max|r_j| (the bound on |S_ij|) small enough "
                              "for the loss's exponentials and divisions, or pass normalize=True")
    if np.dtype(inputs.dtype) != np.float64:
        return "dtype", f"its intermediate values exceed {np.dtype(inputs.dtype).name}: use dtype=None (float64)"
    return "hyper-parameters", "keep each scale times |S| (an exponent) below ~700 and the margins of moderate size"


def _host(array):
    if array is None or isinstance(array, (float, int, np.ndarray, np.generic)):
        return np.asarray(array)
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "detach"):  # a torch tensor
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _all_finite(value) -> bool:
    return bool(np.all(np.isfinite(_host(value))))


def _first_bad(name: str, value) -> str:
    array = _host(value)
    if array.ndim == 0:
        return f"{name} = {float(array)!r}"
    index = tuple(int(k) for k in np.argwhere(~np.isfinite(array))[0])
    return f"{name}[{', '.join(map(str, index))}] = {float(array[index])!r}"


def stages_for(backend: str, inputs: Inputs):
    if backend == "numpy":
        return NumpyStages(inputs)
    if backend == "numba":
        from .kernels.backends import NumbaStages

        return NumbaStages(inputs)
    from .kernels.cuda import CudaStages

    return CudaStages(inputs)


class NumpyStages:
    """The reference: vectorised NumPy, float64 (or the same code on float32 arrays)."""

    def __init__(self, inputs: Inputs):
        self.inputs = inputs
        X, R = inputs.embeddings, inputs.ref
        if inputs.dtype != X.dtype:
            X = X.astype(inputs.dtype)
            R = X if inputs.ref_is_batch else R.astype(inputs.dtype)
        self.X, self.R = X, R

    def context(self):
        return nullcontext()

    def similarity(self) -> np.ndarray:
        inputs = self.inputs
        if inputs.normalize:
            self.U, self.norms = unit_rows(self.X, "embeddings")
            self.V, self.ref_norms = (self.U, self.norms) if inputs.ref_is_batch else unit_rows(self.R, "ref")
        else:
            self.U, self.norms, self.V, self.ref_norms = self.X, None, self.R, None
        with np.errstate(over="ignore", invalid="ignore"):
            S = self.U @ self.V.T
        check_similarities_finite(S, inputs.dtype)
        return S

    def pair_weights(self, entry, profile, params, S) -> PairResult:
        inputs = self.inputs
        pairs = build_pairs(S, inputs.labels, inputs.ref_labels, inputs.ref_is_batch, profile, inputs.ref_self)
        check_degenerate(pairs, profile, entry.name)
        return entry.function(S, pairs, profile, **params)

    def gradients(self, pair: PairResult):
        return grad_embeddings(pair.grad_sim, self.U, self.norms, self.V, self.ref_norms, self.inputs.ref_is_batch)

    def finish(self, result: Result) -> Result:
        return result
