r"""Sub-center ArcFace, Deng, Guo, Liu, Zafeiriou, Zhou, ECCV 2020, as GPW weights on sample-proxy pairs.

The reference set IS the sub-centres: ``compute(X, y, ref=W, ref_labels=classes)`` with K_c rows
(sub-centres) per class c, S = X W^T (cosines) and ``grad_ref = dL/dW``. Each class's similarity is
its closest sub-centre's::

    S'_ic = max_{j in class c, j usable for i} S_ij        (usable: positive or negative pair)

and ArcFace (``gpwref/losses/arcface.py``, monotone branch always on) is applied to S': logits
z_ic = scale psi(S'_ic) for the sample's own class, scale S'_ic for the others, cross-entropy of
each sample against its class, averaged over the m' samples whose class has a sub-centre::

    L = (1/m') sum_{i alive} log(1 + sum_{c != y_i} e^{z_ic} / e^{z_i y_i})

GPW weights. With g_ic = dL/dS'_ic (ArcFace's weights on the class level: -scale psi' q r/(1 + r)/m'
on the own class, +scale w r/(1 + r)/m' on the others) and j*(i, c) the arg max of the class's
sub-centres, the max passes the whole weight to the winner::

    G_ij = g_ic  if j = j*(i, c),   0 for every other sub-centre of c

so G keeps ArcFace's signs (<= 0 on the winning positive, >= 0 on the winning negatives) and the
losing sub-centres get exactly 0. Uses self similarity and negative-relative similarity (the
softmax over classes, and each sub-centre against the others of its class through the max).

Rules at the edges: the max is a kink where two sub-centres of a class tie for a sample; the tie
goes to the first of them in the reference order (torch's ``max`` on CPU picks the first too). A
class with one sub-centre is ArcFace's class. Like ArcFace, a winning positive with S = 1 (theta = 0,
within 64 ulps) has an infinite psi' and raises ``GpwrefError``.

Assumptions: the paper's dropping of non-dominant sub-centres and of outlier samples after a first
training stage (PML ``get_outliers``) is a data-cleaning step between trainings, not part of the
loss. The number of sub-centres is read from the reference set (ref_labels), not a hyper-parameter.

Defaults: paper scale 64, margin 0.5 rad (the paper's K = 3 is the reference set's business);
pytorch-metric-learning ``SubCenterArcFaceLoss`` scale 64, margin 28.6 degrees.
"""

from __future__ import annotations

import math

import numpy as np

from ..entry import LossEntry, number
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .arcface import THETA_ZERO_GAP, target_logit
from .normalized_softmax import softmax_over_proxies
from .proxy_anchor import require_proxies


def closest_sub_centres(S: np.ndarray, usable: np.ndarray, center_class: np.ndarray, n_classes: int):
    """S'_ic, the winning column j*(i, c) (first in reference order on a tie) and whether class c
    has a usable sub-centre for sample i."""
    m = S.shape[0]
    best = np.full((m, n_classes), -np.inf)
    winner = np.zeros((m, n_classes), dtype=np.int64)
    for j in range(S.shape[1]):  # reference order: a strict > keeps the first of tied columns
        c = center_class[j]
        better = usable[:, j] & (S[:, j] > best[:, c])
        best[better, c] = S[better, j]
        winner[better, c] = j
    present = np.isfinite(best)
    return np.where(present, best, 0.0), winner, present


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, scale: float, margin: float) -> PairResult:
    require_proxies(pairs, "subcenter_arcface")
    m, n = S.shape
    classes, center_class = np.unique(pairs.ref_labels, return_inverse=True)
    usable = pairs.pos | pairs.neg
    S_class, winner, present = closest_sub_centres(S, usable, center_class, len(classes))
    own = (pairs.labels[:, None] == classes[None, :]) & present
    psi, slope = target_logit(S_class, margin, True)
    bad = own & (~np.isfinite(slope) | (np.abs(1.0 - S_class) <= THETA_ZERO_GAP))
    if bad.any():
        i, c = (int(k) for k in np.argwhere(bad)[0])
        raise GpwrefError(
            "embeddings",
            "subcenter_arcface: the gradient of cos(theta + margin) is infinite at theta = 0 (a sample equal in "
            "direction to its class's closest sub-centre, S = 1)",
            f"sample {i}, proxy {int(winner[i, c])}, S = {S_class[i, c]!r}",
        )
    z = np.where(own, scale * psi, scale * S_class)
    dz_dS = np.where(own, scale * np.where(np.isfinite(slope), slope, 0.0), scale)
    per_class = softmax_over_proxies(z, dz_dS, own, ~own & present)
    grad_sim = np.zeros((m, n))
    rows = np.repeat(np.arange(m)[:, None], len(classes), axis=1)
    grad_sim[rows[present], winner[present]] = per_class.grad_sim[present]
    alive = per_class.pos_used.any(axis=1)
    return PairResult(
        loss=per_class.loss,
        per_anchor=per_class.per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos & alive[:, None],
        neg_used=pairs.neg & alive[:, None],
    )


ENTRY = LossEntry(
    name="subcenter_arcface",
    function=value_and_grad,
    hyper={
        "scale": number(above=0),
        "margin": number(at_least=0, below=math.pi, noun="an angle in radians"),
    },
    defaults={
        "paper": {"scale": 64.0, "margin": 0.5},
        "pml": {"scale": 64.0, "margin": math.radians(28.6)},
    },
    reference="Deng, Guo, Liu, Zafeiriou, Zhou. Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy Web Faces. ECCV 2020",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    limits="sample-to-proxy: ref IS the sub-centres (ref_labels = their classes, any number per class) and is required; "
    "the max over a class's sub-centres is a kink at ties (the first wins); raises at theta = 0 like arcface; "
    "the paper's outlier dropping between training stages is not part of the loss",
    family="proxy",
    counterparts={"pytorch-metric-learning": "SubCenterArcFaceLoss"},
)
