r"""Lifted structure in the scaled, unhinged form of training repositories.

Source: bnu-wangxun/Deep_Metric ``losses/LiftedStructure.py`` (``LiftedStructureLoss``, alpha 40,
beta 2), the form the MS paper (Wang et al., CVPR 2019) compares against: Song et al.'s lifted
structure (CVPR 2016) with its log-sum-exps given temperatures, scaled by 2/temperature, and no
hinge or square. For anchor i with positives P_i and negatives N_i::

    l_i = (2/beta) log sum_{p in P_i} exp(-beta S_ip) + (2/alpha) log sum_{n in N_i} exp(alpha S_in)
    L   = (1/m) sum_i l_i                        (Z = m, every row, as the code's ``sum(loss) / n``)

An anchor contributes only when both sets are non-empty (the code skips an anchor without
negatives; without positives its log of an empty sum is -inf, which no profile reproduces). With
``mining_margin`` = mu (the code's ``hard_mining``, mu = 0.1 hard-coded there) both sets are first
cut by the MS rule, strict, compared as the profile's ``mining_compare`` says
(``multi_similarity.mine``): keep n iff S_in > min_P S - mu, keep p iff S_ip < max_N S + mu; an
anchor with an empty kept set is skipped (the two are empty together in exact arithmetic).

This is not the ``lifted_structure`` entry: that one is Song's hinged, squared J_ij over positive
pairs, or the generalized [log sum e^{..} + log sum e^{..}]_+ with margins; here nothing is hinged, the
halves are separately scaled, and the value may be negative. Hence its own entry.

GPW weights, softmax over the (kept) set::

    G_ip = -(2/m) exp(-beta S_ip) / sum_{P_i} exp(-beta S)       (<= 0)
    G_in = +(2/m) exp(alpha S_in) / sum_{N_i} exp(alpha S)       (>= 0)

GPW-signed; each weight is its pair's share among the pairs of its own kind (negative-relative
similarity; the mining, when on, is positive-relative). The weights of an anchor's positives sum to
-2/m and those of its negatives to +2/m. The code recognises the self pair by value (S < 1): the
``official`` profile's value rule (S >= 1 - 1e-5) models it, and its ``degenerate = "raise"`` the
code's failure on an anchor without positives. Both log-sum-exps are evaluated with the maximum
taken out: finite for any finite S and scales.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, optional
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile
from .multi_similarity import mine


def value_and_grad(
    S: np.ndarray, pairs: Pairs, profile: Profile, *, alpha: float, beta: float, mining_margin: float | None
) -> PairResult:
    m = S.shape[0]
    keep_pos, keep_neg = mine(S, pairs.pos, pairs.neg, mining_margin, profile.mining_compare)
    alive = keep_pos.any(axis=1) & keep_neg.any(axis=1)
    keep_pos &= alive[:, None]
    keep_neg &= alive[:, None]
    pos_lse, pos_w = masked_lse(-beta * S, keep_pos, add_one=False)
    neg_lse, neg_w = masked_lse(alpha * S, keep_neg, add_one=False)
    per_anchor = np.where(alive, (2.0 / beta) * pos_lse + (2.0 / alpha) * neg_lse, 0.0) / m
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=(2.0 / m) * (neg_w - pos_w),
        pos_used=keep_pos,
        neg_used=keep_neg,
    )


ENTRY = LossEntry(
    name="lifted_structure_scaled",
    function=value_and_grad,
    hyper={"alpha": number(above=0), "beta": number(above=0),
           "mining_margin": optional(number(at_least=0), "no mining")},
    defaults={
        "paper": {"alpha": 40.0, "beta": 2.0, "mining_margin": None},
        "official": {"alpha": 40.0, "beta": 2.0, "mining_margin": None},
    },
    reference="Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature Embedding. "
    "CVPR 2016; scaled unhinged form: Deep_Metric LiftedStructureLoss (Wang et al. CVPR 2019)",
    similarities=("negative-relative",),
    variants=({}, {"mining_margin": 0.1}),
    limits="the value may be negative (no hinge); an anchor without positives or negatives contributes 0 "
    "(the code gives -inf without positives); the mining, when on, is positive-relative",
    boundary_param="mining_margin",
    counterparts={"Deep_Metric": "LiftedStructureLoss (losses/LiftedStructure.py)"},
)
