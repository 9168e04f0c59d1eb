"""A check runner for losses the generic harness cannot check as they are.

``verification.harness.check_case`` compares G with finite differences of the value and compares
value and G with no floor. Three kinds of loss need more, and their refs module then defines a
``check_case`` that calls ``check_case_frozen`` below; every check of the harness is run the same
way, with the same tolerances (``verification.harness.TOLERANCES``), plus:

* detached factors. Circle loss computes its factors a_ij on ``S.detach()``, and the official SupCon
  code subtracts a detached row maximum before a ``log(sum + 1e-9)``: the gradient such code applies
  (gpwref's G) is the derivative of the value with those factors frozen at the current S, not the
  derivative of the value. The refs module defines
  ``frozen_value(S_eval, S_frozen, pos, neg, profile, **hyper) -> (value, regime)``: the value at
  ``S_eval`` with every detached factor computed from ``S_frozen`` (a loss with nothing detached
  ignores ``S_frozen``); ``regime`` is a hashable summary of the piecewise branches taken (active
  hinges, rows past a softplus threshold), and an entry whose regime changes within the step is
  skipped as a kink. G is compared with central differences of this function. An optional
  ``fd_skip(S, i, j, pos, neg, profile, **hyper) -> bool`` names entries whose step would reach a
  singularity (sqrt at d = 0), with the reason in its docstring.
* cancellation floors. ``scales(params, ours, pos, neg) -> {"value": v, "G": g}``: the size of the
  terms whose difference the value and the weights are (SupCon's G = (c/tau)(pi - 1/|P|), its value
  lse - mean). Round-off is relative to those terms, not to their difference, so a tied one-class
  batch whose exact G is 0 carries ~1e-16 c/tau of noise on either side. These sizes are the floors
  of the value, G and fd comparisons (and, entry by entry, of dX's floor); ``"extras": {name: size}``
  does the same for an extra gradient (margin loss's dL/dbeta is a signed sum of terms 1/Z).
* finite differences' own round-off. ``fd_roundoff(params, ours, pos, neg, floors) -> float``: the
  absolute round-off of a central difference of ``frozen_value`` at the harness's step (as the
  harness's ``8 eps |L| / h``, with |L| replaced by the size of what the value is computed from),
  subtracted from each entry's FD error before it is measured (RS@k, whose G can be 1e-20 while
  the value's terms are O(1)).
* labels and extra gradients. ``NEEDS_LABELS = True`` passes ``labels=`` (the anchors' labels) to
  torch_loss, loop and frozen_value (per-class parameters); ``torch_extras(S, pos, neg, profile,
  [labels,] **hyper) -> {name: value}`` gives autograd values of gradients that gpwref reports in
  ``extras`` (margin loss's dL/dbeta), compared as ``autograd:<name>`` at the autograd tolerance.
"""

from __future__ import annotations

import numpy as np
import torch

import gpwref
from gpwref.testing import Batch
from verification import harness
from verification.common import NotApplicable, rel_err
from verification.torch_pairs import masks, similarity


def check_case_frozen(loss: str, mod, profile: str, hyper: dict, batch: Batch, *, fd: bool = True) -> harness.CaseReport:
    entry = gpwref.get_entry(loss)
    report = harness.CaseReport(loss, profile, dict(hyper), batch.cases)
    params = gpwref.catalog.resolve_hyper(entry, profile, hyper)
    ref_is_batch = batch.ref is None
    try:
        ours = gpwref.compute(loss, batch.embeddings, batch.labels, profile=profile, **batch.compute_kwargs(), **hyper)
    except gpwref.GpwrefError as error:
        verdict = harness._reals_all_raise(mod, profile, batch, params, report)
        if verdict is None:
            report.skipped["raises"] = "no real implementation of this profile can express the batch"
        else:
            report.errors["raises"] = 0.0 if verdict else float("inf")
        report.skipped["gpwref"] = str(error)
        return report

    pos_np, neg_np = (t.numpy() for t in masks(torch.from_numpy(ours.sim), batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self))
    floors = mod.scales(params, ours, pos_np, neg_np) if hasattr(mod, "scales") else {}
    value_floor, g_floor = floors.get("value", 0.0), floors.get("G", 0.0)

    X = torch.tensor(batch.embeddings, dtype=torch.float64, requires_grad=True)
    R = None if ref_is_batch else torch.tensor(batch.ref, dtype=torch.float64, requires_grad=True)
    S = similarity(X, R, batch.normalize)
    S.retain_grad()
    pos, neg = masks(S, batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self)
    labels_kw = {"labels": batch.labels} if getattr(mod, "NEEDS_LABELS", False) else {}
    value = mod.torch_loss(S, pos, neg, profile, **labels_kw, **params)
    value.backward()
    # Value and G on gpwref's own S (as the loop does): torch's S differs from it by a few ulps, which
    # 1/d-type weights amplify by 1/(1 - S) near duplicates; the embedding path is checked by dX.
    S_own = torch.tensor(ours.sim, dtype=torch.float64, requires_grad=True)
    pos_own, neg_own = torch.from_numpy(pos_np), torch.from_numpy(neg_np)
    value_own = mod.torch_loss(S_own, pos_own, neg_own, profile, **labels_kw, **params)
    if value_own.requires_grad:
        value_own.backward()
    G_own = S_own.grad.numpy() if S_own.grad is not None else np.zeros_like(ours.sim)
    report.errors["autograd:value"] = rel_err(ours.loss, value_own.item(), value_floor)
    report.errors["autograd:G"] = rel_err(ours.grad_sim, G_own, g_floor)
    dx_floor = _grad_emb_floor(ours, batch, g_floor)
    report.errors["autograd:dX"] = rel_err(ours.grad_emb, X.grad.numpy(), dx_floor)
    if R is not None:
        report.errors["autograd:dX_ref"] = rel_err(ours.grad_ref, R.grad.numpy(), dx_floor)

    if hasattr(mod, "torch_extras"):
        for name, want in mod.torch_extras(S_own.detach(), pos_own, neg_own, profile, **labels_kw, **params).items():
            got = ours.extras[name]
            if isinstance(got, dict):
                keys = sorted(got)
                if sorted(want) != keys:
                    report.errors[f"autograd:{name}"] = float("inf")
                    continue
                got, want = [got[k] for k in keys], [want[k] for k in keys]
            report.errors[f"autograd:{name}"] = rel_err(got, want, floors.get("extras", {}).get(name, 0.0))

    loop_value, loop_G = mod.loop(ours.sim, pos_np, neg_np, profile, **labels_kw, **params)
    report.errors["loop:value"] = rel_err(ours.loss, loop_value, value_floor)
    report.errors["loop:G"] = rel_err(ours.grad_sim, loop_G, g_floor)

    if fd:
        roundoff = mod.fd_roundoff(params, ours, pos_np, neg_np, floors) if hasattr(mod, "fd_roundoff") else 0.0
        err, compared = frozen_fd_error(mod, profile, {**labels_kw, **params}, ours, pos_np, neg_np, g_floor, roundoff)
        if compared:
            report.errors["fd:G"] = err
        else:
            report.skipped["fd:G"] = "every entry lies within a step of a branch change"

    for name, impl in getattr(mod, "REAL", {}).get(profile, {}).items():
        try:
            got_value, got_dX = harness._run_real(impl, batch, params)
        except NotApplicable as why:
            report.skipped[f"real:{name}"] = str(why)
            continue
        except ValueError as error:
            report.errors[f"real:{name} raises"] = float("inf")
            report.skipped[f"real:{name}"] = f"raised: {error}"
            continue
        report.errors[f"real:{name} value"] = rel_err(ours.loss, got_value, max(1.0, value_floor))
        report.errors[f"real:{name} dX"] = rel_err(ours.grad_emb, got_dX, dx_floor)

    G = ours.grad_sim
    if entry.gpw_sign:
        report.errors["sign"] = max(float(np.max(G[pos_np], initial=0.0)), float(-np.min(G[neg_np], initial=0.0)), 0.0)
    used = ours.pos_used | ours.neg_used
    outside = float(np.max(np.abs(G[~used]), initial=0.0))
    stray = float(np.any(ours.pos_used & ~pos_np) or np.any(ours.neg_used & ~neg_np))
    report.errors["zeros"] = max(outside, stray)
    return report


def _grad_emb_floor(ours, batch: Batch, g_floor: float) -> float:
    """The harness's dX floor (sum_j |G_ij| / |x_i|), with each used |G_ij| at least g_floor."""
    G = np.abs(ours.grad_sim)
    G = np.where(ours.pos_used | ours.neg_used, np.maximum(G, g_floor), G)
    rows = G.sum(axis=1) + (G.sum(axis=0) if batch.ref is None else 0.0)
    norms = np.linalg.norm(batch.embeddings, axis=1) if batch.normalize else np.ones(batch.m)
    ref_scale = np.max(np.abs(batch.embeddings if batch.ref is None else batch.ref), initial=1.0)
    return float(np.max(rows / norms, initial=0.0) * ref_scale)


def frozen_fd_error(mod, profile: str, params: dict, ours, pos: np.ndarray, neg: np.ndarray, g_floor: float = 0.0,
                    roundoff: float = 0.0, h: float = harness.FD_STEP) -> tuple[float, int]:
    """Worst (|FD - G| - roundoff)_+ / max(max|G|, g_floor) over entries of S, FD taken on the
    frozen-factor value; ``roundoff`` is FD's own absolute round-off (0 unless the refs module gives
    ``fd_roundoff``).

    An entry is skipped when the frozen function changes branch (``regime``) within +-h.
    """
    S0 = ours.sim
    G = ours.grad_sim
    scale = max(float(np.max(np.abs(G), initial=0.0)), g_floor) or 1.0
    worst, compared = 0.0, 0
    for i in range(S0.shape[0]):
        for j in range(S0.shape[1]):
            if hasattr(mod, "fd_skip") and mod.fd_skip(S0, i, j, pos, neg, profile, **params):
                continue
            Sp, Sm = S0.copy(), S0.copy()
            Sp[i, j] += h
            Sm[i, j] -= h
            up, regime_up = mod.frozen_value(Sp, S0, pos, neg, profile, **params)
            down, regime_down = mod.frozen_value(Sm, S0, pos, neg, profile, **params)
            if regime_up != regime_down:
                continue
            compared += 1
            worst = max(worst, max(abs((up - down) / (2 * h) - G[i, j]) - roundoff, 0.0) / scale)
    return worst, compared
