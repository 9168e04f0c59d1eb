"""Second opinions on the contrastive loss with MS-style mining: torch masks, a plain loop, Deep_Metric's rules.

Written from the formula (gpwref/losses/contrastive_ms_mining.py docstring) without calling gpwref's loss
code; the profile's rules (mining comparison, empty kept sets) are the specification, read through
``rules``. The real implementation is ``HardMiningLoss`` of bnu-wangxun/Deep_Metric
(``losses/HardMining.py``), re-expressed under the ``official`` profile: positives = same label with
S < 1 (the self pair by value), negatives = other labels, the hardest positive and negative by
sorting (an anchor without either raises), strict mining with the margin on the extreme
(S_n > min_P - 0.1, S_p < max_N + 0.1), an anchor without a kept negative skipped, per-anchor means
of 1 - S and S, sum over anchors divided by the batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from ..common import NotApplicable, rules
from ._deep_metric import anchor_pairs
from .contract import LossRefs


def _kept(S, pos, neg, margin, compare):
    """Kept positive and negative masks (bool arrays or tensors) by the profile's comparison."""
    inf = float("inf")
    low_pos = [min([S[i, j] for j in range(S.shape[1]) if pos[i, j]], default=inf) for i in range(S.shape[0])]
    high_neg = [max([S[i, j] for j in range(S.shape[1]) if neg[i, j]], default=-inf) for i in range(S.shape[0])]
    keep_pos = np.zeros(S.shape, dtype=bool)
    keep_neg = np.zeros(S.shape, dtype=bool)
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            s = float(S[i, j])
            if compare == "shift_extreme":
                keep_neg[i, j] = bool(neg[i, j]) and s > low_pos[i] - margin
                keep_pos[i, j] = bool(pos[i, j]) and s < high_neg[i] + margin
            else:
                keep_neg[i, j] = bool(neg[i, j]) and s + margin > low_pos[i]
                keep_pos[i, j] = bool(pos[i, j]) and s - margin < high_neg[i]
    return keep_pos, keep_neg


def _alive(keep_pos, keep_neg, profile):
    if rules(profile).empty_mined == "skip_anchor":
        return keep_pos.any(axis=1) & keep_neg.any(axis=1)
    return np.ones(keep_pos.shape[0], dtype=bool)


def torch_loss(S, pos, neg, profile, *, margin):
    Sd = S.detach().numpy()
    keep_pos, keep_neg = _kept(Sd, pos.numpy(), neg.numpy(), margin, rules(profile).mining_compare)
    alive = _alive(keep_pos, keep_neg, profile)
    total = (S * 0).sum()
    for i in np.flatnonzero(alive):
        kp, kn = torch.as_tensor(keep_pos[i]), torch.as_tensor(keep_neg[i])
        if bool(kp.any()):
            total = total + (1 - S[i][kp]).mean()
        if bool(kn.any()):
            total = total + S[i][kn].mean()
    return total / S.shape[0]


def loop(S, pos, neg, profile, *, margin):
    m, n = S.shape
    keep_pos, keep_neg = _kept(S, pos, neg, margin, rules(profile).mining_compare)
    alive = _alive(keep_pos, keep_neg, profile)
    G = np.zeros((m, n))
    total = 0.0
    for i in range(m):
        if not alive[i]:
            continue
        P = [j for j in range(n) if keep_pos[i, j]]
        N = [j for j in range(n) if keep_neg[i, j]]
        for j in P:
            total += (1.0 - S[i, j]) / len(P) / m
            G[i, j] = -1.0 / len(P) / m
        for j in N:
            total += S[i, j] / len(N) / m
            G[i, j] = 1.0 / len(N) / m
    return total, G


def deep_metric(X, labels, R, ref_labels, ref_self, normalize, *, margin):
    """Deep_Metric HardMiningLoss rules (see the module docstring), in float64 on normalised rows."""
    terms = []
    for pos_, neg_ in anchor_pairs(X, labels, R, normalize, "HardMiningLoss"):
        if len(pos_) == 0 or len(neg_) == 0:
            raise ValueError("Deep_Metric indexes the hardest positive and negative (IndexError on an empty set)")
        low_pos, high_neg = pos_.min(), neg_.max()
        for value, bound in ((neg_, low_pos - margin), (pos_, high_neg + margin)):
            if bool(((value - bound).abs() <= 1e-12).any()):
                raise NotApplicable("a pair on the mining boundary: the code and the profile compare in another order")
        neg_kept = neg_[neg_ > low_pos - margin]
        pos_kept = pos_[pos_ < high_neg + margin]
        if len(neg_kept) < 1:
            continue
        terms.append((1 - pos_kept).mean() + neg_kept.mean())
    if not terms:
        return (X * 0).sum()
    return sum(terms) / len(labels)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"official": {"Deep_Metric HardMiningLoss rules": deep_metric}},
)
