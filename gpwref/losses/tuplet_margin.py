r"""Tuplet margin loss, Yu and Tao, ICCV 2019.

One term per ordered positive pair (a, p), with the angle theta_ap = arccos(S_ap), a margin beta
(``margin_deg``, in degrees as PML takes it) and scale s::

    c_ap = cos(theta_ap - beta) = S_ap cos(beta) + sqrt(1 - S_ap^2) sin(beta)
    l_ap = log(1 + sum_{n in N_a} exp(s (S_an - c_ap))),        L = (1/K) sum_{(a,p)} l_ap

over the K ordered positive pairs (an anchor without negatives gives l_ap = 0, still counted in K;
PML ``losses/tuplet_margin_loss.py:27-41``, MeanReducer over positive pairs). No positive pair gives
L = 0. ``require_both_kinds``: PML returns 0 unless the batch holds a positive and a negative pair
(line 27); PML's GenericPairLoss rule ``zero_if_at_most_one_pair`` applies under the pml profile.

GPW weights, with pi_an = exp(s (S_an - c_ap)) / (1 + sum_{k in N_a} exp(s (S_ak - c_ap)))::

    G_an = +(s/K) sum_{p in P_a} pi^{(ap)}_n                                   (>= 0)
    G_ap = -(s/K) (sum_n pi^{(ap)}_n) (cos(beta) - S_ap sin(beta) / sqrt(1 - S_ap^2))
         = -(s/K) (sum_n pi^{(ap)}_n) sin(theta_ap - beta) / sin(theta_ap)

The loss pulls a positive pair towards the angle beta, not towards 0: when theta_ap < beta
(S_ap > cos(beta), 0.995 for 5.73 degrees) the positive weight is POSITIVE (the pair is pushed apart),
so the loss obeys GPW's sign rule only for positives with theta_ap >= beta.

Edge rule (docs/losses.md#tuplet_margin): arccos has an infinite slope at S = +-1 and is undefined
beyond (PML applies torch.acos without clamping and returns inf/NaN there). A positive pair with
2 - 2|S_ap| <= 1e-12 (the library's duplicate threshold, see gpwref/losses/contrastive.py; this
includes every |S_ap| >= 1, from rounding or from ``normalize=False``) takes theta_ap = 0 (or pi) and carries no gradient.
Close to that edge the weight grows like 1/sqrt(1 - S_ap^2): ill-conditioned but finite.
Similarities used: self (S_ap through theta_ap, S_an) and negative-relative (the softmax over the
anchor's negatives); no mining. Stable: log(1 + sum exp) with the maximum taken out.
"""

from __future__ import annotations

import math

import numpy as np

from ..entry import LossEntry, boolean, number
from ..pairs import PairResult, Pairs, masked_lse, anchors_with_positives
from ..profiles import Profile
from ..rules import duplicate_cutoff
from .contrastive import DUPLICATE_SQ_DISTANCE


def margin_cosine(S: np.ndarray, margin_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """c = cos(arccos(S) - beta) and dc/dS, with the edge rule (|S| at 1: theta = 0 or pi, slope 0)."""
    edge = 2.0 - 2.0 * np.abs(S) <= duplicate_cutoff(S.dtype, DUPLICATE_SQ_DISTANCE)  # float32 S: its own cut-off
    clipped = np.where(edge, np.sign(S), np.clip(S, -1.0, 1.0))
    sine = np.sqrt(np.maximum((1.0 - clipped) * (1.0 + clipped), 0.0))  # sin(theta) >= 0
    c = clipped * math.cos(margin_rad) + sine * math.sin(margin_rad)
    slope = np.where(edge, 0.0, math.cos(margin_rad) - clipped * math.sin(margin_rad) / np.where(edge, 1.0, sine))
    return c, slope


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, margin_deg: float, scale: float, require_both_kinds: bool) -> PairResult:
    pos_used, neg_used = anchors_with_positives(pairs, profile, require_both_kinds)
    K = int(pos_used.sum())
    inv_K = 1.0 / K if K else 0.0
    c, dc = margin_cosine(S, math.radians(margin_deg))

    rows, cols = S.shape
    per_anchor = np.zeros(rows)
    grad_sim = np.zeros((rows, cols))
    for a in np.nonzero(pos_used.any(axis=1) & neg_used.any(axis=1))[0]:
        # one softmax row per positive p of anchor a: logits s (S_an - c_ap) over the negatives
        positives = np.nonzero(pos_used[a])[0]
        logits = scale * (S[a][None, :] - c[a, positives][:, None])
        mask = np.broadcast_to(neg_used[a], logits.shape)
        lse, share = masked_lse(logits, mask, add_one=True)
        per_anchor[a] = inv_K * lse.sum()
        grad_sim[a] += (scale * inv_K) * share.sum(axis=0)
        grad_sim[a, positives] = -(scale * inv_K) * share.sum(axis=1) * dc[a, positives]
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="tuplet_margin",
    function=value_and_grad,
    hyper={
        "margin_deg": number(),
        "scale": number(above=0),
        "require_both_kinds": boolean(),
    },
    defaults={
        "paper": {"margin_deg": 5.73, "scale": 64.0, "require_both_kinds": False},
        "pml": {"margin_deg": 5.73, "scale": 64.0, "require_both_kinds": True},
    },
    reference="Yu, Tao. Deep Metric Learning with Tuplet Margin Loss. ICCV 2019",
    similarities=("self", "negative-relative"),
    gpw_sign=False,
    variants=({}, {"margin_deg": 10.0, "scale": 16.0}),
    limits="not GPW-signed: a positive pair closer than the margin angle (S > cos(margin)) gets a positive "
    "weight; positive pairs with |S| within 5e-13 of 1 (or beyond) take theta = 0 or pi with no gradient "
    "(arccos's slope is infinite there; PML returns inf/NaN)",
    counterparts={"pytorch-metric-learning": "TupletMarginLoss"},
)
