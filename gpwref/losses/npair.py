r"""Multi-class N-pair loss (Sohn, NeurIPS 2016) as pytorch-metric-learning runs it (batch only).

Pair choice (PML ``NPairsLoss`` via ``lmu.convert_to_pos_pairs_with_unique_labels``): list every
ordered positive pair (i, j) in row-major order and keep, per label, the first one: the anchor a_c is
the smallest index of class c that has a positive, the positive p_c its smallest-index positive.
Classes with one sample have no positive and contribute nothing. With the N chosen pairs (ordered by
label, which does not change the value)::

    Z_ij = S_{a_i p_j}                                       (N x N logits: cosines, no temperature)
    L    = (1/N) sum_i [ log sum_j exp(Z_ij) - Z_ii ]        (cross-entropy, target = the diagonal)

GPW weights, with pi_ij = softmax_j(Z_i.)::

    G_{a_i p_j} = +pi_ij / N            (j != i: a negative pair, other classes' positives)
    G_{a_i p_i} = -(1 - pi_ii) / N      (the chosen positive pair)

and 0 on every other entry of S. Uses the negative-relative similarity (the softmax over the other
pairs' positives). N <= 1 gives L = 0 and G = 0 (one pair has no negative: PML's cross-entropy over a
1 x 1 matrix is exactly 0). ``per_anchor[a_i]`` = the i-th cross-entropy / N.

The same rule under ``paper`` and ``pml``; the oracle takes S as given, so ``normalize=True`` gives
PML's default (``DotProductSimilarity`` normalises rows: cosines) and ``normalize=False`` Sohn's raw
dot products. What Sohn's paper does differently: raw (unnormalised) dot products a_i.p_j and an L2
regulariser lambda * mean ||f||^2 on the embeddings (PML adds one only through an
``embedding_regularizer``). The regulariser is left to the caller because it is not a function of S:
it acts on the raw embedding norms, which a pair-weight oracle (G = dL/dS) does not see; its gradient
2 lambda f / (batch size) simply adds to ``grad_emb``.

Batch only: the pairs are chosen inside the batch and every chosen positive is also another anchor's
negative (PML raises ``ref_emb is not supported``, ``n_pairs_loss.py:17``). PML's
GenericPairLoss "at most one pair" rule does not apply (NPairsLoss is not a GenericPairLoss).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def chosen_pairs(pos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(anchors, positives): per label, the first ordered positive pair in row-major order."""
    rows = np.nonzero(pos.any(axis=1))[0]
    first_positive = np.argmax(pos[rows], axis=1)
    _, first_of_label = np.unique(labels[rows], return_index=True)
    return rows[first_of_label], first_positive[first_of_label]


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile) -> PairResult:
    m, n = S.shape
    anchors, positives = chosen_pairs(pairs.pos, pairs.labels)
    count = len(anchors)
    per_anchor = np.zeros(m)
    grad_sim = np.zeros((m, n))
    pos_used = np.zeros((m, n), dtype=bool)
    neg_used = np.zeros((m, n), dtype=bool)
    if count >= 2:
        logits = S[np.ix_(anchors, positives)]
        top = logits.max(axis=1, keepdims=True)
        exps = np.exp(logits - top)
        total = exps.sum(axis=1, keepdims=True)
        softmax = exps / total
        cross_entropy = np.log(total[:, 0]) + top[:, 0] - np.diag(logits)
        per_anchor[anchors] = cross_entropy / count
        grad_logits = (softmax - np.eye(count)) / count
        grad_sim[np.ix_(anchors, positives)] = grad_logits
        diagonal = np.eye(count, dtype=bool)
        pos_used[np.ix_(anchors, positives)] = diagonal
        neg_used[np.ix_(anchors, positives)] = ~diagonal
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="npair",
    function=value_and_grad,
    hyper={},
    defaults={"paper": {}, "pml": {}},
    reference="Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. NeurIPS 2016 "
    "(pair choice and cosines as pytorch-metric-learning NPairsLoss)",
    similarities=("negative-relative",),
    supports_ref=False,
    limits="batch only: one (anchor, positive) pair per class is chosen inside the batch and each chosen "
    "positive is every other anchor's negative; Sohn's L2 regulariser acts on raw embedding norms, not on S, "
    "and is left to the caller",
    counterparts={"pytorch-metric-learning": "NPairsLoss"},
)
