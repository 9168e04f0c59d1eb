r"""Pairwise CosFace: the large-margin cosine loss on sample pairs (re-identification code).

Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei, "Circle Loss", CVPR 2020, Eq. (1) (their unified loss
with pair-wise labels; CosFace's additive cosine margin moved from proxies onto sample pairs), as
fast-reid implements it: ``pairwise_cosface`` in JDAI-CV/fast-reid
``fastreid/modeling/losses/circle_loss.py``. Anchor i, positives P_i, negatives N_i, scale
``gamma``, margin ``margin``::

    x_i = log sum_{p in P_i} sum_{n in N_i} exp(gamma (S_in - S_ip + margin))
        = A_i + B_i,   A_i = log sum_{P_i} exp(-gamma S_ip),   B_i = log sum_{N_i} exp(gamma (S_in + margin))
    l_i = softplus(x_i) = log(1 + sum_P sum_N exp(gamma (S_in - S_ip + margin)))
    L   = (1/m) sum_i l_i

Z = m, every row of the batch, as fast-reid's ``.mean()`` (an anchor with no positive or no negative
has an empty double sum: l_i = softplus(-inf) = 0, and still counts in Z). This is not the proxy
``cosface`` entry: there the softmax runs over the class weights, log(1 + sum_N e^{z_n} / sum_P e^{z_p}),
which with several positives is a different function of S (one ratio of sums, not a sum of ratios).

GPW weights, with sigma the logistic function and c = 1/m::

    dl_i/dx_i = sigma(x_i),  dA_i/dS_ip = -gamma softmax_P(-gamma S)_p,  dB_i/dS_in = gamma softmax_N(gamma S)_n
    G_ip = -c gamma sigma(x_i) exp(-gamma S_ip - A_i)                  (<= 0)
    G_in = +c gamma sigma(x_i) exp(gamma (S_in + margin) - B_i)          (>= 0)

GPW-signed. A weight depends on the pair's similarity relative to the others of its kind (the
softmax: negative-relative for negatives, the same over positives) and, through sigma(x_i), on the
pairs of the other kind (positive-relative); there is no absolute threshold, so no self similarity.

``softplus_threshold``: None (paper profile) evaluates softplus exactly; a number t makes
softplus(x) = x and its slope 1 for x > t, as torch's ``F.softplus`` (threshold 20) that fast-reid
calls: the value then differs by log1p(exp(-x)) < 2.1e-9. That switch is the only kink (x = t takes
the exact side, as torch). No hinge, no mining: ties and duplicates need no rule.

Defaults gamma = 128, margin = 0.25: fast-reid's ``_C.MODEL.LOSSES.COSFACE`` defaults
(``fastreid/config/defaults.py``). The paper gives no pair-wise defaults.
Assumptions: fast-reid works on the batch only (normalised rows, self pair removed); a reference set
(``ref=``) is this module's extension, with the same formula over its columns.
Stable for any finite S and gamma: A_i and B_i are log-sum-exps with the maximum taken out, and
softplus and sigma are evaluated without overflow.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, optional
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile
from .circle import sigmoid, softplus


def value_and_grad(
    S: np.ndarray, pairs: Pairs, profile: Profile, *, gamma: float, margin: float, softplus_threshold: float | None
) -> PairResult:
    rows = S.shape[0]
    both = pairs.pos.any(axis=1) & pairs.neg.any(axis=1)
    pos_used = pairs.pos & both[:, None]
    neg_used = pairs.neg & both[:, None]
    A, soft_pos = masked_lse(-gamma * S, pos_used, add_one=False)
    B, soft_neg = masked_lse(gamma * (S + margin), neg_used, add_one=False)
    x = np.where(both, A + B, -np.inf)
    if softplus_threshold is None:
        per_row, slope = softplus(x), sigmoid(x)
    else:
        linear = x > softplus_threshold
        per_row = np.where(linear, x, softplus(x))
        slope = np.where(linear, 1.0, sigmoid(x))
    c = 1.0 / rows
    grad_sim = c * gamma * slope[:, None] * (soft_neg - soft_pos)
    per_anchor = c * per_row
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="pairwise_cosface",
    function=value_and_grad,
    hyper={
        "gamma": number(above=0),
        "margin": number(),
        "softplus_threshold": optional(number(), "exact softplus"),
    },
    defaults={"paper": {"gamma": 128.0, "margin": 0.25, "softplus_threshold": None}},
    reference="Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. Circle Loss: A Unified Perspective of Pair Similarity "
    "Optimization. CVPR 2020 (Eq. 1, pair-wise labels); fast-reid pairwise_cosface",
    similarities=("negative-relative", "positive-relative"),
    variants=({}, {"softplus_threshold": 20.0}),
    limits="the mean runs over every row (fast-reid), anchors without a positive or a negative included; "
    "no PML class exists, so there is no pml profile",
    counterparts={"fast-reid": "pairwise_cosface (fastreid/modeling/losses/circle_loss.py)"},
)
