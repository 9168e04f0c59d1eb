r"""Bayesian personalised ranking (BPR) loss, Rendle, Freudenthaler, Gantner, Schmidt-Thieme, UAI 2009.

BPR-Opt maximises sum_{(u, i, j) in D_S} ln sigmoid(x_ui - x_uj) - lambda ||Theta||^2 over triples of a
user u, an item i the user interacted with and an item j they did not. Framed on a similarity (score)
matrix: the user is the anchor (row) u, x_ui = S_ui, the interacted items are its positives P_u and
the others its negatives N_u::

    L = (1/Z) sum_u sum_{i in P_u} sum_{j in N_u} -ln sigmoid(S_ui - S_uj)
      = (1/Z) sum_u sum_{i in P_u} sum_{j in N_u} softplus(S_uj - S_ui)

``reduction``: ``"sum"`` (paper profile: BPR-Opt is a sum over D_S, Z = 1), ``"mean"`` (Z = number of
triples, as most mini-batch BPR code averages), ``"mean_nonzero"`` (Z = triples with a term > 0).

GPW weights::

    G_ui = -(1/Z) sum_{j in N_u} sigmoid(S_uj - S_ui),    G_uj = +(1/Z) sum_{i in P_u} sigmoid(S_uj - S_ui)

i.e. RankNet with sigma = 1 (docs/losses.md#bpr): positive-relative similarity only; fits the GPW frame.

Assumptions, said plainly:
* the regulariser lambda ||Theta||^2 acts on the model parameters (weight decay), not on pair
  similarities, so it is not part of this pair loss;
* BPR's scores are raw inner products of user and item factors (matrix factorisation): call
  ``compute(..., normalize=False)`` with users as the batch and items as the reference set
  (``ref=``, ``ref_labels``); ``normalize=True`` gives the cosine variant;
* D_S holds every (u, i, j) of the batch, not a uniform sample of it (LearnBPR's bootstrap sampling
  is an optimiser detail: its expectation is the "mean" reduction).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, one_of
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from . import ranknet


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, reduction: str) -> PairResult:
    return ranknet.value_and_grad(S, pairs, profile, sigma=1.0, reduction=reduction)


ENTRY = LossEntry(
    name="bpr",
    function=value_and_grad,
    hyper={"reduction": one_of("sum", "mean", "mean_nonzero")},
    defaults={"paper": {"reduction": "sum"}},
    reference="Rendle, Freudenthaler, Gantner, Schmidt-Thieme. BPR: Bayesian Personalized Ranking from Implicit Feedback. UAI 2009",
    similarities=("positive-relative",),
    variants=({}, {"reduction": "mean"}),
    limits="the L2 regulariser of BPR-Opt acts on model parameters and is not part of the pair loss",
    family="ranking",
    counterparts={"pytorch-metric-learning": "TripletMarginLoss(smooth_loss=True)"},
)
