"""Second opinions on the tuplet margin loss: torch formulation with acos, plain loop, real code.

Written from the formulas (docs/losses.md#tuplet_margin) without calling gpwref's vectorised
code: the torch side takes arccos (as atan2) and torch.cos(theta - beta) where gpwref uses the algebraic
form S cos(beta) + sqrt(1 - S^2) sin(beta); the loop writes the weight as sin(theta - beta)/sin(theta).
Checks run through verification/harness.py's frozen-value path (nothing is detached; ``fd_skip`` avoids arccos's
singular slope near |S| = 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable, rules
from .contract import LossRefs

EDGE = 1e-12  # 2 - 2|S| at or below this: theta = 0 or pi, no slope (gpwref's duplicate rule)


def _alive(pos, neg, profile, require_both_kinds):
    r = rules(profile)
    if require_both_kinds and not (bool(pos.any()) and bool(neg.any())):
        return False
    return not (r.zero_if_at_most_one_pair and int(pos.sum()) <= 1 and int(neg.sum()) <= 1)


def torch_loss(S, pos, neg, profile, *, margin_deg, scale, require_both_kinds):
    """One add-one log-sum-exp row per positive pair; theta = arccos(S_ap) (constant at the edge)."""
    zero = (S * 0).sum()
    if not _alive(pos, neg, profile, require_both_kinds):
        return zero
    anchors, positives = torch.nonzero(pos, as_tuple=True)
    K = len(anchors)
    if K == 0:
        return zero
    s_ap = S[anchors, positives]
    edge = (2 - 2 * s_ap.detach().abs()) <= EDGE
    inside = torch.where(edge, torch.zeros_like(s_ap), s_ap)
    # arccos as atan2(sqrt((1 - S)(1 + S)), S): torch.acos's backward evaluates 1 - S^2, which loses
    # digits as |S| -> 1 (relative error eps / (1 - S^2)); this form keeps them.
    arccos = torch.atan2(torch.sqrt((1 - inside) * (1 + inside)), inside)
    theta = torch.where(edge, torch.where(s_ap.detach() > 0, torch.zeros_like(s_ap), torch.full_like(s_ap, math.pi)), arccos)
    target = torch.cos(theta - math.radians(margin_deg))
    has_neg = neg[anchors].any(dim=1)
    if not bool(has_neg.any()):
        return zero
    logits = scale * (S[anchors][has_neg] - target[has_neg][:, None])
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    lse = torch.logsumexp(torch.where(neg[anchors][has_neg], logits, ninf), dim=1)
    return torch.logaddexp(torch.zeros_like(lse), lse).sum() / K


def _terms(S, pos, neg, profile, margin_deg, scale, require_both_kinds):
    rows, cols = S.shape
    if not _alive(pos, neg, profile, require_both_kinds):
        return []
    beta = math.radians(margin_deg)
    out = []
    for a in range(rows):
        N = [j for j in range(cols) if neg[a, j]]
        for p in range(cols):
            if not pos[a, p]:
                continue
            s_ap = S[a, p]
            edge = 2 - 2 * abs(s_ap) <= EDGE
            theta = (0.0 if s_ap > 0 else math.pi) if edge else math.acos(s_ap)
            target = math.cos(theta - beta)
            slope = 0.0 if edge else math.sin(theta - beta) / math.sin(theta)
            exps = {n: math.exp(scale * (S[a, n] - target)) for n in N}
            out.append((a, p, exps, slope))
    return out


def loop(S, pos, neg, profile, *, margin_deg, scale, require_both_kinds):
    """Plain loop over positive pairs: weights s pi_n on negatives, -s (sum pi) sin(theta - beta)/sin(theta)."""
    G = np.zeros(S.shape)
    terms = _terms(S, pos, neg, profile, margin_deg, scale, require_both_kinds)
    if not terms:
        return 0.0, G
    K = len(terms)
    value = 0.0
    for a, p, exps, slope in terms:
        total = 1.0 + sum(exps.values())
        value += math.log1p(sum(exps.values())) / K
        for n, e in exps.items():
            G[a, n] += scale * (e / total) / K
        G[a, p] -= scale * (sum(exps.values()) / total) * slope / K
    return value, G


def frozen_value(S_eval, S_frozen, pos, neg, profile, **hyper):
    """Nothing is detached: the plain value (smooth away from the edge, which ``fd_skip`` avoids)."""
    return loop(S_eval, pos, neg, profile, **hyper)[0], ()


def fd_skip(S, i, j, pos, neg, profile, **hyper):
    """Central differences (h = 1e-6) of arccos are unreliable near |S| = 1, where its slope is
    singular (relative error ~ (h / (1 - |S|))^2): positive pairs with 2 - 2|S| < 1e-2 are skipped."""
    return bool(pos[i, j]) and 2 - 2 * abs(S[i, j]) < 1e-2


def pml(X, labels, R, ref_labels, ref_self, normalize, *, margin_deg, scale, require_both_kinds):
    """pytorch-metric-learning TupletMarginLoss(margin (degrees), scale), MeanReducer over positive pairs."""
    from pytorch_metric_learning.losses import TupletMarginLoss

    if not require_both_kinds:
        raise NotApplicable("PML TupletMarginLoss returns 0 without both pair kinds")
    if not normalize:
        raise NotApplicable("PML's CosineSimilarity always normalises rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    y = np.asarray(labels)
    yr = y if R is None else np.asarray(ref_labels)
    with torch.no_grad():
        U = torch.nn.functional.normalize(X, dim=1)
        V = U if R is None else torch.nn.functional.normalize(R, dim=1)
        sim = (U @ V.T).numpy()
    same = y[:, None] == yr[None, :]
    if R is None:
        np.fill_diagonal(same, False)
    if np.any(np.abs(sim[same]) > 1 - 1e-6):
        raise NotApplicable("a positive pair with |S| > 1 - 1e-6: PML's unclamped acos is ill-conditioned there "
                            "(inf/NaN at |S| >= 1); gpwref's edge rule applies")
    yt = torch.as_tensor(y)
    yrt = None if R is None else torch.as_tensor(yr)
    return TupletMarginLoss(margin=margin_deg, scale=scale)(X, yt, None, R, yrt)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    frozen_value=frozen_value,
    fd_skip=fd_skip,
)
