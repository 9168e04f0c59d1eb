r"""Neighbourhood components analysis (NCA), Goldberger, Roweis, Hinton, Salakhutdinov, NIPS 2004.

Stochastic neighbours on squared unit-sphere distances d2_ij = 2 - 2 S_ij, scale s
(``softmax_scale``). For anchor i, over every other item A_i = P_i u N_i::

    p_ij = exp(-s d2_ij) / sum_{k in A_i} exp(-s d2_ik) = softmax_{A_i}(2 s S_i.)_j,    q_i = sum_{j in P_i} p_ij

``objective``:
* "log": L = -(1/M) sum_{i : P_i non-empty} log q_i, M the number of such anchors (PML
  ``losses/nca_loss.py:41-44`` with its MeanReducer; the paper's log variant). log q_i is evaluated
  as lse_{P_i} - lse_{A_i}, so it never underflows; PML computes q_i itself and drops an anchor
  whose q_i underflows to exactly 0 (only when s (d2 gap) > ~745, i.e. s > ~186), which gpwref
  does not model.
* "expected": L = -(1/m) sum_i q_i, the paper's objective (the expected number of correctly
  classified points, maximised), averaged over all m anchors; an anchor without positives has q_i = 0.

GPW weights (r_ij = p_ij / q_i, the softmax over P_i alone)::

    "log":       G_ij = (2s/M) (p_ij - r_ij)   j in P_i   (<= 0, since r_ij >= p_ij)
                 G_ij = (2s/M)  p_ij           j in N_i   (>= 0)
    "expected":  G_ij = -(2s/m) p_ij (1 - q_i) j in P_i   (<= 0)
                 G_ij = +(2s/m) p_ij q_i       j in N_i   (>= 0)

No anchor with a positive gives L = 0 (PML returns NaN there: its MeanReducer averages an empty
tensor). ``zero_if_single_row``: PML returns 0 for a batch of one embedding (``nca_loss.py:19-20``) even
against a separate reference set, where the formula has a value.
Similarities used: self and negative-relative (a softmax over the anchor's row, positives and
negatives alike). No mining. Stable: both log-sum-exps take their maximum out.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number, one_of
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, softmax_scale: float, objective: str, zero_if_single_row: bool) -> PairResult:
    rows = S.shape[0]
    pos, neg = pairs.pos, pairs.neg
    alive = pos.any(axis=1)
    if zero_if_single_row and rows <= 1:
        alive = np.zeros_like(alive)
    pos_used = pos & alive[:, None]
    neg_used = neg & alive[:, None]
    logits = 2.0 * softmax_scale * S  # -s d2 up to the constant -2s, which the softmax ignores
    lse_all, p = masked_lse(logits, pos_used | neg_used, add_one=False)
    lse_pos, r = masked_lse(logits, pos_used, add_one=False)
    log_q = np.where(alive, lse_pos - np.where(alive, lse_all, 0.0), 0.0)

    if objective == "log":
        n_alive = int(alive.sum())
        scale = 1.0 / n_alive if n_alive else 0.0
        per_row = -log_q
        grad_sim = (2.0 * softmax_scale * scale) * (p - r)
    else:  # "expected"
        scale = 1.0 / rows
        q = np.where(alive, np.exp(log_q), 0.0)
        per_row = -q
        grad_sim = (2.0 * softmax_scale * scale) * p * (q[:, None] - pos_used)
    per_anchor = scale * np.where(alive, per_row, 0.0)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="nca",
    function=value_and_grad,
    hyper={
        "softmax_scale": number(above=0),
        "objective": one_of("log", "expected"),
        "zero_if_single_row": boolean(),
    },
    defaults={
        "paper": {"softmax_scale": 1.0, "objective": "expected", "zero_if_single_row": False},
        "pml": {"softmax_scale": 1.0, "objective": "log", "zero_if_single_row": True},
    },
    reference="Goldberger, Roweis, Hinton, Salakhutdinov. Neighbourhood Components Analysis. NIPS 2004",
    similarities=("self", "negative-relative"),
    variants=({}, {"objective": "log"}, {"softmax_scale": 16.0}),
    limits="PML drops an anchor whose q_i underflows to 0 (softmax_scale above ~186); gpwref keeps it "
    "(log q_i by log-sum-exp)",
    counterparts={"pytorch-metric-learning": "NCALoss"},
)
