r"""Binomial deviance loss (Yi et al., ICPR 2014), in the MS paper's GPW form.

With softplus(z) = log(1 + e^z) and per-anchor means over the positive and negative sets::

    L = (1/m) sum_i [ (1/|P_i|) sum_{j in P_i} softplus(alpha (lam - S_ij))
                    + (1/|N_i|) sum_{j in N_i} softplus(beta  (S_ij - lam)) ]

An empty P_i or N_i contributes 0 (so singletons, one class and m = 1 are finite; m = 1 gives 0).
GPW weights, with sigma the logistic function::

    G_ij = -(alpha / (m |P_i|)) sigma(alpha (lam - S_ij))    j in P_i
    G_ij = +(beta  / (m |N_i|)) sigma(beta  (S_ij - lam))    j in N_i

Each weight depends on S_ij alone (self-similarity; the set sizes are counts, not similarities).
Defaults alpha = 2, beta = 40, lam = 0.5 follow the first MS author's earlier code (DeepMetric-XW,
bnu-wangxun/Deep_Metric ``losses/Binomial.py``: positive scale 2, negative scale 40, margin 0.5),
which divides by m as here. Yi et al.'s negative cost c (2 or 25 in later papers) is the ratio
beta / alpha here. No pytorch-metric-learning class implements this loss (2.x).

Profiles: the same formula under two sets of pair rules. ``paper``: index self rule, an empty P_i
or N_i gives 0. ``official`` (that code's conventions, default hard mining off): "self" dropped by
value (the profile's S >= 1 - 1e-5; the code's test is S < 1) and an anchor without a positive or
a negative refused, as the code fails there (the mean over no positive is NaN; an anchor without
negatives it skips, which no batch with every anchor valid shows). The code's ``hard_mining`` path
(MS-style mining with 0.1, halves scaled by 2/scale) is not modelled.

softplus and sigma are evaluated in their stable forms (max(z, 0) + log1p(e^-|z|) and a
sign-split logistic): finite for every finite S and scales up to 200 and beyond. Every positive and
negative pair is used (a weight may underflow to 0 only when its term is below 1e-300).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def logistic(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, alpha: float, beta: float, lam: float) -> PairResult:
    m = S.shape[0]
    pos, neg = pairs.pos, pairs.neg
    pos_count = np.maximum(pos.sum(axis=1), 1)[:, None]  # an empty set sums to 0 whatever the divisor
    neg_count = np.maximum(neg.sum(axis=1), 1)[:, None]
    z_pos = alpha * (lam - S)
    z_neg = beta * (S - lam)
    pos_part = np.where(pos, softplus(z_pos), 0.0) / pos_count
    neg_part = np.where(neg, softplus(z_neg), 0.0) / neg_count
    per_anchor = (pos_part.sum(axis=1) + neg_part.sum(axis=1)) / m
    grad_sim = (np.where(neg, beta * logistic(z_neg), 0.0) / neg_count - np.where(pos, alpha * logistic(z_pos), 0.0) / pos_count) / m
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos.copy(),
        neg_used=neg.copy(),
    )


ENTRY = LossEntry(
    name="binomial_deviance",
    function=value_and_grad,
    hyper={"alpha": number(above=0), "beta": number(above=0), "lam": number()},
    defaults={"paper": {"alpha": 2.0, "beta": 40.0, "lam": 0.5}, "official": {"alpha": 2.0, "beta": 40.0, "lam": 0.5}},
    reference="Yi, Lei, Liao, Li. Deep Metric Learning for Person Re-Identification. ICPR 2014; "
    "GPW form: Wang et al. CVPR 2019",
    similarities=("self",),
    limits="pytorch-metric-learning (2.x) has no binomial deviance loss; the official profile follows DeepMetric-XW "
    "Binomial.py (self by value, degenerate anchors refused) except its self threshold (S < 1 there) and its "
    "hard_mining path (not modelled)",
    counterparts={"Deep_Metric": "BinomialLoss (losses/Binomial.py), official profile"},
)
