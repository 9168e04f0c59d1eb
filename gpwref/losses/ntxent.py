r"""NT-Xent / InfoNCE over labelled pairs: Oord, Li, Vinyals 2018; Chen, Kornblith, Norouzi, Hinton 2020.

One term per ordered positive pair (i, p), temperature ``tau``, averaged over the K positive pairs::

    l_ip = -log( exp(S_ip/tau) / sum_{a in D_ip} exp(S_ia/tau) ),      L = (1/K) sum_{(i,p)} l_ip

``denominator`` says what D_ip is:
* "all": every item but the anchor itself, A_i = P_i u N_i (SimCLR's sum over k != i; with more
  than two views of a class the anchor's other positives are in the denominator);
* "positive_and_negatives": {p} u N_i, the pair's own positive and the anchor's negatives only
  (PML ``losses/ntxent_loss.py:26-28``; docs/losses.md#ntxent). Then
  l_ip = softplus(log sum_{N_i} exp(S_in/tau) - S_ip/tau), 0 when N_i is empty.
No positive pair at all gives L = 0.

GPW weights, with pi the softmax over D_ip::

    "positive_and_negatives":  G_ip = -(1/(K tau)) (1 - pi^{ip}_p)          (<= 0)
                               G_in = +(1/(K tau)) sum_{p in P_i} pi^{ip}_n  (>= 0)
    "all":                     G_ia = (1/(K tau)) (|P_i| pi_ia - [a in P_i])

so with "all" a positive whose share pi_ia exceeds 1/|P_i| gets a POSITIVE weight (pushed away):
that form obeys GPW's sign rule only when every anchor has a single positive (SimCLR's two views).
Up to the normalisation (1/K instead of 1/|P_i| per anchor) "all" is SupCon's L_out.

``require_both_kinds``: PML returns 0 unless the batch holds at least one positive pair and one
negative pair (``ntxent_loss.py:17``). PML's GenericPairLoss rule ``zero_if_at_most_one_pair``
applies under the pml profile. PML computes log(num/den + finfo.tiny): that differs from the exact
value only when a pair's softmax share is below 2.2e-308 (temperatures below about 0.003), which
gpwref does not model.

Similarities used: self and negative-relative (a softmax over the anchor's row); no mining.
Stable: log-sum-exp with the maximum taken out, softplus and sigmoid without overflow.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number, one_of
from ..pairs import PairResult, Pairs, masked_lse, anchors_with_positives
from ..profiles import Profile
from .circle import sigmoid, softplus


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    temperature: float,
    denominator: str,
    require_both_kinds: bool,
) -> PairResult:
    pos_used, neg_used = anchors_with_positives(pairs, profile, require_both_kinds)
    alive = pos_used.any(axis=1)  # every kept anchor has a positive
    n_pairs = int(pos_used.sum())
    scale = 1.0 / n_pairs if n_pairs else 0.0
    per_pos = pos_used.sum(axis=1)
    z = S / temperature

    if denominator == "all":
        lse, share = masked_lse(z, pos_used | neg_used, add_one=False)
        per_row = np.where(alive, per_pos * np.where(alive, lse, 0.0) - np.where(pos_used, z, 0.0).sum(axis=1), 0.0)
        grad_sim = (scale / temperature) * (per_pos[:, None] * share - pos_used)
    else:  # "positive_and_negatives"
        lse_neg, share_neg = masked_lse(z, neg_used, add_one=False)
        with np.errstate(invalid="ignore"):
            gap = np.where(pos_used, lse_neg[:, None] - z, -np.inf)  # log(sum_N e) - z_ip
        per_row = softplus(gap).sum(axis=1)
        pull = sigmoid(gap)  # 1 - pi^{ip}_p, 0 off the positives and when N_i is empty
        grad_sim = (scale / temperature) * (pull.sum(axis=1)[:, None] * share_neg - pull)
    per_anchor = scale * per_row
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="ntxent",
    function=value_and_grad,
    hyper={
        "temperature": number(above=0),
        "denominator": one_of("all", "positive_and_negatives"),
        "require_both_kinds": boolean(),
    },
    defaults={
        "paper": {"temperature": 0.1, "denominator": "all", "require_both_kinds": False},
        "pml": {"temperature": 0.07, "denominator": "positive_and_negatives", "require_both_kinds": True},
    },
    reference="Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. arXiv 2018; "
    "Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual Representations. ICML 2020",
    similarities=("self", "negative-relative"),
    gpw_sign=False,
    variants=({}, {"denominator": "positive_and_negatives"}, {"denominator": "all"}),
    limits="denominator='all' is not GPW-signed when an anchor has several positives; PML's + finfo.tiny "
    "inside the log is not modelled (it matters only for softmax shares below 2.2e-308)",
    counterparts={"pytorch-metric-learning": "NTXentLoss"},
)
