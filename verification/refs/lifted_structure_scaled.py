"""Second opinions on the scaled, unhinged lifted structure: torch logsumexp, a plain loop, Deep_Metric's rules.

Written from the formula (gpwref/losses/lifted_structure_scaled.py docstring) without calling gpwref's
loss code. The real implementation is ``LiftedStructureLoss`` of bnu-wangxun/Deep_Metric
(``losses/LiftedStructure.py``), re-expressed under the ``official`` profile: positives = same label
with S < 1, negatives = other labels; without mining (2/beta) log sum exp(-beta S_P) + (2/alpha) log
sum exp(alpha S_N), an anchor without negatives skipped (without positives the value is -inf); with
``hard_mining`` the MS rule with 0.1 added to the pair (neg + 0.1 > min_P, pos - 0.1 < max_N) and an
anchor with an empty kept set skipped; sum over anchors divided by the batch size.

``scales``: the value is a difference of the two halves and cancels to ~0 when positives and
negatives sit at the same S (duplicated rows under two labels), so its floor is the halves' size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable, rules
from ._deep_metric import anchor_pairs
from .contract import LossRefs
from .contrastive_ms_mining import _kept


def _masks(S, pos, neg, profile, mining_margin):
    if mining_margin is None:
        keep_pos, keep_neg = np.array(pos, dtype=bool), np.array(neg, dtype=bool)
    else:
        keep_pos, keep_neg = _kept(S, pos, neg, mining_margin, rules(profile).mining_compare)
    alive = keep_pos.any(axis=1) & keep_neg.any(axis=1)
    return keep_pos, keep_neg, alive


def torch_loss(S, pos, neg, profile, *, alpha, beta, mining_margin):
    keep_pos, keep_neg, alive = _masks(S.detach().numpy(), pos.numpy(), neg.numpy(), profile, mining_margin)
    total = (S * 0).sum()
    for i in np.flatnonzero(alive):
        row = S[i]
        total = total + 2 / beta * torch.logsumexp(-beta * row[torch.as_tensor(keep_pos[i])], dim=0) \
            + 2 / alpha * torch.logsumexp(alpha * row[torch.as_tensor(keep_neg[i])], dim=0)
    return total / S.shape[0]


def loop(S, pos, neg, profile, *, alpha, beta, mining_margin):
    m, n = S.shape
    keep_pos, keep_neg, alive = _masks(S, pos, neg, profile, mining_margin)
    G = np.zeros((m, n))
    total = 0.0
    for i in range(m):
        if not alive[i]:
            continue
        for keep, scale, sign in ((keep_pos[i], -beta, -1.0), (keep_neg[i], alpha, 1.0)):
            cols = [j for j in range(n) if keep[j]]
            top = max(scale * S[i, j] for j in cols)
            exps = {j: math.exp(scale * S[i, j] - top) for j in cols}
            norm = sum(exps.values())
            total += 2.0 / abs(scale) * (top + math.log(norm)) / m
            for j in cols:  # d/dS of (2/|scale|) lse(scale S) = 2 sign(scale) softmax
                G[i, j] = sign * 2.0 * exps[j] / norm / m
    return total, G


def scales(params, ours, pos, neg):
    """Term sizes: the value is a difference of the two halves (about -2 S_p + 2 S_n each), which
    cancel to ~0 when positives and negatives sit at the same S (duplicates): each half is at most
    2 max|S| + (2/scale) log(set size) in absolute value; G entries are shares of 2/m."""
    alive = ours.pos_used.any(axis=1)
    if not alive.any():
        return {}
    m = ours.sim.shape[0]
    sizes = (2 * np.abs(ours.sim).max(axis=1)
             + 2 / params["beta"] * np.log(np.maximum(ours.pos_used.sum(axis=1), 1))
             + 2 / params["alpha"] * np.log(np.maximum(ours.neg_used.sum(axis=1), 1)))
    return {"value": float(2 * sizes[alive].sum()) / m, "G": 2.0 / m}


def deep_metric(X, labels, R, ref_labels, ref_self, normalize, *, alpha, beta, mining_margin):
    """Deep_Metric LiftedStructureLoss rules (see the module docstring), in float64 on normalised rows."""
    if mining_margin not in (None, 0.1):
        raise NotApplicable("Deep_Metric's hard mining hard-codes the margin 0.1")
    terms = []
    for pos_, neg_ in anchor_pairs(X, labels, R, normalize, "LiftedStructureLoss"):
        if len(pos_) == 0 or len(neg_) == 0:
            raise ValueError("Deep_Metric fails on an anchor without positives (-inf, or an IndexError when mining) "
                             "or negatives (an IndexError when mining)")
        if mining_margin is not None:
            neg_pair = neg_[neg_ + mining_margin > pos_.min()]
            pos_pair = pos_[pos_ - mining_margin < neg_.max()]
            if len(neg_pair) < 1 or len(pos_pair) < 1:
                continue
        else:
            pos_pair, neg_pair = pos_, neg_
        terms.append(2.0 / beta * torch.log(torch.sum(torch.exp(-beta * pos_pair)))
                     + 2.0 / alpha * torch.log(torch.sum(torch.exp(alpha * neg_pair))))
    if not terms:
        return (X * 0).sum()
    return sum(terms) / len(labels)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"official": {"Deep_Metric LiftedStructureLoss rules": deep_metric}},
    scales=scales,
)
