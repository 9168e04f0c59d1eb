"""Second opinions on circle loss: torch formulation, plain loop, frozen-factor value, real codes.

Written from the formulas (docs/losses.md#circle) without calling gpwref's vectorised code. Circle loss's
published gradient detaches its factors a_ij, so G is checked against finite differences of the
value with the factors frozen (``frozen_value``; ``REFS.frozen_value``, checked by verification/harness.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..common import NotApplicable, rules
from ._fast_reid import batch_masks
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, m, gamma, reduction, detach_factors, softplus_threshold):
    """Vectorised torch formulation; the factors come from S.detach() when detach_factors."""
    r = rules(profile)
    zero = (S * 0).sum()
    if r.zero_if_at_most_one_pair and int(pos.sum()) <= 1 and int(neg.sum()) <= 1:
        return zero
    keep = pos.any(dim=1) & neg.any(dim=1)
    if not bool(keep.any()):
        return zero
    Sk, pk, nk = S[keep], pos[keep], neg[keep]
    base = Sk.detach() if detach_factors else Sk
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    logit_pos = torch.where(pk, -gamma * torch.relu(1 + m - base) * (Sk - (1 - m)), ninf)
    logit_neg = torch.where(nk, gamma * torch.relu(base + m) * (Sk - m), ninf)
    x = torch.logsumexp(logit_pos, dim=1) + torch.logsumexp(logit_neg, dim=1)
    per_anchor = torch.logaddexp(torch.zeros_like(x), x)
    if softplus_threshold is not None:
        per_anchor = torch.where(x > softplus_threshold, x, per_anchor)
    if reduction == "mean":
        return per_anchor.sum() / S.shape[0]
    nonzero = int((per_anchor > 0).sum())
    return per_anchor.sum() / nonzero if nonzero else zero


def _lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _terms(S, S_factors, pos, neg, profile, m, gamma, softplus_threshold):
    """Per anchor: None (no term) or (l_i, z by column, A_i, B_i, linear?)."""
    r = rules(profile)
    rows, cols = S.shape
    zeroed = r.zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1
    out = []
    for i in range(rows):
        P = [j for j in range(cols) if pos[i, j]]
        N = [j for j in range(cols) if neg[i, j]]
        if zeroed or not P or not N:
            out.append(None)
            continue
        z = {}
        for j in P:
            z[j] = -gamma * max(1 + m - S_factors[i, j], 0.0) * (S[i, j] - (1 - m))
        for j in N:
            z[j] = gamma * max(S_factors[i, j] + m, 0.0) * (S[i, j] - m)
        A = _lse([z[j] for j in P])
        B = _lse([z[j] for j in N])
        linear = softplus_threshold is not None and A + B > softplus_threshold
        value = A + B if linear else _softplus(A + B)
        out.append((value, z, A, B, linear, P, N))
    return out


def _reduce_scale(terms, rows, reduction):
    if reduction == "mean":
        return 1.0 / rows
    nonzero = sum(1 for t in terms if t is not None and t[0] > 0)
    return 1.0 / nonzero if nonzero else 0.0


def frozen_value(S_eval, S_frozen, pos, neg, profile, *, m, gamma, reduction, detach_factors, softplus_threshold):
    """The value at S_eval with the factors a_ij taken from S_frozen (from S_eval if not detached)."""
    terms = _terms(S_eval, S_frozen if detach_factors else S_eval, pos, neg, profile, m, gamma, softplus_threshold)
    scale = _reduce_scale(terms, S_eval.shape[0], reduction)
    value = scale * sum(t[0] for t in terms if t is not None)
    regime = tuple(None if t is None else (t[4], t[0] > 0) for t in terms)
    return value, regime


def loop(S, pos, neg, profile, *, m, gamma, reduction, detach_factors, softplus_threshold):
    """Plain per-anchor loop; each weight from its closed form gamma a exp(z + B - softplus(A + B))."""
    rows, cols = S.shape
    terms = _terms(S, S, pos, neg, profile, m, gamma, softplus_threshold)
    scale = _reduce_scale(terms, rows, reduction)
    G = np.zeros((rows, cols))
    total = 0.0
    for i, term in enumerate(terms):
        if term is None:
            continue
        value, z, A, B, linear, P, N = term
        total += value
        log_coupling = 0.0 if linear else A + B - _softplus(A + B)  # log sigma(A + B)
        for j in P:
            a = max(1 + m - S[i, j], 0.0)
            slope = -gamma * a if detach_factors else (-gamma * a + gamma * (S[i, j] - (1 - m)) if a > 0 else 0.0)
            G[i, j] = scale * slope * math.exp(z[j] - A + log_coupling)
        for j in N:
            a = max(S[i, j] + m, 0.0)
            slope = gamma * a if detach_factors else (gamma * a + gamma * (S[i, j] - m) if a > 0 else 0.0)
            G[i, j] = scale * slope * math.exp(z[j] - B + log_coupling)
    return scale * total, G


# ----------------------------------------------------------------------------------------------
# Real implementations (float64 torch leaves in, loss tensor out).


def pml(X, labels, R, ref_labels, ref_self, normalize, *, m, gamma, reduction, detach_factors, softplus_threshold):
    """pytorch-metric-learning CircleLoss(m, gamma) with its default reducer (AvgNonZero)."""
    from pytorch_metric_learning.losses import CircleLoss

    if (reduction, detach_factors, softplus_threshold) != ("avg_nonzero", True, 20.0):
        raise NotApplicable("PML CircleLoss is reduction='avg_nonzero', detached factors, torch Softplus (threshold 20)")
    if not normalize:
        raise NotApplicable("PML's CosineSimilarity always normalises rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    y = torch.as_tensor(labels)
    yr = None if R is None else torch.as_tensor(ref_labels)
    return CircleLoss(m=m, gamma=gamma)(X, y, None, R, yr)


def fast_reid(X, labels, R, ref_labels, ref_self, normalize, *, m, gamma, reduction, detach_factors, softplus_threshold):
    """fast-reid-style ``pairwise_circleloss`` rules, transcribed (docs/losses.md#circle).

    Rows normalised inside; positives = same label minus the diagonal; non-members get an additive
    -99999999 in their logit (not -inf); softplus = torch's (linear above 20); mean over ALL rows.
    """
    if (reduction, detach_factors, softplus_threshold) != ("mean", True, 20.0):
        raise NotApplicable("fast-reid's circle loss is reduction='mean', detached factors, torch Softplus (threshold 20)")
    sim, is_pos, is_neg = batch_masks(X, labels, R, normalize, "pairwise_circleloss")
    s_pos, s_neg = sim * is_pos, sim * is_neg
    a_pos = torch.clamp_min(1 + m - s_pos.detach(), 0.0)
    a_neg = torch.clamp_min(s_neg.detach() + m, 0.0)
    off = -99999999.0
    logit_pos = -gamma * a_pos * (s_pos - (1 - m)) + off * (1 - is_pos)
    logit_neg = gamma * a_neg * (s_neg - m) + off * (1 - is_neg)
    return F.softplus(torch.logsumexp(logit_pos, dim=1) + torch.logsumexp(logit_neg, dim=1)).mean()


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}, "paper": {"fast-reid pairwise_circleloss rules": fast_reid}},
    frozen_value=frozen_value,
)
