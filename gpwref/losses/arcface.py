r"""ArcFace (additive angular margin), Deng, Guo, Xue, Zafeiriou, CVPR 2019, as GPW weights on
sample-proxy pairs.

The reference set IS the class weights: ``compute(X, y, ref=W, ref_labels=classes)`` gives the
cosines S = X W^T and ``grad_ref = dL/dW``. On a target (positive) pair the angle
theta = arccos(clip(S, -1, 1)) gets the margin::

    psi(S) = cos(theta + margin)                    theta <= pi - margin (or monotone_fix=False)
    psi(S) = cos(theta) - margin sin(margin)        theta >  pi - margin (monotone_fix=True)

logits z_ij = scale psi(S_ij) on positives and scale S_ij on negatives, then the cross-entropy of
each sample against its class, averaged over the m' anchors that have a positive proxy (see
``normalized_softmax`` for the multi-proxy and no-proxy rules)::

    L = (1/m') sum_{i alive} log(1 + sum_{N_i} e^{z_ij} / sum_{P_i} e^{z_ij})

GPW weights, q = softmax over P_i, w = softmax over N_i, r_i = sum_{N_i} e^z / sum_{P_i} e^z::

    G_ij = -scale psi'(S_ij) q_ij r_i/(1 + r_i) / m'  (positives),   +scale w_ij r_i/(1 + r_i) / m'  (negatives)

    psi'(S) = sin(theta + margin) / sin(theta)  on the first branch (d theta/dS = -1/sin theta),
    psi'(S) = 1 on the second, and 0 where |S| > 1 (the clip is flat there, as torch.clamp).

Rules at the edges: psi' is infinite at theta = 0 (S = 1 on a positive pair: a sample that
coincides with its class's proxy) and, without the fix, at theta = pi; gpwref raises GpwrefError
there rather than return inf/NaN (pytorch-metric-learning's autograd gives NaN). A copy of a unit row
has S = 1 only up to rounding (1 - S of a few ulps either way), so a positive pair with
|1 - S| <= THETA_ZERO_GAP (64 ulps) counts as theta = 0. Near it psi' ~ sin(margin)/theta is
ill-conditioned: an error dS in S changes it by the relative amount dS / (2 (1 - S)). The fix (the
"monotone" branch of insightface and pytorch-metric-learning ``ArcFaceLoss``,
``losses/arcface_loss.py``) keeps psi decreasing in theta, so positives keep G <= 0; it makes psi
jump at theta = pi - margin (cos(pi) = -1 vs -cos(m) - m sin(m)). Without it (the bare formula),
positives with theta > pi - margin get G > 0 (tests/losses/test_arcface.py shows it).

Defaults: paper scale 64, margin 0.5 rad; pytorch-metric-learning scale 64, margin 28.6 degrees
(0.49916 rad). Uses self similarity and negative-relative similarity.
"""

from __future__ import annotations

import math

import numpy as np

from ..entry import LossEntry, boolean, number
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .normalized_softmax import softmax_over_proxies
from .proxy_anchor import require_proxies


THETA_ZERO_GAP = 64 * np.finfo(np.float64).eps


def target_logit(S: np.ndarray, margin: float, monotone_fix: bool) -> tuple[np.ndarray, np.ndarray]:
    """psi(S) and psi'(S) elementwise (see the module docstring); psi' is inf where it is infinite."""
    C = np.clip(S, -1.0, 1.0)
    theta = np.arccos(C)
    # sin(theta) from (1 - C)(1 + C): 1 - C is exact near C = 1, so psi and psi' keep the relative
    # precision of the given S (cos(arccos(C) + m) would inherit arccos's error near theta = 0).
    sin_theta = np.sqrt((1.0 - C) * (1.0 + C))
    first = theta <= math.pi - margin if monotone_fix else np.ones(S.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_first = math.cos(margin) + C * math.sin(margin) / sin_theta  # sin(theta + m) / sin(theta)
    psi = np.where(first, C * math.cos(margin) - sin_theta * math.sin(margin), C - margin * math.sin(margin))
    slope = np.where(first, slope_first, 1.0)
    slope = np.where(np.abs(S) > 1.0, 0.0, slope)
    return psi, slope


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, scale: float, margin: float, monotone_fix: bool) -> PairResult:
    require_proxies(pairs, "arcface")
    pos = pairs.pos
    psi, slope = target_logit(S, margin, monotone_fix)
    bad = pos & (~np.isfinite(slope) | (np.abs(1.0 - S) <= THETA_ZERO_GAP))
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise GpwrefError(
            "embeddings",
            "arcface: the gradient of cos(theta + margin) is infinite at theta = 0 (a sample equal in direction to its "
            "class's proxy, S = 1)" + ("" if monotone_fix else " and at theta = pi (S = -1) without the monotone fix"),
            f"sample {i}, proxy {j}, S = {S[i, j]!r}",
        )
    z = np.where(pos, scale * psi, scale * S)
    dz_dS = np.where(pos, scale * np.where(np.isfinite(slope), slope, 0.0), scale)
    return softmax_over_proxies(z, dz_dS, pos, pairs.neg)


ENTRY = LossEntry(
    name="arcface",
    function=value_and_grad,
    hyper={
        "scale": number(above=0),
        "margin": number(at_least=0, below=math.pi, noun="an angle in radians"),
        "monotone_fix": boolean(),
    },
    defaults={
        "paper": {"scale": 64.0, "margin": 0.5, "monotone_fix": True},
        "pml": {"scale": 64.0, "margin": math.radians(28.6), "monotone_fix": True},
    },
    reference="Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face Recognition. CVPR 2019",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    limits="sample-to-proxy: ref IS the class weights (ref_labels = their classes) and is required; "
    "raises where a positive pair has S = 1 exactly (infinite gradient at theta = 0); psi jumps at theta = pi - margin",
    family="proxy",
    counterparts={"pytorch-metric-learning": "ArcFaceLoss"},
)
