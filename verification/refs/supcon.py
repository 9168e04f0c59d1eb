"""Second opinions on SupCon: torch formulation, plain loop, frozen-maximum value, real codes.

Written from the formulas (docs/losses.md#supcon) without calling gpwref's vectorised
code. With ``log_eps > 0`` the official code's detached row maximum makes G the derivative with
that maximum frozen, so G is checked against finite differences of ``frozen_value``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable, rules
from .contract import LossRefs


def _alive_rows(pos, neg, profile, require_both_kinds):
    r = rules(profile)
    if require_both_kinds and not (bool(pos.any()) and bool(neg.any())):
        return False
    if r.zero_if_at_most_one_pair and int(pos.sum()) <= 1 and int(neg.sum()) <= 1:
        return False
    return True


def torch_loss(S, pos, neg, profile, *, temperature, base_temperature, reduction, log_eps, require_both_kinds):
    """Vectorised: per row, -mean over positives of the log-softmax over all other items."""
    rows = S.shape[0]
    zero = (S * 0).sum()
    if not _alive_rows(pos, neg, profile, require_both_kinds):
        return zero
    keep = pos.any(dim=1)
    if not bool(keep.any()):
        return zero
    Sk, pk, others = S[keep], pos[keep], (pos | neg)[keep]
    logits = Sk / temperature
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    if log_eps > 0:
        top = (S.detach().amax(dim=1) / temperature)[keep]
        summed = torch.where(others, torch.exp(logits - top[:, None]), torch.zeros_like(logits)).sum(dim=1)
        log_denominator = top + torch.log(summed + log_eps)
    else:
        log_denominator = torch.logsumexp(torch.where(others, logits, ninf), dim=1)
    log_prob = logits - log_denominator[:, None]
    per_row = -(torch.where(pk, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / pk.sum(dim=1))
    if base_temperature is not None:
        per_row = per_row * (temperature / base_temperature)
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.sum() / rows
    nonzero = int((per_row > 0).sum())
    return per_row.sum() / nonzero if nonzero else zero


def _rows(S_eval, S_frozen, pos, neg, profile, temperature, base_temperature, log_eps, require_both_kinds):
    """Per anchor: None or (l_i, P, A, log denominator, top)."""
    rows, cols = S_eval.shape
    alive = _alive_rows(pos, neg, profile, require_both_kinds)
    factor = 1.0 if base_temperature is None else temperature / base_temperature
    out = []
    for i in range(rows):
        P = [j for j in range(cols) if pos[i, j]]
        A = [j for j in range(cols) if pos[i, j] or neg[i, j]]
        if not alive or not P:
            out.append(None)
            continue
        if log_eps > 0:
            top = max(S_frozen[i, j] for j in range(cols)) / temperature
            log_den = top + math.log(sum(math.exp(S_eval[i, j] / temperature - top) for j in A) + log_eps)
        else:
            top = max(S_eval[i, j] for j in A) / temperature
            log_den = top + math.log(sum(math.exp(S_eval[i, j] / temperature - top) for j in A))
        value = factor * sum(log_den - S_eval[i, p] / temperature for p in P) / len(P)
        out.append((value, P, A, log_den, top))
    return out


def _scale(terms, rows, reduction):
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        return 1.0 / rows
    nonzero = sum(1 for t in terms if t is not None and t[0] > 0)
    return 1.0 / nonzero if nonzero else 0.0


def frozen_value(S_eval, S_frozen, pos, neg, profile, *, temperature, base_temperature, reduction, log_eps, require_both_kinds):
    """The value at S_eval with the official code's row maximum taken from S_frozen."""
    terms = _rows(S_eval, S_frozen, pos, neg, profile, temperature, base_temperature, log_eps, require_both_kinds)
    value = _scale(terms, S_eval.shape[0], reduction) * sum(t[0] for t in terms if t is not None)
    return value, tuple(t is not None and t[0] > 0 for t in terms)


def loop(S, pos, neg, profile, *, temperature, base_temperature, reduction, log_eps, require_both_kinds):
    """Plain loop; weights from (1/tau) (exp(S_ia/tau) / denominator - [a in P_i] / |P_i|)."""
    rows, cols = S.shape
    terms = _rows(S, S, pos, neg, profile, temperature, base_temperature, log_eps, require_both_kinds)
    scale = _scale(terms, rows, reduction)
    factor = 1.0 if base_temperature is None else temperature / base_temperature
    G = np.zeros((rows, cols))
    total = 0.0
    for i, term in enumerate(terms):
        if term is None:
            continue
        value, P, A, log_den, _ = term
        total += value
        for a in A:
            share = math.exp(S[i, a] / temperature - log_den)
            G[i, a] = scale * factor / temperature * (share - (1.0 / len(P) if a in P else 0.0))
    return scale * total, G


def scales(params, ours, pos, neg):
    """Sizes of the terms whose differences are the value (lse - mean) and G ((c/tau)(pi - 1/|P|))."""
    tau = params["temperature"]
    factor = 1.0 if params["base_temperature"] is None else tau / params["base_temperature"]
    rows = ours.sim.shape[0]
    alive = (ours.pos_used | ours.neg_used).any(axis=1)
    if params["reduction"] == "sum":
        c = 1.0
    elif params["reduction"] == "mean":
        c = 1.0 / rows
    else:
        nonzero = int(np.count_nonzero(ours.per_anchor > 0))
        c = 1.0 / nonzero if nonzero else 0.0
    c *= factor
    terms = np.abs(ours.sim).max(axis=1) / tau + np.log(np.maximum((pos | neg).sum(axis=1), 1))
    return {"value": c * float(terms[alive].sum()), "G": c / tau if alive.any() else 0.0}


# ----------------------------------------------------------------------------------------------
# Real implementations.


def pml(X, labels, R, ref_labels, ref_self, normalize, *, temperature, base_temperature, reduction, log_eps, require_both_kinds):
    """pytorch-metric-learning SupConLoss(temperature) with its default reducer (AvgNonZero)."""
    from pytorch_metric_learning.losses import SupConLoss

    if (base_temperature, reduction, log_eps, require_both_kinds) != (None, "avg_nonzero", 0.0, True):
        raise NotApplicable("PML SupConLoss: no tau/base factor, avg_nonzero, no 1e-9, zero without both pair kinds")
    if not normalize:
        raise NotApplicable("PML's CosineSimilarity always normalises rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    y = torch.as_tensor(labels)
    yr = None if R is None else torch.as_tensor(ref_labels)
    return SupConLoss(temperature=temperature)(X, y, None, R, yr)


def official(X, labels, R, ref_labels, ref_self, normalize, *, temperature, base_temperature, reduction, log_eps, require_both_kinds):
    """HobbitLong/SupContrast ``losses.py`` SupConLoss rules (contrast_mode 'all', one view), transcribed.

    Features used as given (the model normalises them; we normalise when the batch says so);
    logits S/tau minus the detached row maximum (self included); self masked by index;
    log(sum exp + 1e-9); mean over positives, times -tau/base_tau; mean over all anchors.
    """
    if (reduction, log_eps, require_both_kinds) != ("mean", 1e-9, False) or base_temperature is None:
        raise NotApplicable("the official SupCon code is reduction='mean', log_eps=1e-9, a tau/base factor")
    if R is not None:
        raise NotApplicable("the official SupCon code contrasts the batch with itself only")
    y = np.asarray(labels)
    same = torch.as_tensor(y[:, None] == y[None, :], dtype=X.dtype)
    if torch.any(same.sum(dim=1) <= 1):
        raise NotApplicable("the official SupCon code returns NaN (0/0) for an anchor without positives")
    feats = torch.nn.functional.normalize(X, dim=1) if normalize else X
    logits = feats @ feats.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True)[0].detach()
    not_self = 1.0 - torch.eye(len(y), dtype=X.dtype)
    pos_mask = same * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(dim=1, keepdim=True) + 1e-9)
    mean_log_prob_pos = (pos_mask * log_prob).sum(dim=1) / pos_mask.sum(dim=1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}, "paper": {"SupContrast official losses.py rules": official}},
    frozen_value=frozen_value,
    scales=scales,
)
