r"""Contrastive loss with MS-style hard-pair mining (the MS paper's first author's ``HardMiningLoss``).

Source: bnu-wangxun/Deep_Metric ``losses/HardMining.py`` (Xun Wang's code before the MS paper,
Wang et al., CVPR 2019; the mining rule is the paper's Eq. for P-mining and N-mining). The
similarity-form contrastive terms of the ``contrastive`` entry (positive 1 - S, negative S), but
averaged within each anchor over MINED pairs only, with the margin ``margin`` (0.1 in that code)::

    keep negative n of anchor i  iff  S_in > min_{p in P_i} S_ip - margin      (N~_i)
    keep positive p of anchor i  iff  S_ip < max_{n in N_i} S_in + margin      (P~_i)

    l_i = (1/|P~_i|) sum_{p in P~_i} (1 - S_ip) + (1/|N~_i|) sum_{n in N~_i} S_in
    L   = (1/m) sum_i l_i                      (Z = m: every row, as the code's ``sum(loss) / n``)

The negative term is S_in itself, with no hinge (a negative below 0 still pushes), and the mean runs
over the kept sets: a different function from ``contrastive`` (sums over all pairs, negatives
hinged at ``neg_margin``), hence its own entry; the mining is ``multi_similarity.mine``.

GPW weights (the mining masks are piecewise constant)::

    G_ip = -1 / (m |P~_i|)   p in P~_i,       G_in = +1 / (m |N~_i|)   n in N~_i

GPW-signed; the weights are constants given the kept sets, which are chosen by comparing each pair
with the hardest pair of the other kind (positive-relative similarity).

Edges and profile rules: an empty kept set contributes 0 to its half. In exact arithmetic the two
kept sets are empty together (a kept negative, S_in > min_P S - margin, means the hardest positive
is kept, min_P S < max_N S + margin, and conversely), so the profiles' ``empty_mined`` rules agree
except on a boundary decided by rounding; the code skips an anchor without a kept negative
(``continue``), which is ``"skip_anchor"`` (the ``official`` profile). The inequalities are strict (a pair exactly on the boundary is dropped) and
evaluated as the profile's ``mining_compare`` says. The code recognises the self pair by value (S < 1)
and indexes the hardest pairs of an anchor without positives or negatives (an IndexError): the
``official`` profile's value self rule (S >= 1 - 1e-5) and ``degenerate = "raise"`` model these, the
threshold being the one place they differ (verification/refs/contrastive_ms_mining.py refuses
batches where it matters).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .multi_similarity import mine


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, margin: float) -> PairResult:
    m = S.shape[0]
    keep_pos, keep_neg = mine(S, pairs.pos, pairs.neg, margin, profile.mining_compare)
    if profile.empty_mined == "skip_anchor":
        alive = keep_pos.any(axis=1) & keep_neg.any(axis=1)
        keep_pos &= alive[:, None]
        keep_neg &= alive[:, None]
    n_pos = keep_pos.sum(axis=1, keepdims=True)
    n_neg = keep_neg.sum(axis=1, keepdims=True)
    w_pos = np.divide(keep_pos, m * n_pos, out=np.zeros(S.shape), where=n_pos > 0)
    w_neg = np.divide(keep_neg, m * n_neg, out=np.zeros(S.shape), where=n_neg > 0)
    per_anchor = (w_pos * (1.0 - S)).sum(axis=1) + (w_neg * S).sum(axis=1)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=w_neg - w_pos,
        pos_used=keep_pos,
        neg_used=keep_neg,
    )


ENTRY = LossEntry(
    name="contrastive_ms_mining",
    function=value_and_grad,
    hyper={"margin": number(at_least=0)},
    defaults={"paper": {"margin": 0.1}, "official": {"margin": 0.1}},
    reference="Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for Deep Metric "
    "Learning. CVPR 2019 (mining); Deep_Metric HardMiningLoss",
    similarities=("positive-relative",),
    variants=({}, {"margin": 0.3}),
    limits="the code's self rule S < 1 (strict) is modelled by the official profile's S >= 1 - 1e-5 (they differ "
    "for same-label pairs within 1e-5 of S = 1, and where x.x rounds below 1 the code keeps the self pair)",
    boundary_param="margin",
    counterparts={"Deep_Metric": "HardMiningLoss (losses/HardMining.py)"},
)
