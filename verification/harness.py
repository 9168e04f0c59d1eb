"""Run every check on one (loss, profile, hyper, batch) case and report the worst errors.

Checks, each from the loss's ``REFS`` record (``verification/refs/contract.py``):
* ``autograd``: value, G = dL/dS and dL/dX (dL/dX_ref) against torch autograd in float64 on the
  loss's independent torch formulation;
* ``fd``: G against central finite differences, skipping entries with a kink within the step;
* ``loop``: value and G against the plain per-anchor loop;
* ``real``: value and dL/dX against every real implementation of the profile;
* ``sign``: G <= 0 on positives, >= 0 on negatives (losses that obey GPW);
* ``zeros``: G is exactly 0 outside the used pairs, and used pairs are positives/negatives.
A case where gpwref refuses the batch passes only if every real implementation of that profile
raises too. Errors are normwise relative (``verification.common.rel_err``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import torch

import gpwref
from gpwref.testing import Batch

from .common import NotApplicable, rel_err
from .refs.contract import LossRefs
from .torch_pairs import masks, similarity

# Why each tolerance is what it is: docs/tolerances.md.
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
    return importlib.import_module(f".refs.{loss}", __package__)


def loss_refs(loss: str) -> LossRefs:
    """The ``REFS`` record of ``verification/refs/<loss>.py``."""
    return refs_module(loss).REFS


def check_case(loss: str, profile: str, hyper: dict, batch: Batch, *, fd: bool = True) -> CaseReport:
    """Every check of the loss's ``REFS`` record on one case; ``fd=False`` skips finite differences.
    With ``REFS.frozen_value`` FD is taken on it (detached factors frozen), else on gpwref's value."""
    entry = gpwref.get_entry(loss)
    refs = loss_refs(loss)
    report = CaseReport(loss, profile, dict(hyper), batch.cases)
    params = gpwref.catalog.resolve_hyper(entry, profile, hyper)
    if refs.driver is not None:  # a loss that is not a function of the drawn batch's S
        refs.driver(report, profile, dict(hyper), params, batch, fd)
        return report
    ref_is_batch = batch.ref is None
    try:
        ours = gpwref.compute(loss, batch.embeddings, batch.labels, profile=profile, **batch.compute_kwargs(), **hyper)
    except gpwref.GpwrefError as error:
        check_refusal(report, refs, profile, batch, params, error)
        return report

    pos_np, neg_np = (t.numpy() for t in masks(torch.from_numpy(ours.sim), batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self))
    floors = refs.scales(params, ours, pos_np, neg_np) if refs.scales else {}
    value_floor, g_floor = floors.get("value", refs.value_scale), floors.get("G", 0.0)
    labels_kw = {"labels": batch.labels} if refs.needs_labels else {}
    both_kw = {**labels_kw, **({"ref_labels": batch.ref_labels} if refs.needs_ref_labels else {})}

    # autograd: dX end to end through torch's own S computed from X; value and G at gpwref's own S
    # (torch's S differs by a few ulps, which 1/d-type weights amplify near duplicates).
    X = torch.tensor(batch.embeddings, dtype=torch.float64, requires_grad=True)
    R = None if ref_is_batch else torch.tensor(batch.ref, dtype=torch.float64, requires_grad=True)
    S = similarity(X, R, batch.normalize)
    S.retain_grad()
    pos, neg = masks(S, batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self)
    value = refs.torch_loss(S, pos, neg, profile, **both_kw, **params)
    value.backward()
    S_own = torch.tensor(ours.sim, dtype=torch.float64, requires_grad=True)
    pos_own, neg_own = torch.from_numpy(pos_np), torch.from_numpy(neg_np)
    if refs.autograd_at_own_S:
        value_own = refs.torch_loss(S_own, pos_own, neg_own, profile, **both_kw, **params)
        if value_own.requires_grad:
            value_own.backward()
        G_auto = S_own.grad.numpy() if S_own.grad is not None else np.zeros_like(ours.sim)
    else:
        value_own, G_auto = value, S.grad.numpy()
    report.errors["autograd:value"] = rel_err(ours.loss, value_own.item(), value_floor)
    report.errors["autograd:G"] = rel_err(ours.grad_sim, G_auto, g_floor)
    dx_floor = grad_emb_floor(ours, batch, g_floor)
    report.errors["autograd:dX"] = rel_err(ours.grad_emb, X.grad.numpy(), dx_floor)
    if R is not None:
        report.errors["autograd:dX_ref"] = rel_err(ours.grad_ref, R.grad.numpy(), dx_floor)
    if refs.torch_extras:
        for name, want in refs.torch_extras(S_own.detach(), pos_own, neg_own, profile, **labels_kw, **params).items():
            got = ours.extras[name]
            if isinstance(got, dict):
                keys = sorted(got)
                if sorted(want) != keys:
                    report.errors[f"autograd:{name}"] = float("inf")
                    continue
                got, want = [got[k] for k in keys], [want[k] for k in keys]
            report.errors[f"autograd:{name}"] = rel_err(got, want, floors.get("extras", {}).get(name, 0.0))

    loop_value, loop_G = refs.loop(ours.sim, pos_np, neg_np, profile, **both_kw, **params)
    report.errors["loop:value"] = rel_err(ours.loss, loop_value, value_floor)
    report.errors["loop:G"] = rel_err(ours.grad_sim, loop_G, g_floor)

    if fd and refs.frozen_value is None:
        err, compared = fd_error(loss, profile, params, ours, batch)
        if compared:
            report.errors["fd:G"] = err
        else:
            report.skipped["fd:G"] = "every entry lies within a step of a kink"
    elif fd:
        roundoff = refs.fd_roundoff(params, ours, pos_np, neg_np, floors) if refs.fd_roundoff else 0.0
        err, compared = frozen_fd_error(refs, profile, {**labels_kw, **params}, ours, pos_np, neg_np, g_floor, roundoff)
        if compared:
            report.errors["fd:G"] = err
        else:
            report.skipped["fd:G"] = "every entry lies within a step of a branch change"

    check_real(report, refs, profile, batch, params, ours, value_floor, dx_floor)
    check_sign_and_zeros(report, ours, pos_np, neg_np, entry.gpw_sign)
    if refs.sign_exempt:
        report.skipped["sign"] = refs.sign_exempt
    return report


def check_refusal(report: CaseReport, refs: LossRefs, profile: str, batch: Batch, params: dict, error: Exception) -> None:
    """gpwref refused the batch: ``raises`` passes only if every real implementation that can express it raises too."""
    verdict = reals_all_raise(refs, profile, batch, params, report)
    if verdict is None:
        report.skipped["raises"] = "no real implementation of this profile can express the batch"
    else:
        report.errors["raises"] = 0.0 if verdict else float("inf")
    report.skipped["gpwref"] = str(error)


def check_real(report: CaseReport, refs: LossRefs, profile: str, batch: Batch, params: dict, ours,
               value_floor: float, dx_floor: float) -> None:
    """Value and dL/dX against every real implementation of the profile (``real:<name> value|dX``)."""
    for name, impl in refs.real.get(profile, {}).items():
        try:
            got_value, got_dX = run_real(impl, batch, params)
        except NotApplicable as why:
            report.skipped[f"real:{name}"] = str(why)
            continue
        except ValueError as error:  # the implementation raised where gpwref did not
            report.errors[f"real:{name} raises"] = float("inf")
            report.skipped[f"real:{name}"] = f"raised: {error}"
            continue
        # log(1 + sum) as logsumexp([.., 0]) errs by ~2^-53 at unit scale: a unit floor on values
        report.errors[f"real:{name} value"] = rel_err(ours.loss, got_value, max(1.0, value_floor))
        report.errors[f"real:{name} dX"] = rel_err(ours.grad_emb, got_dX, dx_floor)


def check_sign_and_zeros(report: CaseReport, ours, pos: np.ndarray, neg: np.ndarray, gpw_sign: bool) -> None:
    """``sign`` (when the loss obeys GPW's sign rule) and ``zeros`` on gpwref's G."""
    G = ours.grad_sim
    if gpw_sign:
        report.errors["sign"] = max(float(np.max(G[pos], initial=0.0)), float(-np.min(G[neg], initial=0.0)), 0.0)
    used = ours.pos_used | ours.neg_used
    outside = float(np.max(np.abs(G[~used]), initial=0.0))
    stray = float(np.any(ours.pos_used & ~pos) or np.any(ours.neg_used & ~neg))
    report.errors["zeros"] = max(outside, stray)


def grad_emb_floor(ours, batch: Batch, g_floor: float = 0.0) -> float:
    """The size dL/dX would have before the normalisation's projection: sum_j |G_ij| / |x_i|, each
    used |G_ij| at least g_floor; the floor of dX comparisons (collapsed embeddings have dL/dX = 0)."""
    G = np.abs(ours.grad_sim)
    G = np.where(ours.pos_used | ours.neg_used, np.maximum(G, g_floor), G)
    rows = G.sum(axis=1) + (G.sum(axis=0) if batch.ref is None else 0.0)
    norms = np.linalg.norm(batch.embeddings, axis=1) if batch.normalize else np.ones(batch.m)
    ref_scale = np.max(np.abs(batch.embeddings if batch.ref is None else batch.ref), initial=1.0)
    return float(np.max(rows / norms, initial=0.0) * ref_scale)


def run_real(impl, batch: Batch, params: dict) -> tuple[float, np.ndarray]:
    """A real implementation's value and dL/dX on the batch (zeros where the value has no gradient)."""
    X = torch.tensor(batch.embeddings, dtype=torch.float64, requires_grad=True)
    R = None if batch.ref is None else torch.tensor(batch.ref, dtype=torch.float64)
    value = impl(X, batch.labels, R, batch.ref_labels, batch.ref_self, batch.normalize, **params)
    if value.requires_grad:
        value.backward()
        grad = X.grad.numpy() if X.grad is not None else np.zeros_like(batch.embeddings)
    else:
        grad = np.zeros_like(batch.embeddings)
    return float(value.item()), grad


def reals_all_raise(refs: LossRefs, profile: str, batch: Batch, params: dict, report: CaseReport) -> bool | None:
    """True when every real implementation that can express the batch raises too; None if none can."""
    raised = 0
    for name, impl in refs.real.get(profile, {}).items():
        try:
            run_real(impl, batch, params)
        except NotApplicable as why:
            report.skipped[f"real:{name}"] = str(why)
            continue
        except ValueError:
            raised += 1
            continue
        return False
    return True if raised else None


def fd_error(loss: str, profile: str, params: dict, ours, batch: Batch, h: float = FD_STEP) -> tuple[float, int]:
    """Worst (|FD - G| - roundoff)_+ / max|G| over the entries of S with no kink within +-h, FD of
    gpwref's own value; roundoff = 8 eps |L| / h, FD's own resolution."""
    S = ours.sim
    ref_labels = None if batch.ref is None else batch.ref_labels
    ref_self = None if batch.ref is None else batch.ref_self

    def at(S_):
        return gpwref.from_similarity(loss, S_, batch.labels, ref_labels, profile=profile, ref_self=ref_self, **params)

    G = ours.grad_sim
    roundoff = 8 * 2.0**-52 * abs(ours.loss) / h
    scale = float(np.max(np.abs(G), initial=0.0)) or 1.0
    worst, compared = 0.0, 0
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            Sp, Sm = S.copy(), S.copy()
            Sp[i, j] += h
            Sm[i, j] -= h
            up, down = at(Sp), at(Sm)
            # a kink within the step: the used pairs change, G jumps, or L's second difference jumps
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


def frozen_fd_error(refs: LossRefs, profile: str, params: dict, ours, pos: np.ndarray, neg: np.ndarray, g_floor: float = 0.0,
                    roundoff: float = 0.0, h: float = FD_STEP) -> tuple[float, int]:
    """Worst (|FD - G| - roundoff)_+ / max(max|G|, g_floor) over entries of S, FD of ``refs.frozen_value``;
    an entry is skipped when its regime changes within +-h or ``refs.fd_skip`` names it."""
    S0 = ours.sim
    G = ours.grad_sim
    scale = max(float(np.max(np.abs(G), initial=0.0)), g_floor) or 1.0
    worst, compared = 0.0, 0
    for i in range(S0.shape[0]):
        for j in range(S0.shape[1]):
            if refs.fd_skip is not None and refs.fd_skip(S0, i, j, pos, neg, profile, **params):
                continue
            Sp, Sm = S0.copy(), S0.copy()
            Sp[i, j] += h
            Sm[i, j] -= h
            up, regime_up = refs.frozen_value(Sp, S0, pos, neg, profile, **params)
            down, regime_down = refs.frozen_value(Sm, S0, pos, neg, profile, **params)
            if regime_up != regime_down:
                continue
            compared += 1
            worst = max(worst, max(abs((up - down) / (2 * h) - G[i, j]) - roundoff, 0.0) / scale)
    return worst, compared
