r"""Triplet loss with all, batch-hard or semi-hard triplets.

A triplet (i, p, n) is an anchor i, one of its positives p in P_i and one of its negatives n in
N_i. With the pair "distance" D_ij = -S_ij (``distance="cosine"``, the MS paper's similarity form)
or D_ij = d_ij = sqrt(max(2 - 2 S_ij, 0)) (``distance="euclidean"``, PML's default LpDistance).
Duplicated pairs (|2 - 2S| <= 1e-12) sit exactly at S = 1, d = 0, with dd/dS = 0 under euclidean
(``contrastive.snap_duplicates`` / ``unit_distance``), so their ties and hinges are exact::

    l_ipn = [ (D_ip - D_in) + margin ]_+          cosine: [S_in - S_ip + margin]_+

The paper's ``margin`` 0.1 on cosines is FaceNet's 0.2 on squared unit distances, since
d^2 = 2 - 2S: d_ip^2 - d_in^2 + 0.2 = 2 (S_in - S_ip + 0.1).

``mining`` chooses the triplet set T:

* ``"all"``: every (i, p, n) with p in P_i, n in N_i.
* ``"batch_hard"`` (Hermans et al. 2017; PML BatchHardMiner): per anchor with a positive and a
  negative, the hardest positive p* = argmax_p D_ip (min S) and the hardest negative
  n* = argmin_n D_in (max S), ties to the lowest index (as torch.max/min); one triplet per anchor.
* ``"semi_hard"`` (FaceNet's window; PML TripletMarginMiner(type_of_triplets="semihard")): every
  (i, p, n) whose gap g = D_in - D_ip (cosine: S_ip - S_in) lies in the window
  0 < g < w (``semi_hard_bound="strict"``: the paper's S_ip - margin < S_in < S_ip) or
  0 < g <= w (``"inclusive"``: PML's ``triplet_margin <= margin``), with w = ``miner_margin``
  (``None``: w = margin).

``reduction``: ``"mean"`` L = (1/|T|) sum_T l (the paper: zeros included) or ``"avg_nonzero"``
L = (1/#{t in T : l_t > 0}) sum_T l (PML's AvgNonZeroReducer); 0 when the divisor is 0.

GPW weights accumulate over the triplets with l_t > 0 (relu'(0) = 0); with the divisor
Z = |T| (mean) or #{l_t > 0} (avg_nonzero), per active triplet::

    cosine:     G_ip -= 1/Z,        G_in += 1/Z
    euclidean:  G_ip -= 1/(Z d_ip), G_in += 1/(Z d_in)    (dd/dS = -1/d; 0 at d = 0)

so G <= 0 on positives and >= 0 on negatives. The weights are counts of violated comparisons with
pairs of the other kind (positive-relative similarity); ``batch_hard`` also compares each pair
with the others of its own kind (a hard negative-relative selection), and ``euclidean`` scales by
1/d_ij (self-similarity).

Rules: the gap is evaluated as ``g = D_in - D_ip`` and the hinge as ``(-g) + margin > 0`` (the
same floating-point result as PML's ``(D_ip - D_in) + margin``). Ties: S is exact only to a few
ulps (a reference row duplicated under another label gives S_ip and S_in that agree in exact
arithmetic but not in floating point), so a gap with |g| <= TIE_GAP (1e-12) is a tie, g := 0 (not
semi-hard; on the hinge exactly at ``margin``), and the hardest pair is the lowest index among
the pairs within TIE_GAP of the extreme D. The slopes are unchanged by this snapping. PML's
GenericPairLoss rule ``zero_if_at_most_one_pair`` does not apply (TripletMarginLoss is not a
GenericPairLoss). Anchors without a positive or a negative have no triplet; a batch without
triplets (m = 1, one class, all singletons) gives 0. ``extras``: ``triplets`` = |T|,
``active_triplets``, and for batch_hard ``hardest_positive`` / ``hardest_negative`` (column per
anchor, -1 when the anchor has no triplet).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, one_of, optional
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .contrastive import snap_duplicates, unit_distance

# all/semi_hard work anchor by anchor on (positives x negatives) blocks of at most this many entries.
_BLOCK_ENTRIES = 1 << 22
# |D_in - D_ip| at or below this is a tie (see the module docstring).
TIE_GAP = 1e-12


def snap_gap(gap: np.ndarray) -> np.ndarray:
    return np.where(np.abs(gap) <= TIE_GAP, 0.0, gap)


def pair_distance(S: np.ndarray, distance: str) -> tuple[np.ndarray, np.ndarray]:
    """D and dD/dS: (-S, -1) for cosine, the unit-sphere distance and its slope for euclidean."""
    if distance == "cosine":
        return -snap_duplicates(S), np.full_like(S, -1.0)
    return unit_distance(S)


def hardest(D: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor: hardest positive (max D) and hardest negative (min D); -1 if the anchor has no triplet.

    Ties (within TIE_GAP of the extreme) go to the lowest index.
    """
    has_both = pos.any(axis=1) & neg.any(axis=1)
    if not has_both.any():
        return np.full(D.shape[0], -1), np.full(D.shape[0], -1)
    top_pos = np.where(pos, D, -np.inf).max(axis=1, keepdims=True)
    low_neg = np.where(neg, D, np.inf).min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # rows without a positive or negative compare with +-inf
        hard_pos = (pos & (D >= top_pos - TIE_GAP)).argmax(axis=1)  # first True = lowest index
        hard_neg = (neg & (D <= low_neg + TIE_GAP)).argmax(axis=1)
    return np.where(has_both, hard_pos, -1), np.where(has_both, hard_neg, -1)


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    mining: str,
    margin: float,
    distance: str,
    reduction: str,
    miner_margin: float | None,
    semi_hard_bound: str,
) -> PairResult:
    m, n = S.shape
    D, slope = pair_distance(S, distance)
    pos, neg = pairs.pos, pairs.neg
    loss_sum = np.zeros(m)  # per anchor: sum of l over its triplets
    active_per_pos = np.zeros((m, n))  # number of active triplets each (i, p) belongs to
    active_per_neg = np.zeros((m, n))
    n_triplets = n_active = 0
    extras: dict[str, object] = {}

    if mining == "batch_hard":
        hard_pos, hard_neg = hardest(D, pos, neg)
        anchors = np.nonzero(hard_pos >= 0)[0]
        p, q = hard_pos[anchors], hard_neg[anchors]
        violation = -snap_gap(D[anchors, q] - D[anchors, p]) + margin
        active = violation > 0
        loss_sum[anchors] = np.where(active, violation, 0.0)
        active_per_pos[anchors, p] = active
        active_per_neg[anchors, q] = active
        n_triplets, n_active = len(anchors), int(active.sum())
        extras.update(hardest_positive=hard_pos, hardest_negative=hard_neg)
    elif mining in ("all", "semi_hard"):
        window = margin if miner_margin is None else miner_margin
        for i in range(m):
            P, N = np.flatnonzero(pos[i]), np.flatnonzero(neg[i])
            if not len(P) or not len(N):
                continue
            D_neg = D[i, N]
            step = max(1, _BLOCK_ENTRIES // len(N))
            for first in range(0, len(P), step):  # blocks of (positives x negatives) of one anchor
                P_block = P[first:first + step]
                gap = snap_gap(D_neg[None, :] - D[i, P_block][:, None])  # D_in - D_ip
                violation = -gap + margin
                if mining == "semi_hard":
                    inside = gap <= window if semi_hard_bound == "inclusive" else gap < window
                    mined = (gap > 0) & inside
                else:
                    mined = np.ones(gap.shape, dtype=bool)
                active = mined & (violation > 0)
                loss_sum[i] += np.where(active, violation, 0.0).sum()
                active_per_pos[i, P_block] = active.sum(axis=1)
                active_per_neg[i, N] += active.sum(axis=0)
                n_triplets += int(mined.sum())
                n_active += int(active.sum())
    else:  # pragma: no cover - hyper-parameters are validated by the catalog
        raise ValueError(mining)

    divisor = n_triplets if reduction == "mean" else n_active
    scale = 1.0 / divisor if divisor else 0.0
    per_anchor = loss_sum * scale
    # dl/dD_ip = +1 and dl/dD_in = -1 per active triplet, times dD/dS
    grad_sim = (active_per_pos - active_per_neg) * slope * scale
    extras.update(triplets=n_triplets, active_triplets=n_active)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=active_per_pos > 0,
        neg_used=active_per_neg > 0,
        extras=extras,
    )


ENTRY = LossEntry(
    name="triplet",
    function=value_and_grad,
    hyper={
        "mining": one_of("all", "batch_hard", "semi_hard"),
        "margin": number(at_least=0),
        "distance": one_of("cosine", "euclidean"),
        "reduction": one_of("mean", "avg_nonzero"),
        "miner_margin": optional(number(at_least=0), "the loss margin"),
        "semi_hard_bound": one_of("strict", "inclusive"),
    },
    defaults={
        "paper": {"mining": "all", "margin": 0.1, "distance": "cosine", "reduction": "mean",
                  "miner_margin": None, "semi_hard_bound": "strict"},
        "pml": {"mining": "all", "margin": 0.05, "distance": "euclidean", "reduction": "avg_nonzero",
                "miner_margin": 0.2, "semi_hard_bound": "inclusive"},
    },
    reference="Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015; Hermans, Beyer, Leibe. In Defense of the "
    "Triplet Loss for Person Re-Identification. arXiv 2017; similarity form: Wang et al. CVPR 2019",
    similarities=("positive-relative",),
    variants=({"mining": "all"}, {"mining": "batch_hard"}, {"mining": "semi_hard"}),
    limits="similarities describe mining='all'/'semi_hard' in the cosine form; batch_hard also selects by "
    "comparing pairs of the same kind (negative-relative) and distance='euclidean' scales by 1/d (self). "
    "all/semi_hard loop over anchors on (positives x negatives) blocks of at most 4M entries: memory O(m n), "
    "time O(sum_i |P_i| |N_i|)",
    boundary_param="margin",
    counterparts={"pytorch-metric-learning": "TripletMarginLoss"},
)
