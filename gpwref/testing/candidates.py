"""Calling a candidate loss as the oracle does: framework detection, input dtype, gradients.

A candidate is any callable ``candidate(embeddings, labels) -> loss`` (plus ``ref=, ref_labels=``
keywords, and ``ref_self=`` when the batch names each anchor's copy inside ``ref``, for batches with
a reference set). Its framework is found from what it returns:

* torch: called with float tensors that require grad and an int64 label tensor; returns a tensor
  with one element; gradients by autograd;
* NumPy (or JAX, or anything returning an array-like): called with NumPy arrays; gradients from an
  optional ``candidate_grad`` callable with the same arguments (for JAX, ``jax.grad(candidate)``),
  otherwise by central finite differences on the embeddings.

torch and JAX are imported only when a candidate needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import GpwrefError

FRAMEWORKS = ("torch", "numpy", "jax")
DTYPES = ("float64", "float32", "float16", "bfloat16")
# Unit round-off 2^-p of each floating type (p = significand bits, implicit bit included).
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def dtype_name(dtype) -> str:
    """'float64', 'float32', 'float16' or 'bfloat16' for a NumPy/torch/JAX dtype or its name."""
    text = str(dtype).replace("torch.", "").replace("<class '", "").replace("'>", "")
    text = text.replace("numpy.", "").replace("jax.numpy.", "")
    aliases = {"double": "float64", "float": "float32", "half": "float16", "float64": "float64",
               "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
    if text in aliases:
        return aliases[text]
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = ""
    if name in DTYPES:
        return name
    raise GpwrefError("dtype", f"must be one of {list(DTYPES)}", repr(dtype))


def least_precise(*names: str) -> str:
    return max(names, key=lambda name: UNIT_ROUNDOFF[name])


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` rounded to ``dtype`` and returned as float64 (the values the candidate really sees)."""
    array = np.asarray(array, dtype=np.float64)
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(array).to(torch.bfloat16).to(torch.float64).numpy()
    return array.astype(dtype).astype(np.float64)


@dataclass(frozen=True)
class CandidateOutput:
    value: float
    grad_emb: np.ndarray | None
    grad_ref: np.ndarray | None
    per_anchor: np.ndarray | None
    dtype: str  # the least precise of the input, value and gradient dtypes
    grad_source: str  # "autograd", "not connected" (no autograd path), "candidate_grad", "finite differences" or "none"


class Candidate:
    """A candidate callable, its framework (detected on first use) and its optional helpers."""

    def __init__(self, fn: Callable, *, framework: str | None = None, candidate_grad: Callable | None = None,
                 candidate_per_anchor: Callable | None = None, dtype: str = "float64"):
        if not callable(fn):
            raise GpwrefError("candidate", "must be a callable (embeddings, labels) -> loss", type(fn).__name__)
        if framework is not None and framework not in FRAMEWORKS:
            raise GpwrefError("framework", f"must be None (detect) or one of {list(FRAMEWORKS)}", repr(framework))
        for name, helper in (("candidate_grad", candidate_grad), ("candidate_per_anchor", candidate_per_anchor)):
            if helper is not None and not callable(helper):
                raise GpwrefError(name, "must be None or a callable with the candidate's arguments", type(helper).__name__)
        self.fn = fn
        self.framework = framework
        self.candidate_grad = candidate_grad
        self.candidate_per_anchor = candidate_per_anchor
        self.dtype = dtype_name(dtype)
        if self.dtype == "bfloat16" and framework in ("numpy", "jax"):
            raise GpwrefError("dtype", "bfloat16 needs a torch candidate (NumPy has no bfloat16)", framework)
        if candidate_grad is not None and framework == "torch":
            raise GpwrefError("candidate_grad", "is for NumPy/JAX candidates; a torch candidate's gradient comes from autograd")

    # -- detection ---------------------------------------------------------------------------------
    def detect(self) -> str:
        """Resolve the framework from the return type on a fixed probe batch (6 rows, 3 classes of 2).

        The probe is tried without a reference set, then with one (``ref=``, ``ref_labels=``, for
        candidates that need it); in each, first with torch tensors, then with NumPy arrays.
        """
        if self.framework is not None:
            return self.framework
        rng = np.random.default_rng(20190616)
        X = rng.normal(size=(6, 4))
        y = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)
        R = rng.normal(size=(4, 4))
        yr = np.array([0, 1, 2, 3], dtype=np.int64)
        try:
            import torch
        except ImportError:
            torch = None
        errors = []
        for with_ref in (False, True):
            if torch is not None:
                kwargs = {"ref": torch.tensor(R), "ref_labels": torch.as_tensor(yr)} if with_ref else {}
                try:
                    value = self.fn(torch.tensor(X, requires_grad=True), torch.as_tensor(y), **kwargs)
                except Exception as error:  # noqa: BLE001 - any failure means "not called this way"
                    errors.append(f"torch{' with ref' if with_ref else ''}: {error!r}")
                else:
                    if isinstance(value, torch.Tensor):
                        self.framework = "torch"
                        return self.framework
                    _refuse_untyped(value, "torch tensors")
            kwargs = {"ref": R, "ref_labels": yr} if with_ref else {}
            try:
                value = self.fn(X, y, **kwargs)
            except Exception as error:  # noqa: BLE001
                errors.append(f"NumPy{' with ref' if with_ref else ''}: {error!r}")
                continue
            _loss_number(value)
            self.framework = "jax" if type(value).__module__.split(".")[0] in ("jax", "jaxlib") else "numpy"
            if self.dtype == "bfloat16":
                raise GpwrefError("dtype", "bfloat16 needs a torch candidate (NumPy has no bfloat16)", self.framework)
            return self.framework
        raise GpwrefError(
            "candidate",
            "could not be called on a probe batch (6 rows, labels [0,0,1,1,2,2]; then with a reference set of 4 rows) "
            f"as a torch function nor as a NumPy function ({'; '.join(errors)}); pass framework='torch' or 'numpy' "
            "to see its own error",
        )

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, X: np.ndarray, labels: np.ndarray, ref=None, ref_labels=None, ref_self=None, *,
                 grad_emb: bool = True, grad_ref: bool = False, per_anchor: bool = False,
                 fd_steps: tuple[np.ndarray, np.ndarray] | None = None, per_anchor_rows: int | None = None) -> CandidateOutput:
        """The candidate on (already rounded) float64 inputs, converted to its dtype and framework.

        ``fd_steps`` (for NumPy candidates without ``candidate_grad``) gives the +/- perturbed
        coordinates of X (see ``fd_points``); the finite-difference gradient is then returned.
        ``per_anchor_rows``: how many values ``candidate_per_anchor`` returns (default: one per row of
        X; a loss that sums per proxy: one per row of ref).
        """
        framework = self.detect()
        if framework == "torch":
            out = self._torch(X, labels, ref, ref_labels, ref_self, grad_emb, grad_ref)
        else:
            out = self._numpy(X, labels, ref, ref_labels, ref_self, grad_emb, grad_ref, fd_steps)
        if per_anchor and self.candidate_per_anchor is not None:
            args, kwargs = self._arguments(X, labels, ref, ref_labels, ref_self, framework, False)
            values = self.candidate_per_anchor(*args, **kwargs)
            values = _to_numpy(values)
            rows = X.shape[0] if per_anchor_rows is None else per_anchor_rows
            if values.shape != (rows,):
                what = "anchor" if rows == X.shape[0] and per_anchor_rows is None else "proxy (row of ref: the loss sums per proxy)"
                raise GpwrefError("candidate_per_anchor", f"must return one value per {what}, shape ({rows},)", f"shape {values.shape}")
            out = CandidateOutput(out.value, out.grad_emb, out.grad_ref, values.astype(np.float64), out.dtype, out.grad_source)
        return out

    def _arguments(self, X, labels, ref, ref_labels, ref_self, framework, requires_grad, grad_ref=False):
        kwargs = {}
        if framework == "torch":
            import torch

            tdtype = getattr(torch, self.dtype)
            emb = torch.tensor(X, dtype=tdtype, requires_grad=requires_grad)
            y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
            if ref is not None:
                kwargs["ref"] = torch.tensor(ref, dtype=tdtype, requires_grad=requires_grad and grad_ref)
                kwargs["ref_labels"] = torch.as_tensor(np.asarray(ref_labels, dtype=np.int64))
                if ref_self is not None:
                    kwargs["ref_self"] = torch.as_tensor(np.asarray(ref_self, dtype=np.int64))
        else:
            emb = np.asarray(X).astype(self.dtype)
            y = np.asarray(labels, dtype=np.int64)
            if ref is not None:
                kwargs["ref"] = np.asarray(ref).astype(self.dtype)
                kwargs["ref_labels"] = np.asarray(ref_labels, dtype=np.int64)
                if ref_self is not None:
                    kwargs["ref_self"] = np.asarray(ref_self, dtype=np.int64)
        return (emb, y), kwargs

    def _torch(self, X, labels, ref, ref_labels, ref_self, want_grad, want_grad_ref) -> CandidateOutput:
        import torch

        (emb, y), kwargs = self._arguments(X, labels, ref, ref_labels, ref_self, "torch", True, want_grad_ref)
        value = self.fn(emb, y, **kwargs)
        if not isinstance(value, torch.Tensor):
            raise GpwrefError("candidate", "was detected as a torch function but returned something else", type(value).__name__)
        if value.numel() != 1:
            raise GpwrefError("candidate", "must return the loss as one number (a 0-d or one-element tensor)", f"shape {tuple(value.shape)}")
        dtypes = [self.dtype, dtype_name(value.dtype)]
        inputs = [emb] + ([kwargs["ref"]] if want_grad_ref and ref is not None else [])
        grads = [None] * len(inputs)
        if (want_grad or want_grad_ref) and value.requires_grad:
            grads = list(torch.autograd.grad(value.reshape(()), inputs, allow_unused=True))
        # a value with no autograd path to the embeddings: gradient 0 (``compare`` turns that into a
        # usage error where the reference's gradient is not 0)
        disconnected = want_grad and grads[0] is None
        grads = [np.zeros(t.shape) if g is None else g.detach().to(torch.float64).numpy() for t, g in zip(inputs, grads)]
        return CandidateOutput(
            value=float(value.detach().to(torch.float64).reshape(())),
            grad_emb=grads[0] if want_grad else None,
            grad_ref=grads[1] if len(grads) > 1 else None,
            per_anchor=None,
            dtype=least_precise(*dtypes),
            grad_source=("not connected" if disconnected else "autograd") if (want_grad or want_grad_ref) else "none",
        )

    def _call_numpy(self, X, labels, ref, ref_labels, ref_self) -> tuple[float, str]:
        (emb, y), kwargs = self._arguments(X, labels, ref, ref_labels, ref_self, self.framework, False)
        value = _loss_number(self.fn(emb, y, **kwargs))
        if value.size != 1:
            raise GpwrefError("candidate", "must return the loss as one number", f"shape {value.shape}")
        return float(value.astype(np.float64).reshape(())), _value_dtype(value)

    def _numpy(self, X, labels, ref, ref_labels, ref_self, want_grad, want_grad_ref, fd_steps) -> CandidateOutput:
        value, vdtype = self._call_numpy(X, labels, ref, ref_labels, ref_self)
        dtypes = [self.dtype, vdtype]
        grad_X = grad_R = None
        source = "none"
        if (want_grad or want_grad_ref) and self.candidate_grad is not None:
            (emb, y), kwargs = self._arguments(X, labels, ref, ref_labels, ref_self, self.framework, False)
            got = self.candidate_grad(emb, y, **kwargs)
            if isinstance(got, (tuple, list)):
                grad_X, grad_R = (_to_numpy(g) for g in got)
            else:
                grad_X = _to_numpy(got)
            for name, g, want in (("embeddings", grad_X, X), ("ref", grad_R, ref)):
                if g is not None and want is not None and g.shape != np.shape(want):
                    raise GpwrefError("candidate_grad", f"must return the gradient with the shape of {name} {np.shape(want)}", f"shape {g.shape}")
            dtypes += [_value_dtype(g) for g in (grad_X, grad_R) if g is not None]
            grad_X = None if grad_X is None else grad_X.astype(np.float64)
            grad_R = None if grad_R is None else grad_R.astype(np.float64)
            source = "candidate_grad"
        elif want_grad:
            if fd_steps is None:
                fd_steps = fd_points(X, self.dtype)
            plus, minus = fd_steps
            grad_X = np.zeros_like(X, dtype=np.float64)
            for index in np.ndindex(X.shape):
                Xp, Xm = X.copy(), X.copy()
                Xp[index], Xm[index] = plus[index], minus[index]
                up, _ = self._call_numpy(Xp, labels, ref, ref_labels, ref_self)
                down, _ = self._call_numpy(Xm, labels, ref, ref_labels, ref_self)
                grad_X[index] = (up - down) / (plus[index] - minus[index])
            source = "finite differences"
        return CandidateOutput(value, grad_X if want_grad else None, grad_R if want_grad_ref else None, None,
                               least_precise(*dtypes), source)


def fd_step(dtype: str) -> float:
    """Central-difference step u^(1/3): truncation h^2 |f'''| / 6 and round-off u |f| / h balance there."""
    return UNIT_ROUNDOFF[dtype] ** (1.0 / 3.0)


def fd_points(X: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Per coordinate x +- h max(1, |x|), rounded to ``dtype`` (the step actually taken is plus - minus)."""
    h = fd_step(dtype) * np.maximum(1.0, np.abs(X))
    return round_to(X + h, dtype), round_to(X - h, dtype)


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.to(torch.float32)
    return np.asarray(value)


LOSS_RETURN = "the loss as one real number: a float, a 0-d NumPy array or a one-element tensor"


def _loss_number(value) -> np.ndarray:
    """The candidate's return value as a real array; None, text or objects are a usage error (NumPy
    would read None as nan and "0.5" as 0.5)."""
    if value is None:
        raise GpwrefError("candidate", f"returned None; it must return {LOSS_RETURN} (a missing return statement?)", "None")
    array = _to_numpy(value)
    if array.dtype.kind not in "fiu":
        raise GpwrefError("candidate", f"must return {LOSS_RETURN}, not text, booleans or objects",
                          f"{type(value).__name__} {value!r:.60}")
    return array


def _refuse_untyped(value, inputs: str) -> None:
    """Called with torch tensors, a candidate returned no tensor: None, text, or a number cut from the
    graph (.item(), float(), .numpy()). Each is a usage error: finite differences on a torch function
    are slow and cannot see what autograd would."""
    _loss_number(value)
    raise GpwrefError(
        "candidate",
        f"returned a {type(value).__name__} when called with {inputs} that require grad: return the loss as a torch "
        "tensor (without .item(), float() or .numpy()) so that autograd gives its gradient; for a NumPy function "
        "pass framework='numpy' (gradients then come from candidate_grad= or finite differences)",
        f"{type(value).__name__} {value!r:.60}",
    )


def _value_dtype(value) -> str:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        return "float64"  # Python numbers and integer results carry no lower precision of their own
    try:
        return dtype_name(array.dtype)
    except GpwrefError:
        return "float64"  # longdouble and friends: at least float64
