r"""Large-margin softmax (L-Softmax), Liu, Wen, Yu, Yang, ICML 2016, as GPW weights on sample-proxy pairs.

The reference set IS the class weights: ``compute(X, y, ref=W, ref_labels=classes)`` gives the
cosines S = X W^T (unit rows) and ``grad_ref = dL/dW``. On a target (positive) pair the angle
theta = arccos(clip(S, -1, 1)) gets the multiplicative margin, an integer m, through the piecewise
psi that keeps it decreasing over [0, pi]::

    psi(S) = (-1)^k cos(m theta) - 2k,    k = floor(m theta / pi)   (theta in [k pi/m, (k+1) pi/m])

with cos(m theta) = T_m(S), the Chebyshev polynomial (the paper's Eq. 7 binomial sum in S and
1 - S^2). Logits z_ij = scale psi(S_ij) on positives and scale S_ij on negatives, then the
cross-entropy of each sample against its class, averaged over the m' samples that have a positive
proxy (``normalized_softmax``'s rules)::

    L = (1/m') sum_{i alive} log(1 + sum_{N_i} e^{z_ij} / sum_{P_i} e^{z_ij})

GPW weights (q = softmax over P_i, w = softmax over N_i, r_i = sum_N e^z / sum_P e^z)::

    G_ij = -scale psi'(S_ij) q_ij r_i/(1 + r_i) / m'  (positives),   +scale w_ij r_i/(1 + r_i) / m'  (negatives)

    psi'(S) = (-1)^k T_m'(S) = (-1)^k m sin(m theta) / sin(theta)

k is piecewise constant (PML takes it without gradient); at its steps theta = k pi/m both one-sided
psi agree (1 - 2k) and so do the slopes (sin(m theta) = 0), so psi is continuously differentiable:
no kink. psi' >= 0 on [0, pi] (sin(m theta) has the sign (-1)^k on the k-th piece), so positives
keep G <= 0: the GPW sign rule holds. psi' is finite everywhere (m^2 at theta = 0: T_m is a
polynomial), unlike ArcFace's. Uses self similarity and negative-relative similarity.

Assumption, said plainly: L-Softmax's logit is |x_i| |W_j| psi(cos theta_ij) (PML
``LargeMarginSoftmaxLoss`` multiplies by both norms and ``scale``; ``SphereFaceLoss`` by |x_i| and
``scale``, its W being normalised). That is not a function of the cosines S. This entry is the loss
at unit embeddings and unit weights, where both norms are 1 and the logit is scale psi(S): the form
used with normalised features. The refs module checks it against PML fed the L2-normalised embeddings
and unit weights; PML on raw embeddings (norm-scaled logits) is not modelled. The psi polynomial is
evaluated at S itself and k from the clipped angle, as PML does (they differ from the clipped form
only for |S| > 1 by rounding). At theta = pi exactly (S <= -1 on a positive pair) the paper's
pieces end with k = m - 1; PML's floor gives k = m there, the same psi but the slope -m^2 (a wrong
GPW sign at that single point): gpwref takes the paper's k. SphereFace's annealing of the target logit, (lambda S + psi)/(1 + lambda),
is a training schedule outside the loss, and PML does not apply it either.

Defaults: pytorch-metric-learning margin 4, scale 1 (the paper's m = 4 for its face experiments).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import chebyshev

from ..entry import LossEntry, integer, number
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .normalized_softmax import softmax_over_proxies
from .proxy_anchor import require_proxies


def multiplicative_target(S: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """psi(S) and psi'(S) elementwise (module docstring): T_m and T_m' at S, signs and offsets from k."""
    theta = np.arccos(np.clip(S, -1.0, 1.0))
    k = np.floor(theta * margin / math.pi)
    k = np.minimum(k, margin - 1)  # theta = pi exactly: m theta / pi = m lies on the last piece's closed end
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    T = chebyshev.Chebyshev.basis(margin)
    # psi' >= 0 exactly; near the pieces' ends (psi' ~ 0) rounding can give -1e-15: that is 0
    return sign * T(S) - 2.0 * k, np.maximum(sign * T.deriv()(S), 0.0)


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, margin: int, scale: float) -> PairResult:
    require_proxies(pairs, "large_margin_softmax")
    psi, slope = multiplicative_target(S, margin)
    z = np.where(pairs.pos, scale * psi, scale * S)
    dz_dS = np.where(pairs.pos, scale * slope, scale)
    return softmax_over_proxies(z, dz_dS, pairs.pos, pairs.neg)


ENTRY = LossEntry(
    name="large_margin_softmax",
    function=value_and_grad,
    hyper={"margin": integer(at_least=1), "scale": number(above=0)},
    defaults={"pml": {"margin": 4, "scale": 1.0}},
    variants=({}, {"margin": 3, "scale": 8.0}),
    reference="Liu, Wen, Yu, Yang. Large-Margin Softmax Loss for Convolutional Neural Networks. ICML 2016",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    limits="sample-to-proxy: ref IS the class weights (ref_labels = their classes) and is required; the loss at unit "
    "embeddings and weights (PML multiplies the logits by |x_i| |W_j|, not a function of S: not modelled)",
    family="proxy",
    counterparts={"pytorch-metric-learning": "LargeMarginSoftmaxLoss"},
)
