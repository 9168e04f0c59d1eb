r"""Smooth-AP, Brown, Xie, Kalogeiton, Zisserman, ECCV 2020: average precision with sigmoid ranks.

For query (anchor) i with scores s_j = S_ij over its retrieval set Omega_i = P_i u N_i (the batch
minus i, or a separate ``ref`` minus ``ref_self``), and G_tau(x) = sigmoid(x / tau)::

    R_P(p) = 1 + sum_{k in P_i, k != p} G_tau(s_k - s_p)        (smoothed rank among the positives)
    R_N(p) =     sum_{k in N_i}         G_tau(s_k - s_p)        (negatives ranked above p)
    R_A(p) = R_P(p) + R_N(p)                                    (smoothed rank in Omega_i)
    AP_i   = (1/|P_i|) sum_{p in P_i} R_P(p) / R_A(p)
    L      = (1/N') sum_{i: P_i nonempty} (1 - AP_i),   1 - AP_i = (1/|P_i|) sum_p R_N(p) / R_A(p)

(the last form is how it is evaluated: no cancellation when AP_i is close to 1).

GPW weights. The quotient rule on R_P / R_A with R_A = R_P + R_N gives
d(R_P/R_A) = (R_N dR_P - R_P dR_N) / R_A^2; with G'_kp = G_tau'(s_k - s_p),
a_P(p) = R_N(p) / (|P_i| R_A(p)^2) and a_N(p) = R_P(p) / (|P_i| R_A(p)^2)::

    dAP_i/ds_j = [j in P_i] ( sum_{p in P_i, p != j} a_P(p) G'_jp - a_P(j) sum_{k in P_i, k != j} G'_kj
                              + a_N(j) sum_{k in N_i} G'_kj )
               - [j in N_i] sum_{p in P_i} a_N(p) G'_jp
    G_ij = -(1/N') dAP_i/ds_j

(written this way, an anchor without negatives has exactly zero weights, as its loss is identically 0).
Negatives always get G >= 0 (the a_N term); a positive's weight can have either sign (it is
pushed above the negatives and pulled past the other positives), so ``gpw_sign`` is False. The
weights use self similarity and the anchor's whole ranking (negative- and positive-relative).

Ties (duplicated rows, a duplicate of the query at S = 1): no tie-break. Two items with equal
scores rank half above each other, G_tau(0) = 1/2 with slope 1/(4 tau), as in the official code,
PML and torch autograd; the pair k = p is left out by index, never by value. Conditioning: for
tied or close positives j, p the terms a_P(p) G'_jp and a_P(j) G'_pj nearly cancel, so a
positive's weight is exact only to ~2^-53 times the sum of its terms' sizes, not of itself
(verification/refs/smooth_ap.py measures against that size).

Conventions (docs/losses.md#smooth_ap), each a knob:

* ``include_query``: the official code (Smooth_AP ``src/losses.py``, SmoothAP.forward) and
  pytorch-metric-learning 2.9 ``SmoothAPLoss`` (``losses/smooth_ap.py``) rank the query inside its own
  retrieval set and count it as a relevant item. gpwref adds the query to P_i and Omega_i with score
  1, the self-similarity of a unit row, held constant: for unit rows the diagonal's gradient is
  radial and vanishes through the normalisation (docs/conventions.md#notation), so G has no diagonal entry and the
  diagonal of S is not read. Every query is then alive (N' = m).
* ``sigmoid_clamp``: the official code clamps the exponent -x/tau to [-c, c] with c = 50 (zero
  slope beyond, as torch.clamp: |x/tau| > c strictly); PML's Smooth-AP uses torch's plain sigmoid.

Both codes take no labels: they assume a class-sorted batch of equal class groups (PML 2.9 reshapes
the batch into B/C groups of C consecutive items, C the number of classes, which is the class
structure only when every class has exactly C samples; see tests/losses/test_smooth_ap.py).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number, optional
from ..pairs import PairResult, Pairs
from ..profiles import Profile

SIGMOID_CLAMP = optional(number(above=0), "plain sigmoid")  # the `clamp` of sigmoid_and_slope (pnp, recall_at_k too)


def sigmoid_and_slope(x: np.ndarray, temperature: float, clamp: float | None) -> tuple[np.ndarray, np.ndarray]:
    """sigmoid(x / temperature) and its derivative in x; with ``clamp`` c the exponent -x/tau is
    clipped to [-c, c] first (the official codes' form 1 / (1 + exp(clip(-x/tau)))), slope 0 beyond."""
    exponent = -x / temperature
    if clamp is None:
        ez = np.exp(-np.abs(exponent))
        sig = np.where(exponent <= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))
        co = np.where(exponent <= 0, ez / (1.0 + ez), 1.0 / (1.0 + ez))  # sigmoid(-x/tau), no 1 - sig
        return sig, sig * co / temperature
    clipped = np.clip(exponent, -clamp, clamp)
    sig = 1.0 / (1.0 + np.exp(clipped))
    co = 1.0 / (1.0 + np.exp(-clipped))
    return sig, np.where(np.abs(exponent) > clamp, 0.0, sig * co / temperature)


def query_items(S_row: np.ndarray, pos_row: np.ndarray, neg_row: np.ndarray, include_query: bool):
    """Scores and relevance of a query's ranking set, the query itself (score 1) appended last."""
    items = np.nonzero(pos_row | neg_row)[0]
    scores = S_row[items]
    relevant = pos_row[items]
    if include_query:
        scores = np.append(scores, 1.0)
        relevant = np.append(relevant, True)
    return items, scores, relevant


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, temperature: float, include_query: bool, sigmoid_clamp: float | None) -> PairResult:
    m, n = S.shape
    alive = np.array([include_query or pairs.pos[i].any() for i in range(m)])
    n_alive = int(np.count_nonzero(alive))
    per_anchor = np.zeros(m)
    grad_sim = np.zeros((m, n))
    for i in np.nonzero(alive)[0]:
        items, s, rel = query_items(S[i], pairs.pos[i], pairs.neg[i], include_query)
        diff = s[:, None] - s[None, :]  # [k, p] = s_k - s_p
        sig, slope = sigmoid_and_slope(diff, temperature, sigmoid_clamp)
        np.fill_diagonal(sig, 0.0)
        np.fill_diagonal(slope, 0.0)
        n_rel = int(rel.sum())
        r_pos = 1.0 + sig[rel].sum(axis=0)  # over k in P, for every p
        r_neg = sig[~rel].sum(axis=0)
        r_all = r_pos + r_neg
        per_anchor[i] = np.sum(np.where(rel, r_neg / r_all, 0.0)) / n_rel / n_alive
        a_pos = np.where(rel, r_neg / (n_rel * r_all**2), 0.0)
        a_neg = np.where(rel, r_pos / (n_rel * r_all**2), 0.0)
        from_pos = slope[rel].sum(axis=0)  # sum_{k in P, k != j} G'_kj
        from_neg = slope[~rel].sum(axis=0)  # sum_{k in N} G'_kj
        d_ap = np.where(rel, slope @ a_pos - a_pos * from_pos + a_neg * from_neg, -(slope @ a_neg))
        grad = -d_ap / n_alive
        grad_sim[i, items] = grad[: len(items)]  # the appended query (constant score) has none
    used = alive[:, None]
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos & used,
        neg_used=pairs.neg & used,
    )


ENTRY = LossEntry(
    name="smooth_ap",
    function=value_and_grad,
    hyper={
        "temperature": number(above=0),
        "include_query": boolean(),
        "sigmoid_clamp": SIGMOID_CLAMP,
    },
    defaults={
        "paper": {"temperature": 0.01, "include_query": False, "sigmoid_clamp": None},
        "pml": {"temperature": 0.01, "include_query": True, "sigmoid_clamp": None},
    },
    reference="Brown, Xie, Kalogeiton, Zisserman. Smooth-AP: Smoothing the Path Towards Large-Scale Image Retrieval. ECCV 2020",
    similarities=("self", "negative-relative", "positive-relative"),
    gpw_sign=False,
    supports_ref=True,
    variants=({}, {"include_query": True, "sigmoid_clamp": 50.0}),
    limits="positive weights can take either sign; include_query holds the query's own score at 1 (unit rows)",
    family="ranking",
    counterparts={"pytorch-metric-learning": "SmoothAPLoss", "Smooth_AP (official)": "SmoothAP (src/losses.py)"},
)
