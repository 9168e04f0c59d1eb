r"""CosFace (large margin cosine loss), Wang et al., CVPR 2018, as GPW weights on sample-proxy pairs.

The reference set IS the class weights: ``compute(X, y, ref=W, ref_labels=classes)`` gives the
cosines S = X W^T and ``grad_ref = dL/dW``. Logits z_ij = scale (S_ij - margin [j in P_i]) (the
margin is subtracted from the target class's cosines only), then the cross-entropy of each sample
against its class, averaged over the m' anchors that have a positive proxy (see
``normalized_softmax`` for the multi-proxy and no-proxy rules)::

    L = (1/m') sum_{i alive} log(1 + sum_{N_i} e^{z_ij} / sum_{P_i} e^{z_ij})

GPW weights, q = softmax over P_i, w = softmax over N_i, r_i = sum_{N_i} e^z / sum_{P_i} e^z::

    G_ij = -scale q_ij r_i/(1 + r_i) / m'  (positives),   +scale w_ij r_i/(1 + r_i) / m'  (negatives)

Uses self similarity and negative-relative similarity. Defaults scale = 64, margin = 0.35 (paper
and pytorch-metric-learning ``CosFaceLoss``, ``losses/cosface_loss.py``).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .normalized_softmax import softmax_over_proxies
from .proxy_anchor import require_proxies


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, scale: float, margin: float) -> PairResult:
    require_proxies(pairs, "cosface")
    z = scale * (S - margin * pairs.pos)
    return softmax_over_proxies(z, np.full(S.shape, float(scale)), pairs.pos, pairs.neg)


ENTRY = LossEntry(
    name="cosface",
    function=value_and_grad,
    hyper={"scale": number(above=0), "margin": number()},
    defaults={"paper": {"scale": 64.0, "margin": 0.35}, "pml": {"scale": 64.0, "margin": 0.35}},
    reference="Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu. CosFace: Large Margin Cosine Loss for Deep Face Recognition. CVPR 2018",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    limits="sample-to-proxy: ref IS the class weights (ref_labels = their classes) and is required",
    family="proxy",
    counterparts={"pytorch-metric-learning": "CosFaceLoss"},
)
