"""Run every check on one (loss, profile, hyper, batch) case and report the worst errors.

Checks (SPEC.md, "The oracle contract"):
* ``autograd``: value, G = dL/dS and dL/dX (dL/dX_ref) against torch autograd in float64 on the
  loss's independent torch formulation (``verification/refs/<loss>.py: torch_loss``);
* ``fd``: G against central finite differences of gpwref's own value, entry by entry, skipping
  entries with a kink within the step (detected as a jump of the analytical G across the step);
* ``loop``: value and G against the plain per-anchor loop (``refs/<loss>.py: loop``);
* ``real``: value and dL/dX against every real implementation of the profile (``REAL``);
* ``sign``: G <= 0 on positives, >= 0 on negatives (losses that obey GPW);
* ``zeros``: G is exactly 0 outside the used pairs, and used pairs are positives/negatives.
A case where gpwref refuses the batch (a profile whose code raises) passes only if every real
implementation of that profile raises too.

Tolerances (normwise relative error, see ``verification.common.rel_err``):
* autograd and loop, 1e-12 -- both are float64 evaluations of the same exact expression, so they
  differ by round-off only: about m·n·2^-53 for sums over a row; 1e-12 leaves three orders of
  magnitude for the m <= 40 batches used here, and any formula error is O(1);
* fd, 1e-6 -- measured beyond FD's own round-off allowance 8 eps |L| / h (so a correct G often
  reads 0); central differences with h = 1e-6 err by h^2 |L'''|/6 + 2^-53 |L| / h, about 1e-10
  for beta <= 50; 1e-6 still catches a missing factor or a wrong sign;
* real, 1e-9 -- other code paths (cdist instead of 2 - 2S, other summation orders, PML's
  finfo.min masking) add a few ulps that sqrt and exp can amplify near d = 0;
* sign and zeros, exactly 0.
A refs module may set ``VALUE_SCALE``, its value's natural scale, as the floor of the value checks,
where the value is bounded by construction and may be ~0 (the histogram loss, a probability in
[0, 1]): its round-off is then absolute, not relative to a value that can be 1e-17.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import torch

import gpwref
from gpwref.testing import Batch
from verification.common import NotApplicable, rel_err
from verification.torch_pairs import masks, similarity

TOLERANCES = {"autograd": 1e-12, "loop": 1e-12, "fd": 1e-6, "real": 1e-9, "sign": 0.0, "zeros": 0.0, "raises": 0.0}
FD_STEP = 1e-6


@dataclass
class CaseReport:
    loss: str
    profile: str
    hyper: dict
    cases: tuple
    errors: dict = field(default_factory=dict)  # check name -> worst relative error
    skipped: dict = field(default_factory=dict)  # check name -> reason

    def failures(self) -> list[str]:
        return [name for name, err in self.errors.items() if not err <= TOLERANCES[name.split(":")[0]]]


def refs_module(loss: str):
    return importlib.import_module(f"verification.refs.{loss}")


def check_case(loss: str, profile: str, hyper: dict, batch: Batch, *, fd: bool = True) -> CaseReport:
    entry = gpwref.get_entry(loss)
    mod = refs_module(loss)
    if hasattr(mod, "check_case"):  # a loss that is not a function of (S, labels) brings its own checks
        return mod.check_case(profile, dict(hyper), batch, fd=fd)
    report = CaseReport(loss, profile, dict(hyper), batch.cases)
    params = gpwref.catalog.resolve_hyper(entry, profile, hyper)
    ref_is_batch = batch.ref is None
    try:
        ours = gpwref.compute(loss, batch.embeddings, batch.labels, profile=profile, **batch.compute_kwargs(), **hyper)
    except gpwref.GpwrefError as error:
        verdict = _reals_all_raise(mod, profile, batch, params, report)
        if verdict is None:
            report.skipped["raises"] = "no real implementation of this profile can express the batch"
        else:
            report.errors["raises"] = 0.0 if verdict else float("inf")
        report.skipped["gpwref"] = str(error)
        return report

    # autograd on the independent torch formulation: value and G on a leaf copy of gpwref's own S
    # (losses on D = sqrt(2 - 2S) have G ~ 1/D, and sums of 1 - S cancel, so an S one ulp away
    # moves them by ~ulp / (2 - 2S)), and dX end to end through torch's own S computed from X.
    S_leaf = torch.tensor(ours.sim, dtype=torch.float64, requires_grad=True)
    pos, neg = masks(S_leaf, batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self)
    value_at_our_S = mod.torch_loss(S_leaf, pos, neg, profile, **params)
    value_at_our_S.backward()
    # a refs module may name its value's natural scale (VALUE_SCALE): the floor of the value checks
    value_floor = float(getattr(mod, "VALUE_SCALE", 0.0))
    report.errors["autograd:value"] = rel_err(ours.loss, value_at_our_S.item(), value_floor)
    report.errors["autograd:G"] = rel_err(ours.grad_sim, S_leaf.grad.numpy())
    X = torch.tensor(batch.embeddings, dtype=torch.float64, requires_grad=True)
    R = None if ref_is_batch else torch.tensor(batch.ref, dtype=torch.float64, requires_grad=True)
    S = similarity(X, R, batch.normalize)
    pos, neg = masks(S, batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self)
    mod.torch_loss(S, pos, neg, profile, **params).backward()
    dx_floor = _grad_emb_scale(ours, batch)
    report.errors["autograd:dX"] = rel_err(ours.grad_emb, X.grad.numpy(), dx_floor)
    if R is not None:
        report.errors["autograd:dX_ref"] = rel_err(ours.grad_ref, R.grad.numpy(), dx_floor)

    # the plain loop, on gpwref's own S
    pos_np, neg_np = (t.numpy() for t in masks(torch.from_numpy(ours.sim), batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self))
    loop_value, loop_G = mod.loop(ours.sim, pos_np, neg_np, profile, **params)
    report.errors["loop:value"] = rel_err(ours.loss, loop_value, value_floor)
    report.errors["loop:G"] = rel_err(ours.grad_sim, loop_G)

    if fd:
        err, compared = fd_error(loss, profile, params, ours, batch)
        if compared:
            report.errors["fd:G"] = err
        else:
            report.skipped["fd:G"] = "every entry lies within a step of a kink"

    for name, impl in getattr(mod, "REAL", {}).get(profile, {}).items():
        try:
            got_value, got_dX = _run_real(impl, batch, params)
        except NotApplicable as why:
            report.skipped[f"real:{name}"] = str(why)
            continue
        except ValueError as error:  # the implementation raised where gpwref did not
            report.errors[f"real:{name} raises"] = float("inf")
            report.skipped[f"real:{name}"] = f"raised: {error}"
            continue
        # Real implementations evaluate log(1 + sum) as logsumexp([.., 0]): absolute error ~2^-53 at
        # unit scale, so their values are compared with a unit floor (absolute below |L| = 1).
        report.errors[f"real:{name} value"] = rel_err(ours.loss, got_value, 1.0)
        report.errors[f"real:{name} dX"] = rel_err(ours.grad_emb, got_dX, dx_floor)

    G = ours.grad_sim
    if entry.gpw_sign:
        violation = max(float(np.max(G[pos_np], initial=0.0)), float(-np.min(G[neg_np], initial=0.0)), 0.0)
        report.errors["sign"] = violation
    used = ours.pos_used | ours.neg_used
    outside = float(np.max(np.abs(G[~used]), initial=0.0))
    stray = float(np.any(ours.pos_used & ~pos_np) or np.any(ours.neg_used & ~neg_np))
    report.errors["zeros"] = max(outside, stray)
    return report


def _grad_emb_scale(ours, batch: Batch) -> float:
    """The size dL/dX would have before the normalisation's projection: sum_j |G_ij| / |x_i|.

    With collapsed (tied) embeddings the exact dL/dX is 0 and both sides hold round-off noise of
    this size, so it is the floor for dX comparisons.
    """
    G = np.abs(ours.grad_sim)
    rows = G.sum(axis=1) + (G.sum(axis=0) if batch.ref is None else 0.0)
    norms = np.linalg.norm(batch.embeddings, axis=1) if batch.normalize else np.ones(batch.m)
    ref_scale = np.max(np.abs(batch.embeddings if batch.ref is None else batch.ref), initial=1.0)
    return float(np.max(rows / norms, initial=0.0) * ref_scale)


def _run_real(impl, batch: Batch, params: dict) -> tuple[float, np.ndarray]:
    X = torch.tensor(batch.embeddings, dtype=torch.float64, requires_grad=True)
    R = None if batch.ref is None else torch.tensor(batch.ref, dtype=torch.float64)
    value = impl(X, batch.labels, R, batch.ref_labels, batch.ref_self, batch.normalize, **params)
    if value.requires_grad:
        value.backward()
        grad = X.grad.numpy() if X.grad is not None else np.zeros_like(batch.embeddings)
    else:
        grad = np.zeros_like(batch.embeddings)
    return float(value.item()), grad


def _reals_all_raise(mod, profile, batch, params, report) -> bool:
    """True when every real implementation that can express the batch raises too; None if none can."""
    raised = 0
    for name, impl in getattr(mod, "REAL", {}).get(profile, {}).items():
        try:
            _run_real(impl, batch, params)
        except NotApplicable as why:
            report.skipped[f"real:{name}"] = str(why)
            continue
        except ValueError:
            raised += 1
            continue
        return False
    return True if raised else None


def fd_error(loss: str, profile: str, params: dict, ours, batch: Batch, h: float = FD_STEP) -> tuple[float, int]:
    """Worst |FD - G| / max|G| over the entries of S with no kink within +-h."""
    S = ours.sim
    ref_labels = None if batch.ref is None else batch.ref_labels
    ref_self = None if batch.ref is None else batch.ref_self

    def at(S_):
        return gpwref.from_similarity(loss, S_, batch.labels, ref_labels, profile=profile, ref_self=ref_self, **params)

    G = ours.grad_sim
    # Central differences cannot resolve below their own round-off, about 2^-52 |L| / h (8x for the
    # few operations on each side): that allowance is subtracted from each entry's error before it
    # is measured against max|G| (1 when G is all zero).
    roundoff = 8 * 2.0**-52 * abs(ours.loss) / h
    scale = float(np.max(np.abs(G), initial=0.0)) or 1.0
    worst, compared = 0.0, 0
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            Sp, Sm = S.copy(), S.copy()
            Sp[i, j] += h
            Sm[i, j] -= h
            up, down = at(Sp), at(Sm)
            # A kink within the step shows as a change of the used pairs, a jump of the analytical G,
            # or a jump of L itself (second difference far above h^2 L'', which is ~1e-10 h scale).
            smooth = (
                np.array_equal(up.pos_used, down.pos_used)
                and np.array_equal(up.neg_used, down.neg_used)
                and np.max(np.abs(up.grad_sim - down.grad_sim), initial=0.0) <= 1e-3 * scale
                and abs(up.loss - 2 * ours.loss + down.loss) <= 1e-3 * h * scale
            )
            if not smooth:
                continue
            compared += 1
            worst = max(worst, max(abs((up.loss - down.loss) / (2 * h) - G[i, j]) - roundoff, 0.0) / scale)
    return worst, compared
