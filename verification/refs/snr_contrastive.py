"""Second opinions on the SNR contrastive loss, run by its own driver (``check_embeddings``).

The loss is not a function of (S, labels): its SNR distance uses every row's coordinate mean
(gpwref/losses/snr_contrastive.py says why), so the harness's S-based checks cannot run. This
module's driver checks, with the harness's tolerances:

* ``autograd``: value, dL/dX and dL/dX_ref against torch autograd on an independent formulation
  with ``torch.var`` (unbiased), and G (the weight on S with means and norms held fixed) against
  autograd of the closed-form distance written in S with those statistics as constants;
* ``fd``: dL/dX (and dL/dX_ref) against central differences of gpwref's value in the EMBEDDINGS
  (the full gradient, means included), skipping coordinates whose step changes the active hinges;
* ``loop``: value and G against a plain loop computing each variance by hand;
* ``real``: value and dL/dX against PML's SignalToNoiseRatioContrastiveLoss, ``sign`` and ``zeros``,
  by the harness's own ``check_real`` and ``check_sign_and_zeros``.
"""

from __future__ import annotations

import numpy as np
import torch

import gpwref
from .. import harness
from ..common import NotApplicable, rel_err, rules
from ..torch_pairs import masks
from .contract import LossRefs


HINGE_TIE = 1e-12  # a hinge argument within this of 0 is 0 (gpwref's rule for exact inputs on a hinge)


def _hinge(t):
    return torch.relu(torch.where(t.detach().abs() <= HINGE_TIE, torch.zeros_like(t), t))


def _unit(X, normalize):
    return torch.nn.functional.normalize(X, dim=1, eps=0.0) if normalize else X


def torch_value(X, R, labels, ref_labels, ref_self, normalize, profile, *, pos_margin, neg_margin):
    """Independent torch formulation from embeddings: torch.var (unbiased) ratios, relu terms, AvgNonZero per kind."""
    U = _unit(X, normalize)
    V = U if R is None else _unit(R, normalize)
    d = torch.var(V[None, :, :] - U[:, None, :], dim=2) / torch.var(U, dim=1)[:, None]
    pos, neg = masks(U @ V.T, labels, ref_labels, R is None, profile, ref_self)
    if rules(profile).zero_if_at_most_one_pair and int(pos.sum()) <= 1 and int(neg.sum()) <= 1:
        return (X * 0).sum()
    pos_terms = _hinge(d - pos_margin)[pos]
    neg_terms = _hinge(neg_margin - d)[neg]
    value = (X * 0).sum()
    if int((pos_terms > 0).sum()):
        value = value + pos_terms.sum() / int((pos_terms > 0).sum())
    if int((neg_terms > 0).sum()):
        value = value + neg_terms.sum() / int((neg_terms > 0).sum())
    return value


def torch_value_of_S(S, U, V, pos, neg, profile, *, pos_margin, neg_margin):
    """The same loss written in S, with the rows' norms and means (from U, V) as constants."""
    # At fixed norms and means the numerator |v_j|^2 + |u_i|^2 - 2 S_ij - D (mu_j - mu_i)^2 is affine in S:
    # n(S) = n(S0) - 2 (S - S0) exactly, with n(S0) = (D - 1) var(v_j - u_i) from torch.var (which,
    # unlike the expanded form, does not cancel for near-duplicates).
    dims = U.shape[1]
    Ut, Vt = torch.as_tensor(U), torch.as_tensor(V)
    S0 = S.detach().clone()
    numerator = (dims - 1) * torch.var(Vt[None, :, :] - Ut[:, None, :], dim=2) - 2 * (S - S0)
    d = numerator / ((dims - 1) * torch.var(Ut, dim=1))[:, None]
    pos, neg = torch.as_tensor(pos), torch.as_tensor(neg)
    if rules(profile).zero_if_at_most_one_pair and int(pos.sum()) <= 1 and int(neg.sum()) <= 1:
        return (S * 0).sum()
    pos_terms, neg_terms = _hinge(d - pos_margin)[pos], _hinge(neg_margin - d)[neg]
    value = (S * 0).sum()
    if int((pos_terms > 0).sum()):
        value = value + pos_terms.sum() / int((pos_terms > 0).sum())
    if int((neg_terms > 0).sum()):
        value = value + neg_terms.sum() / int((neg_terms > 0).sum())
    return value


def loop(U, V, pos, neg, profile, *, pos_margin, neg_margin):
    """Plain loop: each variance by hand; weights -2 c / den from the closed form."""
    rows, cols = pos.shape
    dims = U.shape[1]

    def variance(vec):
        mean = sum(vec) / len(vec)
        return sum((x - mean) ** 2 for x in vec) / (len(vec) - 1)

    zeroed = rules(profile).zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1
    terms = []
    for i in range(rows):
        var_i = variance(list(U[i]))
        for j in range(cols):
            if zeroed or not (pos[i, j] or neg[i, j]):
                continue
            d = variance([V[j, k] - U[i, k] for k in range(dims)]) / var_i
            t = d - pos_margin if pos[i, j] else neg_margin - d
            t = 0.0 if abs(t) <= HINGE_TIE else max(t, 0.0)
            terms.append((i, j, bool(pos[i, j]), t, var_i * (dims - 1)))
    n_pos = sum(1 for t in terms if t[2] and t[3] > 0)
    n_neg = sum(1 for t in terms if not t[2] and t[3] > 0)
    G = np.zeros((rows, cols))
    value = 0.0
    for i, j, is_pos, t, den in terms:
        if t <= 0:
            continue
        if is_pos:
            value += t / n_pos
            G[i, j] = -2.0 / (n_pos * den)
        else:
            value += t / n_neg
            G[i, j] = 2.0 / (n_neg * den)
    return value, G


def pml(X, labels, R, ref_labels, ref_self, normalize, *, pos_margin, neg_margin):
    """pytorch-metric-learning SignalToNoiseRatioContrastiveLoss(pos_margin, neg_margin)."""
    from pytorch_metric_learning.losses import SignalToNoiseRatioContrastiveLoss

    if not normalize:
        raise NotApplicable("PML's SNRDistance normalises rows by default")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    y = torch.as_tensor(labels)
    yr = None if R is None else torch.as_tensor(ref_labels)
    value = SignalToNoiseRatioContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin)(X, y, None, R, yr)
    if not torch.isfinite(value):
        raise NotApplicable("PML's SNR distance is inf/NaN here (a row with zero coordinate variance)")
    return value


def check_embeddings(report, profile, hyper, params, batch, fd):
    """The driver: gpwref's SNR loss computed from the embeddings, checked as the module docstring says."""
    kwargs = batch.compute_kwargs()
    try:
        ours = gpwref.compute("snr_contrastive", batch.embeddings, batch.labels, profile=profile, **kwargs, **hyper)
    except gpwref.GpwrefError as error:
        harness.check_refusal(report, REFS, profile, batch, params, error)
        return
    ref_is_batch = batch.ref is None

    # autograd from the embeddings
    X = torch.tensor(batch.embeddings, dtype=torch.float64, requires_grad=True)
    R = None if ref_is_batch else torch.tensor(batch.ref, dtype=torch.float64, requires_grad=True)
    value = torch_value(X, R, batch.labels, batch.ref_labels, batch.ref_self, batch.normalize, profile, **params)
    if value.requires_grad:
        value.backward()
    dx_floor = _grad_scale(ours)
    report.errors["autograd:value"] = rel_err(ours.loss, value.item())
    report.errors["autograd:dX"] = rel_err(ours.grad_emb, _grad_or_zero(X), dx_floor)
    if R is not None:
        report.errors["autograd:dX_ref"] = rel_err(ours.grad_ref, _grad_or_zero(R), dx_floor)

    # autograd in S (statistics fixed) and the loop, both on gpwref's own S and unit rows
    U = batch.embeddings / np.linalg.norm(batch.embeddings, axis=1, keepdims=True) if batch.normalize else batch.embeddings
    if ref_is_batch:
        V = U
    else:
        V = batch.ref / np.linalg.norm(batch.ref, axis=1, keepdims=True) if batch.normalize else batch.ref
    pos_np, neg_np = (t.numpy() for t in masks(torch.from_numpy(ours.sim), batch.labels, batch.ref_labels, ref_is_batch, profile, batch.ref_self))
    S_own = torch.tensor(ours.sim, dtype=torch.float64, requires_grad=True)
    value_S = torch_value_of_S(S_own, U, V, pos_np, neg_np, profile, **params)
    if value_S.requires_grad:
        value_S.backward()
    G_auto = S_own.grad.numpy() if S_own.grad is not None else np.zeros_like(ours.sim)
    report.errors["autograd:G"] = rel_err(ours.grad_sim, G_auto)
    loop_value, loop_G = loop(U, V, pos_np, neg_np, profile, **params)
    report.errors["loop:value"] = rel_err(ours.loss, loop_value)
    report.errors["loop:G"] = rel_err(ours.grad_sim, loop_G)

    if fd:
        err, compared = _fd_embeddings(profile, params, ours, batch, dx_floor)
        if compared:
            report.errors["fd:dX"] = err
        else:
            report.skipped["fd:dX"] = "every coordinate lies within a step of a hinge"

    harness.check_real(report, REFS, profile, batch, params, ours, 0.0, dx_floor)
    harness.check_sign_and_zeros(report, ours, pos_np, neg_np, gpw_sign=True)


def _grad_or_zero(leaf):
    return leaf.grad.numpy() if leaf.grad is not None else np.zeros(tuple(leaf.shape))


def _grad_scale(ours) -> float:
    """The size of dL/dX's terms: sum_j |G_ij| (|u_i| + |v_j| ~ 2 for unit rows) per row, times 2 for d's
    own factor (the mean and denominator paths are of the same order)."""
    G = np.abs(ours.grad_sim)
    return float(2.0 * max(G.sum(axis=1).max(initial=0.0), G.sum(axis=0).max(initial=0.0)))


def _fd_embeddings(profile, params, ours, batch, floor: float, h: float = harness.FD_STEP):
    """Worst |FD - dL/dX| / max(max|dL/dX|, floor) over coordinates of X (and ref) whose step keeps
    the active hinges of the unperturbed batch on both sides (a pair on a hinge is a kink)."""
    kwargs = batch.compute_kwargs()

    def at(X_, R_):
        kw = dict(kwargs)
        if R_ is not None:
            kw["ref"] = R_
        return gpwref.compute("snr_contrastive", X_, batch.labels, profile=profile, **kw, **params)

    grads = [("X", batch.embeddings, ours.grad_emb)]
    if batch.ref is not None:
        grads.append(("R", batch.ref, ours.grad_ref))
    scale = max(max(float(np.max(np.abs(g), initial=0.0)) for _, _, g in grads), floor) or 1.0
    worst, compared = 0.0, 0
    for which, base, grad in grads:
        for i in range(base.shape[0]):
            for k in range(base.shape[1]):
                up_arr, down_arr = base.copy(), base.copy()
                up_arr[i, k] += h
                down_arr[i, k] -= h
                try:
                    if which == "X":
                        up, down = at(up_arr, batch.ref), at(down_arr, batch.ref)
                    else:
                        up, down = at(batch.embeddings, up_arr), at(batch.embeddings, down_arr)
                except gpwref.GpwrefError:
                    continue  # the step made a row flat (zero variance): no value there
                if not all(np.array_equal(a.pos_used, ours.pos_used) and np.array_equal(a.neg_used, ours.neg_used) for a in (up, down)):
                    continue
                compared += 1
                worst = max(worst, abs((up.loss - down.loss) / (2 * h) - grad[i, k]) / scale)
    return worst, compared


REFS = LossRefs(
    real={"pml": {"pytorch-metric-learning": pml}},
    driver=check_embeddings,
    verified_against=("autograd (value, G, dX)", "fd (dX)", "loop"),
)
