r"""Supervised contrastive loss (SupCon, "L_out"), Khosla et al., NeurIPS 2020.

For anchor i with positives P_i, the set A_i = P_i u N_i of every other item (all columns but the
self pair) and temperature ``tau``::

    l_i = -(1/|P_i|) sum_{p in P_i} log( exp(S_ip/tau) / sum_{a in A_i} exp(S_ia/tau) )
        = log sum_{a in A_i} exp(S_ia/tau) - (1/|P_i|) sum_{p in P_i} S_ip/tau

An anchor with no positive has l_i = 0 (the paper assumes every anchor has one; the official code
returns NaN there, PML 0). ``base_temperature``: None, or b to multiply every l_i by tau/b (the
official code's final factor; b = tau = 0.07 there, so the factor is 1 by default).
``reduction``: "sum" L = sum_i l_i (the paper's Eq. for L_out^sup); "mean" L = (1/m) sum_i l_i
(official code: mean over all anchors); "avg_nonzero" L = sum_i l_i / #{i : l_i > 0} (PML).

``log_eps``: 0, or the official code's 1e-9 added inside the log AFTER the row maximum M_i (over
every column, the self similarity included) was subtracted with no gradient::

    log sum_{a in A_i} exp(S_ia/tau)  ->  M_i/tau + log( sum_{a in A_i} exp((S_ia - M_i)/tau) + log_eps )

This changes the value by O(log_eps / sum exp((S_ia - M_i)/tau)): negligible unless every other item
of the row is far below the self similarity (for tau = 0.07, S_ia < -0.45 for every a != i when
S_ii = 1), where the 1e-9 dominates the sum.

GPW weights (M_i detached, as the code does; c = the reduction's factor times tau/b)::

    pi_ia = exp((S_ia - M_i)/tau) / ( sum_{k in A_i} exp((S_ik - M_i)/tau) + log_eps )
    G_ia  = (c/tau) (pi_ia - 1/|P_i|)   a in P_i
    G_ia  = (c/tau)  pi_ia              a in N_i   (>= 0)

A positive whose share pi_ia exceeds 1/|P_i| gets a POSITIVE weight (it is pushed away): SupCon
does not obey GPW's sign rule on positives (only when |P_i| = 1 is pi_ip <= 1 = 1/|P_i| assured).

``require_both_kinds``: PML returns 0 unless the batch holds at least one positive pair and one
negative pair (``losses/supcon_loss.py:16``); with it off a one-class batch still has a loss.
PML's GenericPairLoss rule (``zero_if_at_most_one_pair``) applies under the pml profile.

Similarities used: self and negative-relative (a softmax over the anchor's whole row); no mining.
Stable: the log-sum-exp takes its own maximum out; ``log_eps`` enters through logaddexp.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number, one_of, optional
from ..pairs import PairResult, Pairs, masked_lse, anchors_with_positives
from ..profiles import Profile


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    temperature: float,
    base_temperature: float | None,
    reduction: str,
    log_eps: float,
    require_both_kinds: bool,
) -> PairResult:
    rows = S.shape[0]
    pos_used, neg_used = anchors_with_positives(pairs, profile, require_both_kinds)
    alive = pos_used.any(axis=1)  # every kept anchor has a positive
    others = pos_used | neg_used

    z = S / temperature
    lse, share = masked_lse(z, others, add_one=False)
    if log_eps > 0:
        top = S.max(axis=1) / temperature  # the detached row maximum, self pair included
        shifted = np.where(alive, lse - top, 0.0)
        denominator = np.where(alive, top + np.logaddexp(shifted, np.log(log_eps)), 0.0)
        share = share * np.where(alive, np.exp(shifted - np.logaddexp(shifted, np.log(log_eps))), 0.0)[:, None]
    else:
        denominator = np.where(alive, lse, 0.0)
    count = pos_used.sum(axis=1)
    safe_count = np.maximum(count, 1)
    mean_pos = np.where(pos_used, z, 0.0).sum(axis=1) / safe_count
    per_row = np.where(alive, denominator - mean_pos, 0.0)
    factor = 1.0 if base_temperature is None else temperature / base_temperature
    per_row = factor * per_row

    if reduction == "sum":
        scale = 1.0
    elif reduction == "mean":
        scale = 1.0 / rows
    else:  # "avg_nonzero"
        nonzero = int(np.count_nonzero(per_row > 0))
        scale = 1.0 / nonzero if nonzero else 0.0

    grad_sim = (scale * factor / temperature) * (share - pos_used / safe_count[:, None])
    per_anchor = scale * per_row
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="supcon",
    function=value_and_grad,
    hyper={
        "temperature": number(above=0),
        "base_temperature": optional(number(above=0), "no factor"),
        "reduction": one_of("sum", "mean", "avg_nonzero"),
        "log_eps": number(at_least=0),
        "require_both_kinds": boolean(),
    },
    defaults={
        "paper": {"temperature": 0.1, "base_temperature": None, "reduction": "sum", "log_eps": 0.0, "require_both_kinds": False},
        "pml": {"temperature": 0.1, "base_temperature": None, "reduction": "avg_nonzero", "log_eps": 0.0, "require_both_kinds": True},
    },
    reference="Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan. Supervised Contrastive "
    "Learning. NeurIPS 2020",
    similarities=("self", "negative-relative"),
    gpw_sign=False,
    variants=(
        {},
        {"temperature": 0.1, "base_temperature": 0.07, "reduction": "mean", "log_eps": 1e-9},
        {"reduction": "mean"},
    ),
    limits="not GPW-signed: a positive whose softmax share exceeds 1/|P_i| gets a positive weight; "
    "log_eps > 0 (official code) makes G the gradient with the row maximum detached",
    counterparts={"pytorch-metric-learning": "SupConLoss", "SupContrast (official)": "SupConLoss (losses.py)"},
)
