r"""Pairwise likelihood loss of deep supervised hashing (DPSH), Li, Wang, Kang, IJCAI 2016.

With real-valued codes u_i (the network outputs before sign) and Theta_ij = (1/2) u_i . u_j, DPSH
maximises the likelihood of the pairwise labels s_ij (1: same class, 0: different) under
p(s_ij = 1) = sigmoid(Theta_ij). Framed on S = U U_ref^T (Theta = S/2)::

    L = (1/Z) sum_{(i, j) positive or negative} [ log(1 + exp(S_ij / 2)) - s_ij S_ij / 2 ]

``reduction``: ``"sum"`` (paper profile: the paper's L is a sum over all labelled pairs, Z = 1) or
``"mean"`` (Z = number of pairs, which is the released code's num_train x batch divisor when the
reference set is the whole memory bank and excludes the batch, docs/losses.md#dpsh).

GPW weights (d/dS of softplus(S/2) = sigmoid(S/2) / 2)::

    G_ij = (1/Z) (sigmoid(S_ij / 2) - 1) / 2    positive (pull, <= 0; shrinks as S_ij grows)
    G_ij = (1/Z)  sigmoid(S_ij / 2) / 2         negative (push, >= 0; grows with S_ij)

Fits the GPW frame; self-similarity only (each weight depends on S_ij alone, like binomial
deviance with scale 1/2 and no margin).

Natural use and assumptions:
* DPSH codes are raw outputs, not unit vectors: ``compute(..., normalize=False)`` is the paper's
  setting (with ``normalize=True``, |Theta| <= 1/2 and the likelihood can hardly move).
* The quantisation term eta sum_i ||b_i - u_i||^2 (b = sign(u)) depends on the codes themselves,
  not on pair similarities, so it is not part of this pair loss.
* Labels are single classes here: s_ij = 1 iff y_i == y_j (the released code uses multi-hot label
  vectors and "share any class").
* The self pair is never a pair (docs/conventions.md#notation). The released code keeps it: its memory bank is refreshed
  with the batch before Theta = batch x bank is formed, so each sample meets its own (detached) copy
  with s_ii = 1; gpwref models that only as "not applicable" (see verification/refs/dpsh.py).
Stable for any finite S: softplus is logaddexp(0, S/2), sigmoid is expit.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..entry import LossEntry, one_of
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, reduction: str) -> PairResult:
    theta = S / 2.0
    used = pairs.pos | pairs.neg
    target = pairs.pos.astype(np.float64)
    terms = np.where(used, np.logaddexp(0.0, theta) - target * theta, 0.0)
    Z = float(max(int(used.sum()), 1)) if reduction == "mean" else 1.0
    per_anchor = terms.sum(axis=1) / Z
    grad_sim = np.where(used, (expit(theta) - target) / 2.0, 0.0) / Z
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos.copy(),
        neg_used=pairs.neg.copy(),
    )


ENTRY = LossEntry(
    name="dpsh",
    function=value_and_grad,
    hyper={"reduction": one_of("sum", "mean")},
    defaults={"paper": {"reduction": "sum"}},
    reference="Li, Wang, Kang. Feature Learning based Deep Supervised Hashing with Pairwise Labels. IJCAI 2016",
    similarities=("self",),
    variants=({}, {"reduction": "mean"}),
    limits="raw codes (normalize=False) are the paper's setting; the quantisation term is not a pair term",
    family="pair",
    counterparts={"DPSH-pytorch (official)": "DPSH_CIFAR_10.py training loss"},
)
