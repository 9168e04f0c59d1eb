r"""Paired-embedding domain-transfer loss: pull each sample onto its paired embedding in the other domain.

Based on cross-modal distillation / supervision transfer (Gupta, Hoffman, Malik, "Cross Modal
Distillation for Supervision Transfer", CVPR 2016): a network for a new domain (depth, say) is
trained so that its embedding of every sample matches the embedding that a network of a labelled
domain (RGB) gives to the PAIRED sample (the same scene seen in both domains), with a squared L2
loss. Framed on pair similarities: the batch holds domain-B embeddings (rows), the reference set
``ref`` the domain-A embeddings (columns), and labels are pair ids, so the positives (i, j) are the
paired samples. On unit rows ||u_i - v_j||^2 = 2 - 2 S_ij, and::

    L = (1/|P|) sum_{(i, j) in P} (2 - 2 S_ij)
        + [margin is not None] (1/|N|) sum_{(i, j) in N} [S_ij - margin]_+

(a term whose set is empty is 0). The second term is optional and off by default: it is the
push term that cross-domain retrieval variants add (Hadsell-style hinge on unpaired cross-domain
pairs); Gupta et al. use the pull term only, since the domain-A network is fixed and collapse is
not possible there.

GPW weights: G_ij = -2/|P| on every paired (positive) pair (constant pull, as for the contrastive
loss's positives); with a margin, G_ij = +1/|N| on unpaired pairs with S_ij > margin, 0 on or below
it (relu'(0) = 0). Fits the GPW frame with self-similarity only.

Assumptions, said plainly: unit embeddings (``normalize=True``, the default): Gupta et al. match raw
mid-level features, and ||u - v||^2 of raw rows needs the norms, which S does not hold, so the raw
version is not a loss of S; reduction = mean over pairs; several rows may share a pair id (every
same-id pair counts); the batch may be its own reference set (both domains stacked in one batch,
label = pair id); a fixed teacher is a caller's choice (gpwref returns dL/dref as well).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number, optional
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, margin: float | None) -> PairResult:
    n_pos = int(pairs.pos.sum())
    pull = np.where(pairs.pos, 2.0 - 2.0 * S, 0.0) / max(n_pos, 1)
    grad_sim = np.where(pairs.pos, -2.0 / max(n_pos, 1), 0.0)
    neg_used = np.zeros_like(pairs.neg)
    push = np.zeros_like(S)
    if margin is not None:
        n_neg = int(pairs.neg.sum())
        over = S - margin
        neg_used = pairs.neg & (over > 0)
        push = np.where(neg_used, over, 0.0) / max(n_neg, 1)
        grad_sim = grad_sim + np.where(neg_used, 1.0 / max(n_neg, 1), 0.0)
    per_anchor = pull.sum(axis=1) + push.sum(axis=1)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos.copy(),
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="paired_domain_transfer",
    function=value_and_grad,
    hyper={"margin": optional(number(), "pull only")},
    defaults={"paper": {"margin": None}},
    reference="Gupta, Hoffman, Malik. Cross Modal Distillation for Supervision Transfer. CVPR 2016 (paired-embedding L2 transfer, on unit rows)",
    similarities=("self",),
    variants=({}, {"margin": 0.3}),
    limits="unit rows: the raw-feature L2 of the paper is not a function of S; labels are pair ids",
    family="pair",
)
