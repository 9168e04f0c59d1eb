"""One candidate against gpwref's reference on one batch: the shared machinery of assert and explain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..catalog import get_entry, resolve_hyper
from ..core import compute
from ..errors import GpwrefError
from ..pairs import Result
from ..profiles import Profile, get_profile
from .candidates import Candidate, CandidateOutput, fd_points, round_to
from .strategies import Batch
from .admissible import alternatives
from .tolerances import Tolerance, exponent_scale, tolerance_for

CHECKS = ("value", "grad_emb", "grad_ref", "per_anchor")


@dataclass(frozen=True)
class Inputs:
    """A batch as the candidate receives it: rounded to its dtype, held in float64."""

    X: np.ndarray
    labels: np.ndarray
    ref: np.ndarray | None
    ref_labels: np.ndarray | None
    ref_self: np.ndarray | None

    @property
    def m(self) -> int:
        return self.X.shape[0]


@dataclass(frozen=True)
class Comparison:
    """The reference and the candidate on one batch, and each check's error over its allowance."""

    inputs: Inputs
    reference: Result | None
    reference_error: GpwrefError | None
    output: CandidateOutput | None
    candidate_error: BaseException | None
    ratios: Mapping[str, float] = field(default_factory=dict)  # check -> error / allowed (<= 1 passes)
    tolerance: Tolerance | None = None
    fd_kinks: np.ndarray | None = None  # finite-difference coordinates left out: a kink lies within the step
    accepted_as: str | None = None  # the admissible difference that explains the candidate (``admissible``)
    plain_ratios: Mapping[str, float] | None = None  # the ratios against the reference itself, when accepted_as

    @property
    def both_refuse(self) -> bool:
        return self.reference_error is not None and self.candidate_error is not None

    @property
    def agree(self) -> bool:
        if self.reference_error is not None or self.candidate_error is not None:
            return self.both_refuse
        return all(r <= 1.0 for r in self.ratios.values())


class Setup:
    """Everything fixed for one oracle run: loss, profile, hyper-parameters, checks, candidate, tolerances."""

    def __init__(self, candidate, loss: str, *, profile="paper", hyper=None, check=("value", "grad_emb"),
                 rtol=None, atol=None, dtype="float64", normalize=True, framework=None,
                 candidate_grad=None, candidate_per_anchor=None):
        self.entry = get_entry(loss)
        self.per_proxy = "per_anchor is per proxy" in self.entry.limits  # per_anchor rows are ref's rows
        self.profile: Profile = get_profile(profile)
        if hyper is not None and not isinstance(hyper, Mapping):
            raise GpwrefError("hyper", "must be a mapping of hyper-parameter overrides (or None)", type(hyper).__name__)
        self.overrides = dict(hyper or {})
        self.params = resolve_hyper(self.entry, self.profile.name, self.overrides)
        if isinstance(check, str):
            check = (check,)
        check = tuple(check)
        bad = [c for c in check if c not in CHECKS]
        if bad or not check:
            raise GpwrefError("check", f"must be a non-empty tuple drawn from {list(CHECKS)}", repr(check))
        if "per_anchor" in check and candidate_per_anchor is None:
            raise GpwrefError("check", "'per_anchor' needs candidate_per_anchor= (a callable returning each anchor's contribution)")
        self.check = check
        if normalize not in (True, False):
            raise GpwrefError("normalize", "must be True (the candidate L2-normalises its rows) or False (uses them as given)", repr(normalize))
        self.normalize = bool(normalize)
        self.rtol, self.atol = rtol, atol
        self.scale = exponent_scale(self.params)
        tolerance_for(dtype, rtol=rtol, atol=atol)  # validates dtype, rtol, atol now
        self.candidate = Candidate(candidate, framework=framework, candidate_grad=candidate_grad,
                                   candidate_per_anchor=candidate_per_anchor, dtype=dtype)
        self.dtype = self.candidate.dtype

    # ---------------------------------------------------------------------------------------------
    def tolerance(self, output_dtype: str, finite_differences: bool) -> Tolerance:
        return tolerance_for(output_dtype, scale=self.scale, finite_differences=finite_differences, rtol=self.rtol, atol=self.atol)

    def inputs(self, batch: Batch) -> Inputs:
        if not isinstance(batch, Batch):
            raise GpwrefError("batches", "must yield gpwref.testing.Batch records", type(batch).__name__)
        ref = None if batch.ref is None else round_to(batch.ref, self.dtype)
        if ref is not None and not self.entry.supports_ref:
            raise GpwrefError("batches", f"yields a batch with a reference set, which '{self.entry.name}' does not support ({self.entry.limits})")
        return Inputs(round_to(batch.embeddings, self.dtype), np.asarray(batch.labels, dtype=np.int64), ref,
                      None if batch.ref_labels is None else np.asarray(batch.ref_labels, dtype=np.int64), batch.ref_self)

    def reference(self, inputs: Inputs, profile: Profile | None = None, hyper: Mapping | None = None) -> Result:
        """gpwref on the inputs (raises GpwrefError where the profile's code raises)."""
        kwargs = {}
        if inputs.ref is not None:
            kwargs = dict(ref=inputs.ref, ref_labels=inputs.ref_labels, ref_self=inputs.ref_self)
        overrides = self.overrides if hyper is None else hyper
        return compute(self.entry.name, inputs.X, inputs.labels, profile=profile or self.profile,
                       normalize=self.normalize, **kwargs, **overrides)

    def wants(self, name: str) -> bool:
        return name in self.check

    def run_candidate(self, inputs: Inputs, *, grads: bool = True, fd_steps=None) -> CandidateOutput:
        return self.candidate.evaluate(
            inputs.X, inputs.labels, inputs.ref, inputs.ref_labels, inputs.ref_self,
            grad_emb=grads and self.wants("grad_emb"),
            grad_ref=grads and self.wants("grad_ref") and inputs.ref is not None,
            per_anchor=self.candidate.candidate_per_anchor is not None,
            fd_steps=fd_steps,
            per_anchor_rows=inputs.ref.shape[0] if self.per_proxy and inputs.ref is not None else None,
        )

    def uses_fd(self) -> bool:
        return self.wants("grad_emb") and self.candidate.detect() != "torch" and self.candidate.candidate_grad is None

    def compare(self, batch: Batch | Inputs) -> Comparison:
        inputs = batch if isinstance(batch, Inputs) else self.inputs(batch)
        try:
            reference = self.reference(inputs)
            reference_error = None
        except GpwrefError as error:
            reference, reference_error = None, error
        fd_steps = fd_points(inputs.X, self.dtype) if self.uses_fd() else None
        try:
            output = self.run_candidate(inputs, fd_steps=fd_steps)
            candidate_error = None
        except GpwrefError as error:
            if error.argument in ("candidate", "candidate_grad", "candidate_per_anchor", "dtype"):
                raise  # a usage error (wrong return shape or type), not a disagreement
            output, candidate_error = None, error
        except Exception as error:  # noqa: BLE001 - the candidate's own failure is a finding
            output, candidate_error = None, error
        if reference is None or output is None:
            return Comparison(inputs, reference, reference_error, output, candidate_error)
        kinks = None
        if fd_steps is not None:
            kinks = self.fd_kink_mask(inputs, fd_steps)
        tol = self.tolerance(output.dtype, output.grad_source == "finite differences")
        ratios = self.ratios(reference, output, tol, kinks)
        accepted_as, plain = None, None
        if any(r > 1.0 for r in ratios.values()):
            accepted_as, alt_ratios = self.admissible(inputs, reference, output, tol, kinks)
            if accepted_as is not None:
                ratios, plain = alt_ratios, ratios
        if output.grad_source == "not connected" and ratios.get("grad_emb", 0.0) > 1.0:
            raise GpwrefError("candidate", "returned a tensor with no autograd path to the embeddings it was given (its "
                              "gradient is 0, the reference's is not): compute the loss from those tensors with torch "
                              "operations, without .detach(), .numpy(), .item() or torch.tensor() of an intermediate",
                              f"value {output.value!r}")
        return Comparison(inputs, reference, None, output, None, ratios, tol, kinks, accepted_as, plain)

    def admissible(self, inputs: Inputs, reference, output: CandidateOutput, tol: Tolerance, kinks=None):
        """(name, ratios) of an admissible reference the candidate agrees with (``admissible``), else (None, None)."""
        if not np.isfinite(output.value) or (output.grad_emb is not None and not np.all(np.isfinite(output.grad_emb))):
            return None, None
        found, (d_value, d_grad, d_ref) = alternatives(self, inputs, reference, output.dtype)
        widened = _Widened(tol, d_value, d_grad, d_ref)
        ratios = self.ratios(reference, output, widened, kinks)
        if ratios and all(r <= 1.0 for r in ratios.values()):
            return f"the round-off of S in {output.dtype} times the loss's local slope at this batch", ratios
        for alt in found:
            ratios = self.ratios(alt, output, widened, kinks)
            if ratios and all(r <= 1.0 for r in ratios.values()):
                return alt.name, ratios
        return None, None

    def ratios(self, reference, output: CandidateOutput, tol: Tolerance, kinks=None, scale: float = 1.0) -> dict[str, float]:
        """Each check's error over its allowance for the reference (optionally scaled) against the candidate."""
        ratios = {}
        if self.wants("value"):
            ratios["value"] = tol.value_ratio(output.value, scale * reference.loss)
        if self.wants("grad_emb") and output.grad_emb is not None:
            want, got = scale * reference.grad_emb, output.grad_emb
            if kinks is not None:
                want, got = np.where(kinks, 0.0, want), np.where(kinks, 0.0, got)
            ratios["grad_emb"] = tol.grad_ratio(got, want)
        if self.wants("grad_ref") and reference.grad_ref is not None:
            if output.grad_ref is None:
                raise GpwrefError("check", "'grad_ref' needs the candidate's gradient for ref: a torch candidate, or a "
                                  "candidate_grad returning (grad_embeddings, grad_ref)")
            ratios["grad_ref"] = tol.grad_ratio(output.grad_ref, scale * reference.grad_ref)
        if self.wants("per_anchor") and output.per_anchor is not None:
            ratios["per_anchor"] = tol.grad_ratio(output.per_anchor, scale * reference.per_anchor)
        return ratios

    def fd_kink_mask(self, inputs: Inputs, fd_steps) -> np.ndarray:
        """Coordinates of X whose +/- step changes the reference's used pairs (a mining or hinge kink)."""
        plus, minus = fd_steps
        kinks = np.zeros(inputs.X.shape, dtype=bool)
        for index in np.ndindex(inputs.X.shape):
            used = []
            for value in (plus[index], minus[index]):
                X = inputs.X.copy()
                X[index] = value
                try:
                    r = self.reference(Inputs(X, inputs.labels, inputs.ref, inputs.ref_labels, inputs.ref_self))
                except GpwrefError:
                    used.append(None)
                    continue
                used.append((r.pos_used, r.neg_used))
            a, b = used
            kinks[index] = a is None or b is None or not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
        return kinks


class _Widened:
    """A tolerance plus the reference's own spread under round-off of S (absolute, per check)."""

    def __init__(self, tol: Tolerance, value: float, grad: float, grad_ref: float):
        self.tol, self.value, self.grad, self.grad_ref = tol, value, grad, grad_ref

    def value_ratio(self, got, want) -> float:
        return abs(got - want) / (self.tol.value_atol + self.tol.value_rtol * abs(want) + self.value)

    def grad_ratio(self, got, want) -> float:
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape or not np.all(np.isfinite(got)):
            return float("inf")
        if got.size == 0:
            return 0.0
        allowed = self.tol.grad_atol + self.tol.grad_rtol * np.max(np.abs(want)) + max(self.grad, self.grad_ref)
        return float(np.max(np.abs(got - want)) / allowed)
