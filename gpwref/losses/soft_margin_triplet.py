r"""Soft-margin triplet loss on Euclidean distances, Hermans, Beyer, Leibe, arXiv 2017 ("In Defense of
the Triplet Loss for Person Re-Identification", Sec. 2: the soft margin), as re-identification code
trains it: JDAI-CV/fast-reid ``fastreid/modeling/losses/triplet_loss.py`` (``TripletLoss`` with
``MARGIN = 0``: ``F.soft_margin_loss(dist_an - dist_ap, 1)`` after ``hard_example_mining``).

The hinge [d_ap - d_an + margin]_+ of the ``triplet`` entry is replaced by the softplus, with no
margin, on the unit-sphere distance d_ij = sqrt(max(2 - 2 S_ij, 0)) (rows L2-normalised; duplicated
pairs, |2 - 2S| <= 1e-12, sit at d = 0 with dd/dS = 0, as in ``contrastive.unit_distance``)::

    l_ipn = softplus(d_ip - d_in) = log(1 + exp(d_ip - d_in))

This is a different function from the hinge (never zero, smooth), hence its own entry; ``ranknet``
is the same softplus on cosine gaps -S_ip + S_in, not on distances.

``mining`` chooses the triplet set T and Z:

* ``"batch_hard"`` (the paper's and fast-reid's): per anchor with a positive and a negative, the
  hardest positive p* = argmax_p d_ip and the hardest negative n* = argmin_n d_in (ties within
  1e-12 to the lowest index, ``triplet.hardest``); Z = number of such anchors.
* ``"all"`` (the paper's "batch all"): every (i, p, n); Z = |T|.

    L = (1/Z) sum_{(i, p, n) in T} softplus(d_ip - d_in)      (0 when T is empty)

GPW weights, sigma the logistic function and dd/dS = -1/d (0 at d = 0)::

    G_ip = -(1/Z) sum_{n : (i,p,n) in T} sigma(d_ip - d_in) / d_ip       (<= 0)
    G_in = +(1/Z) sum_{p : (i,p,n) in T} sigma(d_ip - d_in) / d_in       (>= 0)

GPW-signed. The weight compares each pair with those of the other kind (positive-relative) and
scales by 1/d_ij (self); batch_hard also selects by comparing pairs of the same kind. No hinge, so
the only kinks are batch_hard's changes of the hardest pair (ties, taken as above).

Assumptions: the distance is Euclidean between L2-normalised rows (fast-reid's ``NORM_FEAT``; the
paper's non-squared Euclidean distance); positives exclude the anchor itself (the paper's p != a).
fast-reid counts the anchor among its own positives (self distance sqrt(1e-12)), which matters only
for an anchor without another positive, and clamps squared distances at 1e-12; both are outside
this formula (its real check in verification/refs/soft_margin_triplet.py refuses such batches).
Stable: softplus and sigma evaluated without overflow.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, one_of
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .circle import sigmoid, softplus
from .contrastive import unit_distance
from .triplet import hardest

# "all" works anchor by anchor on (positives x negatives) blocks of at most this many entries.
_BLOCK_ENTRIES = 1 << 22


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, mining: str) -> PairResult:
    m, n = S.shape
    d, slope = unit_distance(S)
    pos, neg = pairs.pos, pairs.neg
    loss_sum = np.zeros(m)
    pull = np.zeros((m, n))  # sum of sigma(d_ip - d_in) over the triplets each pair belongs to
    pos_used = np.zeros((m, n), dtype=bool)
    neg_used = np.zeros((m, n), dtype=bool)
    if mining == "batch_hard":
        hard_pos, hard_neg = hardest(d, pos, neg)
        anchors = np.nonzero(hard_pos >= 0)[0]
        p, q = hard_pos[anchors], hard_neg[anchors]
        gap = d[anchors, p] - d[anchors, q]
        loss_sum[anchors] = softplus(gap)
        pull[anchors, p] += sigmoid(gap)
        pull[anchors, q] += sigmoid(gap)
        pos_used[anchors, p] = neg_used[anchors, q] = True
        divisor = len(anchors)
    else:  # "all"
        divisor = 0
        for i in range(m):
            P, N = np.flatnonzero(pos[i]), np.flatnonzero(neg[i])
            if not len(P) or not len(N):
                continue
            step = max(1, _BLOCK_ENTRIES // len(N))
            for first in range(0, len(P), step):
                block = P[first:first + step]
                gap = d[i, block][:, None] - d[i, N][None, :]  # d_ip - d_in
                loss_sum[i] += softplus(gap).sum()
                weight = sigmoid(gap)
                pull[i, block] += weight.sum(axis=1)
                pull[i, N] += weight.sum(axis=0)
            pos_used[i, P] = neg_used[i, N] = True
            divisor += len(P) * len(N)
    scale = 1.0 / divisor if divisor else 0.0
    per_anchor = scale * loss_sum
    # dl/dd_ip = +sigma, dl/dd_in = -sigma; times dd/dS = slope (-1/d)
    grad_sim = scale * pull * np.where(pos_used, slope, np.where(neg_used, -slope, 0.0))
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
        extras={"triplets": int(divisor)},
    )


ENTRY = LossEntry(
    name="soft_margin_triplet",
    function=value_and_grad,
    hyper={"mining": one_of("batch_hard", "all")},
    defaults={"paper": {"mining": "batch_hard"}},
    reference="Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person Re-Identification. arXiv 2017 "
    "(soft margin); fast-reid TripletLoss with MARGIN 0",
    similarities=("self", "positive-relative"),
    variants=({}, {"mining": "all"}),
    limits="Euclidean distance between L2-normalised rows only (a function of S); batch_hard also selects by "
    "comparing pairs of the same kind; fast-reid's self-as-positive and 1e-12 clamp are not modelled",
    counterparts={"fast-reid": "TripletLoss, MARGIN 0, HARD_MINING (fastreid/modeling/losses/triplet_loss.py)"},
)
