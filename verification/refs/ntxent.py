"""Second opinions on NT-Xent / InfoNCE: torch formulation, plain loop, real code.

Written from the formulas (docs/losses.md#ntxent) without calling gpwref's vectorised
code. The weights 1 - pi and |P_i| pi - 1 are differences of O(1/(K tau)) terms, so the checks run
through verification/harness.py's frozen-value path with those term sizes as floors (``scales``);
nothing is detached here (``frozen_value`` ignores its frozen argument).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable, rules
from .contract import LossRefs


def _alive(pos, neg, profile, require_both_kinds):
    r = rules(profile)
    if require_both_kinds and not (bool(pos.any()) and bool(neg.any())):
        return False
    return not (r.zero_if_at_most_one_pair and int(pos.sum()) <= 1 and int(neg.sum()) <= 1)


def torch_loss(S, pos, neg, profile, *, temperature, denominator, require_both_kinds):
    """One row of logits per positive pair, masked to its denominator set; mean of -log softmax."""
    zero = (S * 0).sum()
    if not _alive(pos, neg, profile, require_both_kinds):
        return zero
    anchors, positives = torch.nonzero(pos, as_tuple=True)
    if len(anchors) == 0:
        return zero
    logits = S[anchors] / temperature  # K x n
    if denominator == "all":
        member = (pos | neg)[anchors]
    else:
        member = neg[anchors].clone()
        member[torch.arange(len(anchors)), positives] = True
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    log_den = torch.logsumexp(torch.where(member, logits, ninf), dim=1)
    return (log_den - logits[torch.arange(len(anchors)), positives]).mean()


def _pair_terms(S, pos, neg, profile, temperature, denominator, require_both_kinds):
    rows, cols = S.shape
    if not _alive(pos, neg, profile, require_both_kinds):
        return []
    out = []
    for i in range(rows):
        P = [j for j in range(cols) if pos[i, j]]
        N = [j for j in range(cols) if neg[i, j]]
        for p in P:
            D = P + N if denominator == "all" else [p] + N
            top = max(S[i, a] for a in D) / temperature
            log_den = top + math.log(sum(math.exp(S[i, a] / temperature - top) for a in D))
            out.append((i, p, D, log_den, log_den - S[i, p] / temperature))
    return out


def frozen_value(S_eval, S_frozen, pos, neg, profile, *, temperature, denominator, require_both_kinds):
    """Nothing is detached in NT-Xent: the plain value at S_eval."""
    terms = _pair_terms(S_eval, pos, neg, profile, temperature, denominator, require_both_kinds)
    return (sum(t[4] for t in terms) / len(terms) if terms else 0.0), ()


def loop(S, pos, neg, profile, *, temperature, denominator, require_both_kinds):
    """Plain loop over positive pairs; each pair adds pi_a/(K tau) to its denominator and -1/(K tau) to p."""
    G = np.zeros(S.shape)
    terms = _pair_terms(S, pos, neg, profile, temperature, denominator, require_both_kinds)
    if not terms:
        return 0.0, G
    K = len(terms)
    for i, p, D, log_den, _ in terms:
        for a in D:
            G[i, a] += math.exp(S[i, a] / temperature - log_den) / (K * temperature)
        G[i, p] -= 1.0 / (K * temperature)
    return sum(t[4] for t in terms) / K, G


def scales(params, ours, pos, neg):
    """Term sizes: the value is lse - z per pair, G entries are sums of |P_i| terms of size 1/(K tau)."""
    tau = params["temperature"]
    used = ours.pos_used
    K = int(used.sum())
    if K == 0:
        return {}
    rows = used.any(axis=1)
    per_pos = used.sum(axis=1)
    terms = per_pos * (np.abs(ours.sim).max(axis=1) / tau + np.log(np.maximum((pos | neg).sum(axis=1), 1)))
    return {"value": float(terms[rows].sum()) / K, "G": float(per_pos.max()) / (K * tau)}


def pml(X, labels, R, ref_labels, ref_self, normalize, *, temperature, denominator, require_both_kinds):
    """pytorch-metric-learning NTXentLoss(temperature), MeanReducer over positive pairs."""
    from pytorch_metric_learning.losses import NTXentLoss

    if (denominator, require_both_kinds) != ("positive_and_negatives", True):
        raise NotApplicable("PML NTXentLoss: denominator='positive_and_negatives', zero without both pair kinds")
    if not normalize:
        raise NotApplicable("PML's CosineSimilarity always normalises rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    y = torch.as_tensor(labels)
    yr = None if R is None else torch.as_tensor(ref_labels)
    return NTXentLoss(temperature=temperature)(X, y, None, R, yr)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    frozen_value=frozen_value,
    scales=scales,
)
