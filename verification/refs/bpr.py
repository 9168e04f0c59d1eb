"""Second opinions on BPR: torch triple tensor with log-sigmoid, a plain loop, and PML re-expressing it.

Written from the formula (Rendle et al. 2009; docs/losses.md#bpr) without calling gpwref's code.
"""

from __future__ import annotations

import math

import torch

from .ranknet import loop_triples, pml_triplet, torch_triples
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, reduction):
    # -ln sigmoid(S_ui - S_uj), written with torch's logsigmoid (not softplus, as gpwref and ranknet are)
    return torch_triples(S, pos, neg, lambda gap: -torch.nn.functional.logsigmoid(-gap), reduction)


def _minus_log_sigmoid(x: float) -> float:
    # -ln sigmoid(x) = ln(1 + e^-x), stable on both sides
    return -x + math.log1p(math.exp(x)) if x < -30 else math.log1p(math.exp(-x))


def _weight(gap: float) -> float:
    # d/dgap of -ln sigmoid(-gap) = 1 - sigmoid(-gap) = 1 / (1 + e^-gap)
    return 1.0 / (1.0 + math.exp(-gap)) if gap > -700 else 0.0


def loop(S, pos, neg, profile, *, reduction):
    return loop_triples(S, pos, neg, lambda g: _minus_log_sigmoid(-g), _weight, reduction)


def pml(X, labels, R, ref_labels, ref_self, normalize, *, reduction):
    """TripletMarginLoss(margin=0, smooth_loss=True) with SumReducer (or Mean/AvgNonZero): BPR-Opt."""
    return pml_triplet(X, labels, R, ref_labels, ref_self, normalize, scale=1.0, margin=0.0, smooth=True, reduction=reduction)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"paper": {"pytorch-metric-learning TripletMarginLoss(smooth_loss=True)": pml}},
)
