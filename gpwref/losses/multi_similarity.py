r"""Multi-Similarity (MS) loss, Wang et al., CVPR 2019.

Mining (positive-relative similarity), margin ``eps`` (``eps=None``: no mining)::

    keep negative j of anchor i  iff  S_ij > min_{k in P_i} S_ik - eps
    keep positive j of anchor i  iff  S_ij < max_{k in N_i} S_ik + eps

(strict; an empty P_i keeps no negative, an empty N_i keeps no positive; how the inequality is
evaluated in floating point is the profile's ``mining_compare`` rule). With kept sets P'_i, N'_i::

    L = (1/m) sum_i [ (1/alpha) log(1 + sum_{k in P'_i} exp(-alpha (S_ik - lam)))
                    + (1/beta)  log(1 + sum_{k in N'_i} exp( beta (S_ik - lam))) ]

GPW weights (mining masks are piecewise constant and carry no gradient)::

    G_ij = -(1/m) exp(-alpha (S_ij - lam)) / (1 + sum_{k in P'_i} exp(-alpha (S_ik - lam)))   kept positive
    G_ij = +(1/m) exp( beta (S_ij - lam)) / (1 + sum_{k in N'_i} exp( beta (S_ik - lam)))   kept negative

which equals the paper's w+ = 1 / (exp(alpha (S_ij - lam)) + sum_k exp(-alpha (S_ik - S_ij))) and its
negative twin. Uses all three similarities: self (S_ij), negative-relative (the softmax over the
kept set), positive-relative (the mining).

Profile rules used: ``empty_mined`` ("skip_anchor": official code drops an anchor when either kept
set is empty), ``mining_compare``, ``zero_if_at_most_one_pair`` (PML), ``degenerate`` (official code
raises on an anchor without positives or negatives), ``self_rule`` (via the pair masks).
Both halves are computed with the maximum taken out of the exponent: finite for any finite S and
any alpha, beta > 0.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, optional
from ..pairs import PairResult, Pairs, masked_lse, zero_by_pair_count
from ..profiles import Profile


def mine(S: np.ndarray, pos: np.ndarray, neg: np.ndarray, eps: float | None, compare: str) -> tuple[np.ndarray, np.ndarray]:
    """The MS mining rule: the kept positive and negative masks."""
    if eps is None:
        return pos.copy(), neg.copy()
    min_pos = np.where(pos, S, np.inf).min(axis=1, initial=np.inf)[:, None]
    max_neg = np.where(neg, S, -np.inf).max(axis=1, initial=-np.inf)[:, None]
    with np.errstate(invalid="ignore"):  # inf - eps is fine; no NaN can arise from finite S
        if compare == "shift_extreme":
            keep_neg = neg & (S > min_pos - eps)
            keep_pos = pos & (S < max_neg + eps)
        elif compare == "shift_pair":
            keep_neg = neg & (S + eps > min_pos)
            keep_pos = pos & (S - eps < max_neg)
        else:  # pragma: no cover - profiles are validated data
            raise ValueError(compare)
    return keep_pos, keep_neg


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, alpha: float, beta: float, lam: float, eps: float | None) -> PairResult:
    m = S.shape[0]
    keep_pos, keep_neg = mine(S, pairs.pos, pairs.neg, eps, profile.mining_compare)
    if profile.empty_mined == "skip_anchor":
        alive = keep_pos.any(axis=1) & keep_neg.any(axis=1)
        keep_pos &= alive[:, None]
        keep_neg &= alive[:, None]
    if zero_by_pair_count(profile, keep_pos, keep_neg):
        keep_pos = np.zeros_like(keep_pos)
        keep_neg = np.zeros_like(keep_neg)

    pos_lse, pos_w = masked_lse(-alpha * (S - lam), keep_pos, add_one=True)
    neg_lse, neg_w = masked_lse(beta * (S - lam), keep_neg, add_one=True)
    per_anchor = (pos_lse / alpha + neg_lse / beta) / m
    grad_sim = (neg_w - pos_w) / m
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=keep_pos,
        neg_used=keep_neg,
    )


ENTRY = LossEntry(
    name="multi_similarity",
    function=value_and_grad,
    hyper={"alpha": number(above=0), "beta": number(above=0), "lam": number(), "eps": optional(number(at_least=0), "no mining")},
    defaults={
        "paper": {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": 0.1},
        "official": {"alpha": 2.0, "beta": 40.0, "lam": 0.5, "eps": 0.1},
        "pml": {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": None},
    },
    reference="Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning. CVPR 2019",
    similarities=("self", "negative-relative", "positive-relative"),
    variants=({}, {"eps": None}),
    boundary_param="eps",
    counterparts={"pytorch-metric-learning": "MultiSimilarityLoss", "research-ms-loss (official)": "MultiSimilarityLoss (ret_benchmark/losses/multi_similarity_loss.py)"},
)
