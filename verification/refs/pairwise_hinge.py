"""Second opinions on the pairwise hinge (RankSVM) loss: torch triple tensor, plain loop, PML.

Written from the formula (docs/losses.md#pairwise_hinge) without calling gpwref's code.
"""

from __future__ import annotations

import torch

from .ranknet import loop_triples, pml_triplet, torch_triples
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, margin, reduction):
    return torch_triples(S, pos, neg, lambda gap: torch.relu(gap + margin), reduction)


def loop(S, pos, neg, profile, *, margin, reduction):
    # weight of a triple: 1 while it violates the margin, 0 on or inside it (relu'(0) = 0)
    return loop_triples(S, pos, neg, lambda g: max(g + margin, 0.0), lambda g: 1.0 if g + margin > 0 else 0.0, reduction)


def pml(X, labels, R, ref_labels, ref_self, normalize, *, margin, reduction):
    """TripletMarginLoss(margin) with a similarity distance: relu(S_an - S_ap + margin) over all triplets."""
    return pml_triplet(X, labels, R, ref_labels, ref_self, normalize, scale=1.0, margin=margin, smooth=False, reduction=reduction)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={
        "pml": {"pytorch-metric-learning TripletMarginLoss": pml},
        "paper": {"pytorch-metric-learning TripletMarginLoss": pml},
    },
)
