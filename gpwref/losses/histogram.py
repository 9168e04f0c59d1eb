r"""Histogram loss (Ustinova & Lempitsky, NeurIPS 2016) with pytorch-metric-learning's discretisation.

Nodes ``t_r = -1 + r Delta``, r = 0..R (R = ``n_bins``, Delta = 2/R). A pair with similarity s in the
bin [t_r, t_{r+1}) puts weight (t_{r+1} - s)/Delta on node r and (s - t_r)/Delta on node r+1 (linear,
"triangular" assignment). With P and N the positive and negative pairs::

    h+_r = (1/|P|) sum_{pairs in P} (weight on node r),   h-_r likewise over N
    Phi+_r = sum_{q <= r} h+_q                           (inclusive cumulative sum)
    L = sum_r h-_r Phi+_r                                 (probability that a negative beats a positive)

GPW weights (piecewise constant in s; docs/losses.md#histogram)::

    dL/ds = +h+_{r+1} / (Delta |N|)     negative pair in bin r
    dL/ds = -h-_r     / (Delta |P|)     positive pair in bin r

so G <= 0 on positives and >= 0 on negatives (the loss obeys the GPW sign rule). The weights depend
on where a pair sits among the pairs of the other kind: positive-relative similarity.

Pairs:
* Batch as its own reference set: UNORDERED pairs {i, j}, i < j, with s_ij = (S_ij + S_ji)/2 (PML
  reads only the upper triangle; the symmetric mean makes L a function of every entry, so finite
  differences on S are exact), and each pair's dL/ds is split 1/2 - 1/2 onto G_ij and G_ji.
* Separate reference set: every (i, j) of the m x n positive / negative masks is one pair, s = S_ij,
  G_ij = dL/ds (no symmetrisation: anchor and reference item play different roles; a reference set
  that includes the batch therefore counts a batch pair once from each side).
* ``pair_rule="all"`` (paper): every positive and every negative pair. ``pair_rule="triplets"`` (PML,
  which builds all triplets and de-duplicates their (a, p) and (a, n) pairs, ``histogram_loss.py:33-44``):
  a positive pair enters when its anchor has a negative, a negative pair when its anchor has a
  positive; with the batch as reference a pair enters when either end qualifies, so a negative pair
  between two singleton classes is left out. No triplet at all: no pair enters and L = 0.
* An empty P or N makes the histograms undefined (0/0); then L = 0 and G = 0 (PML: no triplet, zero).

Node assignment (``node_precision``):
* "float64" (paper): q = (s + 1)/Delta, r = floor(q), weight q - r on node r+1 and 1 - (q - r) on node
  r. A similarity exactly on a node (q an integer) belongs to the bin starting there.
* "float32" (PML, ``histogram_loss.py:60-66``): r = floor((float32(s) + 1)/float32(Delta)) in float32;
  weight ((s + 1) - off_r)/Delta on node r+1 and (t_{r+1} - s)/Delta on node r, where off_r = r Delta
  is rounded to float32 (a long tensor times a Python float is float32) and t_{r+1} = (r+1) Delta - 1
  is evaluated wholly in float32 (the ``- 1`` happens before the float64 s enters); the divisions are
  float64. The nodes sit up to ~1e-7 away from -1 + r Delta and a pair's total weight is 1 only to
  ~1e-6, so L differs from the float64 rule by ~1e-6; a pair within float32 round-off of a node may
  land in the neighbouring bin. Because the totals left and right of a node differ, L itself (not
  only G) jumps by ~1e-6 relative where a pair crosses a node; the float64 rule's L is continuous.
In both: r is capped at R - 1, so s = 1 exactly lies in the last bin with all its weight on node R
(PML indexes node R + 1 there and its scatter_add fails: ``histogram_loss.py:70-74``); s is clipped to
[-1, 1], and a similarity more than ``RANGE_SLACK`` outside that range (not a cosine) raises. At
exactly +-1 a pair keeps its bin's slope (as torch.clamp passes the gradient at its bounds), and so
does a pair within ``AT_ONE`` (5e-13) beyond: that is round-off of a duplicated (or antipodal) pair,
whose S comes out as 1 - ulp or 1 + ulp depending on the summation order, and is read as exactly +-1.
A pair clipped from further out (only rows not quite of unit norm) counts at +-1 with weight 0.
``pos_used`` / ``neg_used``: the pairs that enter and are not clipped to weight 0 (both orientations
with the batch as reference). ``per_anchor``: each negative pair's term
(weights . Phi+)/|N| goes half to each end (with the batch as reference) or wholly to its anchor.
PML's GenericPairLoss "at most one pair" rule does not apply (HistogramLoss is not a GenericPairLoss).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, integer, one_of
from ..errors import GpwrefError, check_memory
from ..pairs import PairResult, Pairs
from ..profiles import Profile

RANGE_SLACK = 1e-5  # |s| up to 1 + RANGE_SLACK is round-off of a cosine (clipped); beyond, an error
AT_ONE = 5e-13  # |s| within AT_ONE of 1 is read as exactly +-1 (|2 - 2s| <= 1e-12, the duplicate gap)


def entering(pairs: Pairs, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Ordered masks of the positive / negative pairs that enter under the pair rule."""
    pos, neg = pairs.pos, pairs.neg
    if rule == "triplets":
        return pos & neg.any(axis=1)[:, None], neg & pos.any(axis=1)[:, None]
    return pos, neg


def node_weights(s: np.ndarray, n_bins: int, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, weight on node r, weight on node r+1) for similarities s already clipped to [-1, 1]."""
    delta = 2.0 / n_bins
    if precision == "float64":
        q = (s + 1.0) / delta
        r = np.minimum(np.floor(q), n_bins - 1)
        upper = q - r
        return r.astype(np.int64), 1.0 - upper, upper
    delta32 = np.float32(delta)
    q32 = (s.astype(np.float32) + np.float32(1.0)) / delta32
    r = np.minimum(np.floor(q32).astype(np.int64), n_bins - 1)
    offset = (r.astype(np.float32) * delta32).astype(np.float64)  # (r Delta) in float32
    node_next = ((r + 1).astype(np.float32) * delta32 - np.float32(1.0)).astype(np.float64)  # ((r+1) Delta - 1) in float32
    return r, (node_next - s) / delta, (s + 1.0 - offset) / delta


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, n_bins: int, pair_rule: str, node_precision: str) -> PairResult:
    m, n = S.shape
    check_memory(1, n_bins + 1, 4, "n_bins")
    pos_in, neg_in = entering(pairs, pair_rule)
    if pairs.ref_is_batch:
        upper = np.triu(np.ones((m, n), dtype=bool), k=1)
        pos_in = (pos_in | pos_in.T) & upper
        neg_in = (neg_in | neg_in.T) & upper
        sym = (S + S.T) / 2.0
    else:
        sym = S
    pos_i, pos_j = np.nonzero(pos_in)
    neg_i, neg_j = np.nonzero(neg_in)
    s_pos, s_neg = sym[pos_i, pos_j], sym[neg_i, neg_j]
    for s in (s_pos, s_neg):
        if s.size and (s.max() > 1.0 + RANGE_SLACK or s.min() < -1.0 - RANGE_SLACK):
            worst = s.max() if s.max() - 1.0 > -1.0 - s.min() else s.min()
            raise GpwrefError(
                "S",
                "histogram needs pair similarities in [-1, 1] (cosines: use normalize=True, or rows of unit norm)",
                f"a pair with similarity {worst!r}",
            )

    per_anchor = np.zeros(m)
    grad_sim = np.zeros((m, n))
    pos_used = np.zeros((m, n), dtype=bool)
    neg_used = np.zeros((m, n), dtype=bool)
    n_pos, n_neg = len(s_pos), len(s_neg)
    if n_pos == 0 or n_neg == 0:
        return PairResult(loss=0.0, per_anchor=per_anchor, grad_sim=grad_sim, pos_used=pos_used, neg_used=neg_used)

    delta = 2.0 / n_bins
    r_pos, low_pos, high_pos = node_weights(np.clip(s_pos, -1.0, 1.0), n_bins, node_precision)
    r_neg, low_neg, high_neg = node_weights(np.clip(s_neg, -1.0, 1.0), n_bins, node_precision)
    nodes = n_bins + 1
    h_pos = (np.bincount(r_pos, low_pos, nodes) + np.bincount(r_pos + 1, high_pos, nodes)) / n_pos
    h_neg = (np.bincount(r_neg, low_neg, nodes) + np.bincount(r_neg + 1, high_neg, nodes)) / n_neg
    phi_pos = np.cumsum(h_pos)

    neg_term = (low_neg * phi_pos[r_neg] + high_neg * phi_pos[r_neg + 1]) / n_neg
    inside_pos = np.abs(s_pos) <= 1.0 + AT_ONE
    inside_neg = np.abs(s_neg) <= 1.0 + AT_ONE
    slope_neg = np.where(inside_neg, h_pos[r_neg + 1] / (delta * n_neg), 0.0)
    slope_pos = np.where(inside_pos, -h_neg[r_pos] / (delta * n_pos), 0.0)

    if pairs.ref_is_batch:
        np.add.at(per_anchor, neg_i, neg_term / 2.0)
        np.add.at(per_anchor, neg_j, neg_term / 2.0)
        for i, j, slope in ((pos_i, pos_j, slope_pos), (neg_i, neg_j, slope_neg)):
            grad_sim[i, j] = slope / 2.0
            grad_sim[j, i] = slope / 2.0
        pos_used[pos_i[inside_pos], pos_j[inside_pos]] = True
        neg_used[neg_i[inside_neg], neg_j[inside_neg]] = True
        pos_used |= pos_used.T
        neg_used |= neg_used.T
    else:
        np.add.at(per_anchor, neg_i, neg_term)
        grad_sim[pos_i, pos_j] = slope_pos
        grad_sim[neg_i, neg_j] = slope_neg
        pos_used[pos_i[inside_pos], pos_j[inside_pos]] = True
        neg_used[neg_i[inside_neg], neg_j[inside_neg]] = True
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="histogram",
    function=value_and_grad,
    hyper={
        "n_bins": integer(at_least=1),
        "pair_rule": one_of("all", "triplets"),
        "node_precision": one_of("float64", "float32"),
    },
    defaults={
        "paper": {"n_bins": 100, "pair_rule": "all", "node_precision": "float64"},
        "pml": {"n_bins": 100, "pair_rule": "triplets", "node_precision": "float32"},
    },
    reference="Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016 "
    "(discretisation as pytorch-metric-learning HistogramLoss)",
    similarities=("positive-relative",),
    variants=({}, {"n_bins": 4}),
    limits="G is piecewise constant and jumps at the nodes (a pair on a node takes the bin starting there); "
    "under node_precision='float32' (PML) L itself jumps by ~1e-6 relative at the nodes; pair similarities "
    "must lie in [-1, 1] (cosines); s = 1 lies in the last bin (PML crashes there)",
    counterparts={"pytorch-metric-learning": "HistogramLoss"},
)
