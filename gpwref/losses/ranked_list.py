r"""Ranked list loss (RLL), Wang, Hua, Kodirov, Hu, Garnier, Robertson, CVPR 2019 (PML's form).

On unit-sphere distances D_ij = sqrt(2 - 2 S_ij), boundary ``alpha`` (None: 1 + margin/2, PML's
default) and ``margin``: anchor i's violating positives and negatives are

    P*_i = {j in P_i : D_ij > alpha - margin},    N*_i = {j in N_i : D_ij < alpha}     (strict)

with weights w_ij = exp(Tp (D_ij - (alpha - margin))) on P*, exp(Tn (alpha - D_ij)) on N*, and

    L_P,i = sum_{P*} w (D - (alpha - margin)) / (sum_{P*} w + n eps)
    L_N,i = sum_{N*} w (alpha - D)            / (sum_{N*} w + n eps)
    L     = (1/m) sum_i [ (1 - imbalance) L_P,i + imbalance L_N,i ]

(n = the number of columns of S, eps = ``denominator_eps``: PML adds 1e-5 to EVERY entry of the row,
``losses/ranked_list_loss.py:73-79``, docs/losses.md#ranked_list; an empty set gives 0). The paper
writes L_P + lambda L_N with L_P the plain mean over P* (Tp = 0): that is this form with
imbalance = lambda / (1 + lambda), times 1 + lambda [P: not re-checked against the PDF].

GPW weights. The weights w are live (not detached, as in PML), so with B = sum w + n eps and
v = D - (alpha - margin) (positives), u = alpha - D (negatives)::

    G_ij = -(1 - imbalance)/m * w_ij / (B^P_i D_ij) * (1 + Tp (v_ij - L_P,i))      j in P*_i
    G_ij = +imbalance/m       * w_ij / (B^N_i D_ij) * (1 + Tn (u_ij - L_N,i))      j in N*_i

With Tn > 0 a violating negative whose u_ij is below L_N,i - 1/Tn (the least violating ones, when the
spread of violations exceeds 1/Tn) gets a NEGATIVE weight (it is pulled closer): the live softmax
weighting does not obey GPW's sign rule; likewise positives when Tp > 0. With Tp = Tn = 0 it does.

Duplicates: a pair with 2 - 2S <= 1e-12 (the library's duplicate rule, gpwref/losses/contrastive.py)
has D = 0 and dD/dS = 0. ``count_zero_distance``: whether a pair at D = 0 can belong to P* or N* (PML
tests membership as ``distance > 0``, so its duplicated negatives are never violating; False there).
Similarities used: self (D_ij) and negative-relative (the normalisation over each anchor's violating
set); the sets themselves compare with constants, not with other pairs. Stable: the weights are
formed with the row maximum of the exponent taken out.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number, optional
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .margin import unit_distance


def _weighted_half(excess: np.ndarray, members: np.ndarray, temperature: float, guard: float):
    """Row-wise sum w e / (sum w + guard) with w = exp(temperature e) on members, and its parts.

    Returns (half loss per row, w / B per entry). The exponent's row maximum is taken out of both
    the weights and the guard.
    """
    logits = np.where(members, temperature * excess, -np.inf)
    top = np.max(logits, axis=1, initial=-np.inf)
    safe_top = np.where(np.isfinite(top), top, 0.0)
    w = np.where(members, np.exp(np.where(members, logits, 0.0) - safe_top[:, None]), 0.0)
    B = w.sum(axis=1) + guard * np.exp(-safe_top)
    share = np.divide(w, B[:, None], out=np.zeros_like(w), where=B[:, None] > 0)
    half = (share * np.where(members, excess, 0.0)).sum(axis=1)
    return half, share


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    margin: float,
    alpha: float | None,
    Tp: float,
    Tn: float,
    imbalance: float,
    denominator_eps: float,
    count_zero_distance: bool,
) -> PairResult:
    rows, cols = S.shape
    boundary = 1.0 + margin / 2.0 if alpha is None else alpha
    D, slope = unit_distance(S)
    nonzero = D > 0 if not count_zero_distance else np.ones_like(D, dtype=bool)
    pos_star = pairs.pos & (D > boundary - margin) & nonzero
    neg_star = pairs.neg & (D < boundary) & nonzero
    guard = cols * denominator_eps

    excess_pos = D - (boundary - margin)
    excess_neg = boundary - D
    loss_P, share_P = _weighted_half(excess_pos, pos_star, Tp, guard)
    loss_N, share_N = _weighted_half(excess_neg, neg_star, Tn, guard)

    per_anchor = ((1.0 - imbalance) * loss_P + imbalance * loss_N) / rows
    # d(half)/dD = +-share (1 + T (excess - half)); dD/dS = slope (= -1/D, 0 at D = 0)
    dP_dD = share_P * (1.0 + Tp * (excess_pos - loss_P[:, None]))
    dN_dD = -share_N * (1.0 + Tn * (excess_neg - loss_N[:, None]))
    grad_sim = ((1.0 - imbalance) * np.where(pos_star, dP_dD, 0.0) + imbalance * np.where(neg_star, dN_dD, 0.0)) * slope / rows
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_star,
        neg_used=neg_star,
    )


ENTRY = LossEntry(
    name="ranked_list",
    function=value_and_grad,
    hyper={
        "margin": number(at_least=0),
        "alpha": optional(number(), "1 + margin/2"),
        "Tp": number(at_least=0),
        "Tn": number(at_least=0),
        "imbalance": number(at_least=0, at_most=1, noun="a number"),
        "denominator_eps": number(at_least=0),
        "count_zero_distance": boolean(),
    },
    defaults={
        "paper": {"margin": 0.4, "alpha": None, "Tp": 0.0, "Tn": 10.0, "imbalance": 0.5,
                  "denominator_eps": 0.0, "count_zero_distance": True},
        "pml": {"margin": 0.4, "alpha": None, "Tp": 0.0, "Tn": 10.0, "imbalance": 0.5,
                "denominator_eps": 1e-5, "count_zero_distance": False},
    },
    reference="Wang, Hua, Kodirov, Hu, Garnier, Robertson. Ranked List Loss for Deep Metric Learning. CVPR 2019",
    similarities=("self", "negative-relative"),
    gpw_sign=False,
    variants=({}, {"Tp": 1.0, "Tn": 2.0, "alpha": 1.1}, {"Tn": 0.0}),
    limits="not GPW-signed for Tn > 0 (or Tp > 0): the live softmax weights give the least violating "
    "negatives a negative weight; PML has no margin/Tn defaults (the RLL paper's 0.4 and 10 are used) "
    "and no reference set",
    counterparts={"pytorch-metric-learning": "RankedListLoss"},
)
