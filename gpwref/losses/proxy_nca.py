r"""ProxyNCA, Movshovitz-Attias, Toshev, Leung, Ioffe, Singh, ICCV 2017, as GPW weights on
sample-proxy pairs.

The reference set IS the proxies: ``compute(X, y, ref=W, ref_labels=proxy_classes)`` gives the
cosines S = X W^T and ``grad_ref = dL/dW``. On unit rows the squared distance to a proxy is
d2_ij = 2 - 2 S_ij; the logits are z_ij = -scale * d2_ij and, with P_i the sample's positive proxies
(its class; ``ref_self`` pairs excluded) and N_i the proxies of other classes::

    include_positive=False (the paper):  L_i = -log( sum_{P_i} e^{z_ij} / sum_{N_i} e^{z_ij} )
    include_positive=True  (PML, ProxyNCA++ style):  L_i = -log( sum_{P_i} e^{z_ij} / sum_{P_i u N_i} e^{z_ij} )

    L = (1/m') sum over alive anchors of L_i

Alive anchors have a positive proxy (and, without the positives in the denominator, a negative
one); the others have no term and are not counted in m' (L = 0 when m' = 0). With one proxy per
class the paper's loss is d2(x, p_y) + log sum_{z != y} e^{-d2(x, p_z)}; it can be negative.

GPW weights (q = softmax over P_i, w = softmax over N_i, r_i = sum_{N_i} e^z / sum_{P_i} e^z)::

    paper:            G_ij = -2 scale q_ij / m'  on positives,  +2 scale w_ij / m'  on negatives
    include_positive: G_ij = -2 scale q_ij r_i/(1 + r_i) / m',   +2 scale w_ij r_i/(1 + r_i) / m'

(dz/dS = 2 scale). Uses self similarity and negative-relative similarity.

Conventions (docs/losses.md#proxy_nca), each a knob: pytorch-metric-learning ``ProxyNCALoss``
(``losses/proxy_losses.py`` via ``losses/nca_loss.py`` nca_computation) takes the softmax over ALL
proxies, positive included, with ``softmax_scale=1`` on squared distances of normalised rows, and
drops anchors whose positive mass is exactly 0 before its mean; RDML (``criteria/proxynca.py``)
multiplies normalised embeddings and proxies by 3 (``scale=9`` here) and excludes the positive proxy
from the denominator, as the paper.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .normalized_softmax import softmax_over_proxies
from .proxy_anchor import require_proxies


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, scale: float, include_positive: bool) -> PairResult:
    require_proxies(pairs, "proxy_nca")
    z = -scale * (2.0 - 2.0 * S)
    return softmax_over_proxies(z, np.full(S.shape, 2.0 * scale), pairs.pos, pairs.neg, include_positive=include_positive)


ENTRY = LossEntry(
    name="proxy_nca",
    function=value_and_grad,
    hyper={"scale": number(above=0), "include_positive": boolean()},
    defaults={"paper": {"scale": 1.0, "include_positive": False}, "pml": {"scale": 1.0, "include_positive": True}},
    reference="Movshovitz-Attias, Toshev, Leung, Ioffe, Singh. No Fuss Distance Metric Learning using Proxies. ICCV 2017",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    variants=({}, {"scale": 9.0}, {"include_positive": True}),
    limits="sample-to-proxy: ref IS the proxies (ref_labels = their classes) and is required",
    family="proxy",
    counterparts={"pytorch-metric-learning": "ProxyNCALoss", "RDML": "proxynca.Criterion (criteria/proxynca.py)"},
)
