r"""RankNet pairwise logistic loss (Burges et al., ICML 2005) on each anchor's (positive, negative) pairs.

The anchor (query) i ranks the reference items by S_i.; every positive p of i should outrank every
negative n of i. RankNet's cross-entropy with target probability 1 ("p above n") is::

    l_ipn = log(1 + exp(sigma (S_in - S_ip)))            (softplus of the scaled score gap)

    L = (1/Z) sum_i sum_{p in P_i} sum_{n in N_i} l_ipn

with the reduction ``reduction``:

* ``"mean"`` (paper profile): Z = number of (i, p, n) triples, L = 0 when there is none;
* ``"mean_nonzero"`` (pml profile): Z = number of triples with l_ipn > 0 (PML's AvgNonZeroReducer;
  softplus is > 0 unless exp underflows, so this differs from "mean" only for sigma |S_in - S_ip| > 745);
* ``"sum"``: Z = 1.

GPW weights (d softplus(z)/dz = sigmoid(z))::

    G_ip = -(sigma/Z) sum_{n in N_i} sigmoid(sigma (S_in - S_ip))       (pull: <= 0)
    G_in = +(sigma/Z) sum_{p in P_i} sigmoid(sigma (S_in - S_ip))       (push: >= 0)

Fits the GPW frame exactly. A pair's weight is set by how its similarity compares with the pairs of
the other kind of the same anchor (all of them, smoothly), i.e. positive-relative similarity in the
MS paper's terms; no term depends on S_ij alone. The same loss is used outside metric learning on a
score matrix (S_qi = score of item i for query q): calibrated ranking, multi-label ranking (rows =
instances, reference set = label proxies, ``ref=``), agent/sample prioritisation.

Real implementation: pytorch-metric-learning ``TripletMarginLoss(margin=0, smooth_loss=True)``
computes softplus(S_an - S_ap) over all triplets; with a ``DotProductSimilarity`` on sqrt(sigma)-scaled
unit rows it is this loss for any sigma (docs/losses.md#ranknet). ``TripletMarginLoss`` is not a
``GenericPairLoss``: the pml profile's ``zero_if_at_most_one_pair`` does not apply to it (nor here).

Stable for any finite S and sigma: softplus is evaluated as logaddexp(0, z), sigmoid as expit.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..entry import LossEntry, number, one_of
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def triples(S: np.ndarray, pairs: Pairs, term, slope, reduction: str) -> PairResult:
    """Shared by the pairwise ranking losses: L = (1/Z) sum_{i,p,n} term(S_in - S_ip).

    ``term(gap)`` (>= 0) is the per-triple loss of the score gap S_in - S_ip (a matrix over
    P_i x N_i) and ``slope(gap)`` its derivative. Z: every triple ("mean"), the triples with
    term > 0 ("mean_nonzero"), or 1 ("sum"). The used masks hold the pairs of the triples with
    term > 0 (a triple at 0 carries no weight).
    """
    m, n = S.shape
    raw = np.zeros(m)
    grad = np.zeros((m, n))
    pos_used = np.zeros((m, n), dtype=bool)
    neg_used = np.zeros((m, n), dtype=bool)
    count = 0
    for i in range(m):
        P = np.nonzero(pairs.pos[i])[0]
        N = np.nonzero(pairs.neg[i])[0]
        if P.size == 0 or N.size == 0:
            continue
        gap = S[i, N][None, :] - S[i, P][:, None]  # rows: positives, columns: negatives
        values = term(gap)
        active = values > 0
        slopes = np.where(active, slope(gap), 0.0)
        raw[i] = values[active].sum()
        grad[i, P] -= slopes.sum(axis=1)
        grad[i, N] += slopes.sum(axis=0)
        pos_used[i, P] = active.any(axis=1)
        neg_used[i, N] = active.any(axis=0)
        count += int(active.sum()) if reduction == "mean_nonzero" else gap.size
    Z = 1.0 if reduction == "sum" else float(max(count, 1))
    per_anchor = raw / Z
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad / Z,
        pos_used=pos_used,
        neg_used=neg_used,
    )


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, sigma: float, reduction: str) -> PairResult:
    return triples(
        S,
        pairs,
        term=lambda gap: np.logaddexp(0.0, sigma * gap),
        slope=lambda gap: sigma * expit(sigma * gap),
        reduction=reduction,
    )


ENTRY = LossEntry(
    name="ranknet",
    function=value_and_grad,
    hyper={"sigma": number(above=0), "reduction": one_of("mean", "mean_nonzero", "sum")},
    defaults={
        "paper": {"sigma": 1.0, "reduction": "mean"},
        "pml": {"sigma": 1.0, "reduction": "mean_nonzero"},
    },
    reference="Burges, Shaked, Renshaw, Lazier, Deeds, Hamilton, Hullender. Learning to Rank using Gradient Descent. ICML 2005",
    similarities=("positive-relative",),
    variants=({}, {"sigma": 5.0}, {"reduction": "sum"}),
    family="ranking",
    counterparts={"pytorch-metric-learning": "TripletMarginLoss(smooth_loss=True)"},
)
