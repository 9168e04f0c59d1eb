r"""Normalised softmax (NormSoftmax), Zhai & Wu, BMVC 2019, as GPW weights on sample-proxy pairs.

The reference set IS the class weights / proxies: ``compute(X, y, ref=W, ref_labels=proxy_classes)``
gives S = X W^T (cosines: rows of X and W L2-normalised) and ``grad_ref = dL/dW``. Logits
z_ij = S_ij / temperature; the loss is the cross-entropy of each sample against its class::

    L = (1/m') sum_{i alive} [ log sum_{j in P_i or N_i} exp(z_ij) - log sum_{j in P_i} exp(z_ij) ]

where P_i are sample i's positive proxies (its class; ``ref_self`` pairs excluded), N_i the proxies
of other classes, and "alive" anchors are those with at least one positive proxy (m' of them; a
sample whose class has no proxy has no target and contributes nothing; L = 0 when m' = 0). With one
proxy per class this is the usual softmax cross-entropy; several proxies of one class share the
target mass (the numerator sums over them).

GPW weights: with p_ij = softmax over P_i u N_i and q_ij = softmax over P_i alone::

    dL/dz_ij = (p_ij - [j in P_i] q_ij) / m',     G_ij = dL/dz_ij * dz_ij/dS_ij  (= dL/dz_ij / temperature)

so G <= 0 on positives (p <= q there) and G >= 0 on negatives. Uses self similarity and
negative-relative similarity (the softmax over all proxies).

pytorch-metric-learning ``NormalizedSoftmaxLoss(temperature=0.05)`` (``losses/normalized_softmax_loss.py``)
normalises its weight matrix W (d x C) by column and the embeddings by row, CE with mean reduction.

``softmax_over_proxies`` is the cross-entropy over proxies shared with CosFace, ArcFace and ProxyNCA.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile
from .proxy_anchor import require_proxies


def softmax_over_proxies(
    z: np.ndarray, dz_dS: np.ndarray, pos: np.ndarray, neg: np.ndarray, *, include_positive: bool = True
) -> PairResult:
    """Mean over alive anchors of -log(sum_{P_i} e^z / sum_{D_i} e^z), D_i = P_i u N_i (or N_i alone).

    ``include_positive=False`` is the ProxyNCA paper's denominator (negatives only); then an anchor
    also needs a negative to be alive. ``dz_dS`` is the logits' elementwise derivative.

    Accuracy for confidently classified samples (loss and weights far below 1): with
    log r_i = lse_{N_i} z - lse_{P_i} z, the cross-entropy is log(1 + r_i) (np.logaddexp(0, log r)),
    the negatives' softmax is w_ij r_i / (1 + r_i) and p_ij - q_ij = -q_ij r_i / (1 + r_i) on
    positives (w, q: softmax over N_i, P_i). No difference of nearly equal numbers is formed.
    """
    den = (pos | neg) if include_positive else neg
    alive = pos.any(axis=1) & den.any(axis=1)
    n_alive = int(np.count_nonzero(alive))
    keep_pos = pos & alive[:, None]
    keep_neg = neg & alive[:, None]
    per_anchor = np.zeros(z.shape[0])
    grad_z = np.zeros_like(z)
    if n_alive:
        pos_lse, q = masked_lse(z, keep_pos, add_one=False)
        neg_lse, w = masked_lse(z, keep_neg, add_one=False)
        with np.errstate(invalid="ignore"):  # rows that are not alive hold -inf - -inf; masked below
            log_r = np.where(alive, neg_lse - pos_lse, -np.inf)
        if include_positive:
            ce = np.logaddexp(0.0, log_r)
            neg_share = np.exp(log_r - ce)  # r / (1 + r), 0 when an anchor has no negative
            grad_z = (w - q) * neg_share[:, None] / n_alive
        else:
            ce = log_r
            grad_z = (w - q) / n_alive
        per_anchor[alive] = ce[alive] / n_alive
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_z * dz_dS,
        pos_used=keep_pos,
        neg_used=keep_neg,
    )


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, temperature: float) -> PairResult:
    require_proxies(pairs, "normalized_softmax")
    return softmax_over_proxies(S / temperature, np.full(S.shape, 1.0 / temperature), pairs.pos, pairs.neg)


ENTRY = LossEntry(
    name="normalized_softmax",
    function=value_and_grad,
    hyper={"temperature": number(above=0)},
    defaults={"paper": {"temperature": 0.05}, "pml": {"temperature": 0.05}},
    reference="Zhai, Wu. Classification is a Strong Baseline for Deep Metric Learning. BMVC 2019",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    limits="sample-to-proxy: ref IS the class weights/proxies (ref_labels = their classes) and is required",
    family="proxy",
    counterparts={"pytorch-metric-learning": "NormalizedSoftmaxLoss"},
)
