r"""Circle loss (pair-label form), Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei, CVPR 2020.

For anchor i with positives P_i and negatives N_i, relaxation ``m`` and scale ``gamma``::

    a_ij = [1 + m - S_ij]_+      z_ij = -gamma a_ij (S_ij - (1 - m))      j in P_i
    a_ij = [S_ij + m]_+          z_ij = +gamma a_ij (S_ij - m)            j in N_i
    A_i  = log sum_{P_i} exp z,  B_i = log sum_{N_i} exp z,   l_i = softplus(A_i + B_i)

An anchor with no positive or no negative has l_i = 0 (an empty sum: softplus(-inf) = 0).
``reduction``: "mean" L = (1/m) sum_i l_i (the paper's per-sample loss averaged over the batch;
fast-reid ``pairwise_circleloss``); "avg_nonzero" L = sum_i l_i / #{i : l_i > 0} (PML's
AvgNonZeroReducer, ``losses/circle_loss.py:83-84``; 0 when no l_i > 0).

GPW weights. Every implementation found computes the factors a_ij on a detached copy of S
(``detach_factors=True``), so the gradient the training code applies is, with c the reduction's
factor (1/m or 1/#nonzero) and sigma the logistic function::

    G_ij = -c gamma a_ij sigma(A_i + B_i) exp(z_ij - A_i)     j in P_i   (<= 0)
    G_ij = +c gamma a_ij sigma(A_i + B_i) exp(z_ij - B_i)     j in N_i   (>= 0)

This G is NOT the derivative of the value: it is the derivative with the factors a_ij frozen at the
current S (verification/refs/circle.py checks it against finite differences of that frozen
function). A negative with S_ij <= -m has a_ij = 0: zero weight, yet it stays in B_i with
exp(0) = 1. ``detach_factors=False`` gives the exact derivative of the value instead:
dz/dS = 2 gamma (S_ij - 1) on positives (while S_ij < 1 + m) and 2 gamma S_ij on negatives (while
S_ij > -m), so a negative with -m < S_ij < 0 gets a NEGATIVE weight: the undetached loss does not
obey GPW's sign rule, which is one reason the codes detach.

``softplus_threshold``: None evaluates softplus exactly; a number t makes softplus(x) = x for x > t
(torch.nn.Softplus(beta=1, threshold=20), used by PML and fast-reid): the value then differs by
log1p(exp(-x)) < 2.1e-9 and the weights by the factor sigma(x) vs 1.
Under PML's ``zero_if_at_most_one_pair`` rule a batch with at most one positive pair and at most one
negative pair has loss 0.

Similarities used: self (S_ij through a_ij and z_ij) and negative-relative (the softmax over the
anchor's positives and over its negatives, coupled through sigma(A_i + B_i)); no mining.
Stable for any finite S and gamma: log-sum-exp with the maximum taken out, softplus and sigma
evaluated without overflow.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number, one_of, optional
from ..pairs import PairResult, Pairs, masked_lse, zero_by_pair_count
from ..profiles import Profile


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) for any real x (-inf gives 0), without overflow."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isneginf(x), 0.0, np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x))))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) for any real x (-inf gives 0), without overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    m: float,
    gamma: float,
    reduction: str,
    detach_factors: bool,
    softplus_threshold: float | None,
) -> PairResult:
    rows = S.shape[0]
    pos, neg = pairs.pos, pairs.neg
    both = pos.any(axis=1) & neg.any(axis=1)
    if zero_by_pair_count(profile, pos, neg):
        both = np.zeros_like(both)
    pos_used = pos & both[:, None]
    neg_used = neg & both[:, None]

    factor_pos = np.maximum(1.0 + m - S, 0.0)
    factor_neg = np.maximum(S + m, 0.0)
    z = np.where(pos_used, -gamma * factor_pos * (S - (1.0 - m)), gamma * factor_neg * (S - m))
    A, soft_pos = masked_lse(z, pos_used, add_one=False)
    B, soft_neg = masked_lse(z, neg_used, add_one=False)
    x = np.where(both, A + B, -np.inf)
    if softplus_threshold is None:
        per_row = softplus(x)
        slope = sigmoid(x)
    else:
        linear = x > softplus_threshold
        per_row = np.where(linear, x, softplus(x))
        slope = np.where(linear, 1.0, sigmoid(x))

    if reduction == "mean":
        scale = 1.0 / rows
    else:  # "avg_nonzero"
        nonzero = int(np.count_nonzero(per_row > 0))
        scale = 1.0 / nonzero if nonzero else 0.0

    if detach_factors:
        dz_pos = -gamma * factor_pos
        dz_neg = gamma * factor_neg
    else:
        dz_pos = np.where(1.0 + m - S > 0, 2.0 * gamma * (S - 1.0), 0.0)
        dz_neg = np.where(S + m > 0, 2.0 * gamma * S, 0.0)
    grad_sim = scale * slope[:, None] * (soft_pos * dz_pos + soft_neg * dz_neg)
    per_anchor = scale * per_row
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="circle",
    function=value_and_grad,
    hyper={
        "m": number(at_least=0),
        "gamma": number(above=0),
        "reduction": one_of("mean", "avg_nonzero"),
        "detach_factors": boolean(),
        "softplus_threshold": optional(number(), "exact softplus"),
    },
    defaults={
        "paper": {"m": 0.4, "gamma": 80.0, "reduction": "mean", "detach_factors": True, "softplus_threshold": None},
        "pml": {"m": 0.4, "gamma": 80.0, "reduction": "avg_nonzero", "detach_factors": True, "softplus_threshold": 20.0},
    },
    reference="Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. Circle Loss: A Unified Perspective of Pair Similarity "
    "Optimization. CVPR 2020",
    similarities=("self", "negative-relative"),
    variants=({}, {"reduction": "mean", "softplus_threshold": 20.0}, {"m": 0.25, "gamma": 128.0}),
    limits="G is the published gradient with the factors a_ij detached (not the derivative of the value; "
    "detach_factors=False gives that, and it breaks the GPW sign rule); TinyZeaMays' batch-pooled single "
    "term is not modelled",
    counterparts={"pytorch-metric-learning": "CircleLoss", "fast-reid": "pairwise_circleloss (fastreid/modeling/losses/circle_loss.py)"},
)
