r"""SoftTriple loss, Qian, Shang, Sun, Hu, Li, Jin, ICCV 2019, as GPW weights on sample-center pairs.

The reference set IS the class centers: ``compute(X, y, ref=W, ref_labels=center_classes)`` with
any number of centers per class (the paper's K each) gives S = X W^T and ``grad_ref = dL/dW``.
For sample i, the centers it may use are its positive and negative pairs (``ref_self`` pairs
excluded); for each class c with usable centers K_ic, the relaxed class similarity is a soft max::

    a_ij  = exp(S_ij / gamma) / sum_{k in K_ic} exp(S_ik / gamma)        (center_softmax="centers")
    S'_ic = sum_{j in K_ic} a_ij S_ij
    L     = (1/m') sum_{i alive} -log softmax_c( la (S'_ic - margin [c = y_i]) )[y_i]

over the classes with usable centers; alive anchors are those whose own class has one (m' of them).

GPW weights by the chain rule, with g_ic = dL/dS'_ic = la (p_ic - [c = y_i]) / m' (p the class
softmax) and c = class(j)::

    G_ij = g_ic a_ij (1 + (S_ij - S'_ic) / gamma)

(d S'_ic / d S_ij = a_ij + sum_k S_ik a_ik ([k = j] - a_ij) / gamma). The GPW sign rule holds for
the class similarities S' (g <= 0 on the own class, >= 0 on the others) but NOT for every center:
a center more than gamma below its class's soft maximum (S_ij < S'_ic - gamma) gets the opposite
sign, so ``gpw_sign`` is False for this entry (tests/losses/test_soft_triple.py shows it). Uses self
similarity and negative-relative similarity (both softmaxes).

Conventions (docs/losses.md#soft_triple): the paper and pytorch-metric-learning
``SoftTripleLoss`` (``losses/soft_triple_loss.py``: la=20, gamma stored as 1/0.1, margin 0.01,
10 centers per class, softmax over each class's centers) are ``center_softmax="centers"``. RDML
(``criteria/softtriplet.py``) takes that softmax over dim=1 of its (batch, classes, centers) tensor,
i.e. over the CLASSES for each center index k, and multiplies by its gamma (0.1) instead of dividing
(``gamma=10`` here): ``center_softmax="classes"``::

    b_ick = exp(S_ick / gamma) / sum_{c'} exp(S_ic'k / gamma),  S'_ic = sum_k b_ick S_ick
    G_ick = b_ick [ g_ic (1 + S_ick / gamma) - (1/gamma) sum_{c'} g_ic' b_ic'k S_ic'k ]

with S_ick the similarity to the k-th center of class c (in ``ref`` order). It needs the same
number of centers in every class and no ``ref_self`` pairs (GpwrefError otherwise). The paper's and
RDML's center regulariser is a function of W alone (no S) and is not included.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, one_of
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile
from .normalized_softmax import softmax_over_proxies
from .proxy_anchor import require_proxies


def value_and_grad(
    S: np.ndarray, pairs: Pairs, profile: Profile, *, la: float, gamma: float, margin: float, center_softmax: str
) -> PairResult:
    require_proxies(pairs, "soft_triple")
    m, n = S.shape
    classes, center_class = np.unique(pairs.ref_labels, return_inverse=True)
    usable = pairs.pos | pairs.neg
    own_class = pairs.labels[:, None] == classes[None, :]  # m x C
    if center_softmax == "centers":
        relaxed, center_weight = _soft_max_over_centers(S, usable, center_class, len(classes), gamma)
        present = np.stack([usable[:, center_class == c].any(axis=1) for c in range(len(classes))], axis=1)
    else:
        grid = _center_grid(center_class, len(classes), pairs)
        relaxed, center_weight = _soft_max_over_classes(S, grid, gamma)
        present = np.ones((m, len(classes)), dtype=bool)
    z = la * (relaxed - margin * own_class)
    per_class = softmax_over_proxies(z, np.full(z.shape, float(la)), own_class & present, ~own_class & present)
    g = per_class.grad_sim  # dL/dS'
    if center_softmax == "centers":
        g_col = g[:, center_class]
        S_rel = relaxed[:, center_class]
        grad_sim = np.where(usable, g_col * center_weight * (1.0 + (S - S_rel) / gamma), 0.0)
    else:
        grad_sim = np.zeros((m, n))
        for k in range(grid.shape[1]):
            cols = grid[:, k]
            b, Sk = center_weight[:, cols], S[:, cols]
            common = np.sum(g * b * Sk, axis=1, keepdims=True) / gamma
            grad_sim[:, cols] = b * (g * (1.0 + Sk / gamma) - common)
    alive = per_class.pos_used.any(axis=1)
    return PairResult(
        loss=per_class.loss,
        per_anchor=per_class.per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos & alive[:, None],
        neg_used=pairs.neg & alive[:, None],
    )


def _soft_max_over_centers(S, usable, center_class, n_classes, gamma):
    """S'_ic and the center weights a_ij (zero where j is not usable)."""
    m, n = S.shape
    relaxed = np.zeros((m, n_classes))
    weight = np.zeros((m, n))
    for c in range(n_classes):
        cols = center_class == c
        _, a = masked_lse(S[:, cols] / gamma, usable[:, cols], add_one=False)
        weight[:, cols] = a
        relaxed[:, c] = np.sum(a * S[:, cols], axis=1)
    return relaxed, weight


def _center_grid(center_class, n_classes, pairs) -> np.ndarray:
    """grid[c, k] = column of the k-th center of class c (ref order); RDML's rule needs a full grid."""
    counts = np.bincount(center_class, minlength=n_classes)
    if np.any(counts != counts[0]):
        raise GpwrefError("ref_labels", "soft_triple center_softmax='classes' (RDML) needs the same number of centers in every class", f"counts {counts.tolist()}")
    if pairs.self_pair.any():
        raise GpwrefError("ref_self", "soft_triple center_softmax='classes' (RDML) takes a softmax across classes; self pairs cannot be left out of it")
    return np.stack([np.nonzero(center_class == c)[0] for c in range(n_classes)])


def _soft_max_over_classes(S, grid, gamma):
    """RDML: for each center index k a softmax over the classes; S'_ic = sum_k b_ick S_ick."""
    m = S.shape[0]
    n_classes, per_class = grid.shape
    relaxed = np.zeros((m, n_classes))
    weight = np.zeros(S.shape)
    every = np.ones((m, n_classes), dtype=bool)
    for k in range(per_class):
        cols = grid[:, k]
        _, b = masked_lse(S[:, cols] / gamma, every, add_one=False)
        weight[:, cols] = b
        relaxed += b * S[:, cols]
    return relaxed, weight


ENTRY = LossEntry(
    name="soft_triple",
    function=value_and_grad,
    hyper={"la": number(above=0), "gamma": number(above=0), "margin": number(), "center_softmax": one_of("centers", "classes")},
    defaults={
        "paper": {"la": 20.0, "gamma": 0.1, "margin": 0.01, "center_softmax": "centers"},
        "pml": {"la": 20.0, "gamma": 0.1, "margin": 0.01, "center_softmax": "centers"},
    },
    reference="Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without Triplet Sampling. ICCV 2019",
    similarities=("self", "negative-relative"),
    gpw_sign=False,
    supports_ref=True,
    variants=({}, {"center_softmax": "classes", "gamma": 10.0, "la": 8.0}),
    limits="sample-to-proxy: ref IS the centers (ref_labels = their classes) and is required; a center far below its "
    "class's soft maximum gets a weight of the opposite sign; center_softmax='classes' needs equal centers per class",
    family="proxy",
    counterparts={"pytorch-metric-learning": "SoftTripleLoss"},
)
