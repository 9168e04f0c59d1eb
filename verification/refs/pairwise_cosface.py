"""Second opinions on pairwise CosFace: torch over the (positive, negative) grid, a plain loop, fast-reid's rules.

Written from the formula (the double sum of Circle Loss's Eq. 1) without calling gpwref's code. The real
implementation is fast-reid's ``pairwise_cosface`` (JDAI-CV/fast-reid, ``fastreid/modeling/losses/
circle_loss.py``), whose conventions are re-expressed here: rows normalised inside, positives = same
label minus the diagonal, non-members pushed out by an additive -99999999 on their logits (not -inf),
torch's softplus (linear above 20), mean over all rows, batch only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..common import NotApplicable
from ._fast_reid import batch_masks
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, gamma, margin, softplus_threshold):
    """Each anchor's log(1 + sum over its (p, n) grid of exp(gamma (S_in - S_ip + margin))), one logsumexp of the grid."""
    rows = S.shape[0]
    terms = []
    for i in range(rows):
        P, N = pos[i].nonzero().flatten(), neg[i].nonzero().flatten()
        if len(P) == 0 or len(N) == 0:
            continue
        grid = gamma * (S[i, N][None, :] - S[i, P][:, None] + margin)
        x = torch.logsumexp(grid.flatten(), dim=0)
        # log(1 + e^x) by logaddexp, which keeps a tiny e^x (a logsumexp with a 0 logit rounds it away)
        exact = torch.logaddexp(torch.zeros_like(x), x)
        if softplus_threshold is not None:
            exact = torch.where(x > softplus_threshold, x, exact)
        terms.append(exact)
    zero = (S * 0).sum()
    return zero + (torch.stack(terms).sum() / rows if terms else 0.0)


def loop(S, pos, neg, profile, *, gamma, margin, softplus_threshold):
    """Plain per-anchor loop over the (p, n) grid; weights from the closed form of dl/dS (sums of grid terms)."""
    rows, cols = S.shape
    G = np.zeros((rows, cols))
    total = 0.0
    for i in range(rows):
        P = [j for j in range(cols) if pos[i, j]]
        N = [j for j in range(cols) if neg[i, j]]
        if not P or not N:
            continue
        exponent = {(p, n): gamma * (S[i, n] - S[i, p] + margin) for p in P for n in N}
        top = max(exponent.values())
        grid = {k: math.exp(v - top) for k, v in exponent.items()}  # e^{x_pn - top}
        x = top + math.log(sum(grid.values()))
        linear = softplus_threshold is not None and x > softplus_threshold
        total += x if linear else max(x, 0.0) + math.log1p(math.exp(-abs(x)))
        # dl/d(grid exponent) = e^{x_pn} / (1 + sum e) (exact), or e^{x_pn} / sum e (linear branch)
        denominator = sum(grid.values()) + (0.0 if linear else math.exp(-top))
        for (p, n), e in grid.items():
            share = gamma * e / denominator / rows
            G[i, p] -= share
            G[i, n] += share
    return total / rows, G


def fast_reid(X, labels, R, ref_labels, ref_self, normalize, *, gamma, margin, softplus_threshold):
    """fast-reid ``pairwise_cosface`` rules (see the module docstring), in float64."""
    if softplus_threshold != 20.0:
        raise NotApplicable("fast-reid calls torch's F.softplus (linear above 20): softplus_threshold=20")
    sim, is_pos, is_neg = batch_masks(X, labels, R, normalize, "pairwise_cosface")
    outside = -99999999.0
    logit_pos = -gamma * (sim * is_pos) + outside * (1 - is_pos)
    logit_neg = gamma * (sim * is_neg + margin) + outside * (1 - is_neg)
    return F.softplus(torch.logsumexp(logit_pos, dim=1) + torch.logsumexp(logit_neg, dim=1)).mean()


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"paper": {"fast-reid pairwise_cosface rules": fast_reid}},
)
