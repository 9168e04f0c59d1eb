r"""Pairwise hinge (RankSVM) loss on each anchor's (positive, negative) pairs.

Herbrich, Graepel, Obermayer 2000 (ordinal regression / RankSVM) and Joachims 2002: a relevant item
p should outscore an irrelevant item n of the same query by a margin. With the anchor's similarities
as scores::

    l_ipn = [margin - (S_ip - S_in)]_+ = relu(S_in - S_ip + margin)

    L = (1/Z) sum_i sum_{p in P_i} sum_{n in N_i} l_ipn

``reduction``: ``"mean"`` (paper profile; Z = number of (i, p, n) triples), ``"mean_nonzero"`` (pml
profile; Z = number of violating triples, PML's AvgNonZeroReducer), ``"sum"`` (Z = 1); L = 0 when Z
would be 0.

GPW weights: every violating triple (l_ipn > 0) pulls its positive and pushes its negative by 1/Z::

    G_ip = -(1/Z) #{n in N_i : l_ipn > 0},     G_in = +(1/Z) #{p in P_i : l_ipn > 0}

Kink rule: a triple exactly on the hinge (S_in - S_ip + margin == 0) has weight 0 (torch's relu'(0)
= 0), and is not counted by "mean_nonzero". The gap is evaluated as (S_in - S_ip) + margin, in that
order, as PML does. Fits the GPW frame; weights use positive-relative similarity only (a pair counts
by how it compares with the pairs of the other kind); it is the similarity-form triplet loss with
every triplet, which is what pytorch-metric-learning's ``TripletMarginLoss`` with a similarity
distance computes (docs/losses.md#pairwise_hinge).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, one_of
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .ranknet import triples


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, margin: float, reduction: str) -> PairResult:
    return triples(
        S,
        pairs,
        term=lambda gap: np.maximum(gap + margin, 0.0),
        slope=lambda gap: (gap + margin > 0).astype(np.float64),
        reduction=reduction,
    )


ENTRY = LossEntry(
    name="pairwise_hinge",
    function=value_and_grad,
    hyper={"margin": number(at_least=0), "reduction": one_of("mean", "mean_nonzero", "sum")},
    defaults={
        "paper": {"margin": 1.0, "reduction": "mean"},
        "pml": {"margin": 0.05, "reduction": "mean_nonzero"},
    },
    reference="Herbrich, Graepel, Obermayer. Large Margin Rank Boundaries for Ordinal Regression. 2000; Joachims. Optimizing Search Engines using Clickthrough Data. KDD 2002",
    similarities=("positive-relative",),
    variants=({}, {"margin": 0.1}, {"margin": 0.1, "reduction": "mean_nonzero"}),
    boundary_param="margin",
    family="ranking",
    counterparts={"pytorch-metric-learning": "TripletMarginLoss"},
)
