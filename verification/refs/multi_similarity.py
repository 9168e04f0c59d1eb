"""Second opinions on the MS loss: torch formulation, plain loop, and the real implementations.

Every function here is written from the formulas (docs/losses.md#multi_similarity) without calling gpwref's
vectorised code, so that a mistake there shows up as a disagreement here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable, rules
from .contract import LossRefs


def torch_loss(S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, profile: str, *, alpha, beta, lam, eps) -> torch.Tensor:
    """Vectorised torch formulation; mining masks are computed on detached S (no gradient)."""
    r = rules(profile)
    m = S.shape[0]
    Sd = S.detach()
    if eps is None:
        keep_pos, keep_neg = pos.clone(), neg.clone()
    else:
        big = torch.tensor(float("inf"), dtype=S.dtype)
        min_pos = torch.where(pos, Sd, big).amin(dim=1, keepdim=True) if S.shape[1] else big
        max_neg = torch.where(neg, Sd, -big).amax(dim=1, keepdim=True) if S.shape[1] else -big
        if r.mining_compare == "shift_extreme":
            keep_neg = neg & (Sd > min_pos - eps)
            keep_pos = pos & (Sd < max_neg + eps)
        else:
            keep_neg = neg & (Sd + eps > min_pos)
            keep_pos = pos & (Sd - eps < max_neg)
    if r.empty_mined == "skip_anchor":
        alive = keep_pos.any(dim=1, keepdim=True) & keep_neg.any(dim=1, keepdim=True)
        keep_pos, keep_neg = keep_pos & alive, keep_neg & alive
    if r.zero_if_at_most_one_pair and keep_pos.sum() <= 1 and keep_neg.sum() <= 1:
        return (S * 0).sum()
    ninf = torch.tensor(-float("inf"), dtype=S.dtype)
    zero = torch.zeros((), dtype=S.dtype)
    # log(1 + sum exp z) = logaddexp(0, logsumexp z): accurate for tiny sums too (log1p inside).
    pos_lse = torch.logsumexp(torch.where(keep_pos, -alpha * (S - lam), ninf), dim=1)
    neg_lse = torch.logsumexp(torch.where(keep_neg, beta * (S - lam), ninf), dim=1)
    per_anchor = torch.logaddexp(zero, pos_lse) / alpha + torch.logaddexp(zero, neg_lse) / beta
    return per_anchor.sum() / m


def loop(S: np.ndarray, pos: np.ndarray, neg: np.ndarray, profile: str, *, alpha, beta, lam, eps):
    """Plain per-anchor loop; the weights use the paper's own expressions (Eq. of w+ and w-)."""
    r = rules(profile)
    m, n = S.shape
    kept = []
    for i in range(m):
        P = [j for j in range(n) if pos[i, j]]
        N = [j for j in range(n) if neg[i, j]]
        if eps is not None:
            min_pos = min((S[i, j] for j in P), default=math.inf)
            max_neg = max((S[i, j] for j in N), default=-math.inf)
            if r.mining_compare == "shift_extreme":
                N = [j for j in N if S[i, j] > min_pos - eps]
                P = [j for j in P if S[i, j] < max_neg + eps]
            else:
                N = [j for j in N if S[i, j] + eps > min_pos]
                P = [j for j in P if S[i, j] - eps < max_neg]
        if r.empty_mined == "skip_anchor" and (not P or not N):
            P, N = [], []
        kept.append((P, N))
    if r.zero_if_at_most_one_pair and sum(len(P) for P, _ in kept) <= 1 and sum(len(N) for _, N in kept) <= 1:
        kept = [([], []) for _ in range(m)]
    total = 0.0
    G = np.zeros((m, n))
    for i, (P, N) in enumerate(kept):
        total += math.log1p(sum(math.exp(-alpha * (S[i, k] - lam)) for k in P)) / alpha
        total += math.log1p(sum(math.exp(beta * (S[i, k] - lam)) for k in N)) / beta
        for j in P:
            w = 1.0 / (math.exp(alpha * (S[i, j] - lam)) + sum(math.exp(-alpha * (S[i, k] - S[i, j])) for k in P))
            G[i, j] = -w / m
        for j in N:
            w = 1.0 / (math.exp(beta * (lam - S[i, j])) + sum(math.exp(beta * (S[i, k] - S[i, j])) for k in N))
            G[i, j] = w / m
    return total / m, G


# ----------------------------------------------------------------------------------------------
# Real implementations. Each takes float64 torch leaves and returns the loss tensor (autograd gives
# its gradient), or raises NotApplicable when the implementation cannot express the batch.


def pml(X, labels, R, ref_labels, ref_self, normalize, *, alpha, beta, lam, eps):
    """pytorch-metric-learning: MultiSimilarityLoss, with MultiSimilarityMiner(epsilon) when eps is set."""
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    if not normalize:
        raise NotApplicable("PML's CosineSimilarity always normalises rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    y = torch.as_tensor(labels)
    yr = None if R is None else torch.as_tensor(ref_labels)
    loss_fn = MultiSimilarityLoss(alpha=alpha, beta=beta, base=lam)
    indices = None
    if eps is not None:
        indices = MultiSimilarityMiner(epsilon=eps)(X, y, R, yr)
    return loss_fn(X, y, indices, R, yr)


def official(X, labels, R, ref_labels, ref_self, normalize, *, alpha, beta, lam, eps):
    """The official code's rules (research-ms-loss multi_similarity_loss.py), transcribed in torch.

    Per anchor: positives = same label with S < 1 - 1e-5, negatives = other labels, builtin
    min()/max() (raise on an empty set), strict mining with the margin added to the pair, an anchor
    skipped when a kept set is empty, sum divided by the batch size; naive log(1 + sum exp).
    """
    if eps is None:
        raise NotApplicable("the official code always mines")
    if not normalize:
        raise NotApplicable("the official code recognises self pairs by value (S >= 1 - 1e-5), which needs unit rows (its head L2-normalises)")
    U = torch.nn.functional.normalize(X, dim=1) if normalize else X
    V = U if R is None else (torch.nn.functional.normalize(R, dim=1) if normalize else R)
    y = np.asarray(labels)
    yr = y if R is None else np.asarray(ref_labels)
    sim = U @ V.T
    terms = []
    for i in range(sim.shape[0]):
        row = sim[i]
        pos_ = row[torch.as_tensor(yr == y[i])]
        pos_ = pos_[pos_ < 1 - 1e-5]
        neg_ = row[torch.as_tensor(yr != y[i])]
        neg_kept = neg_[neg_ + eps > min(pos_)]  # min() of an empty tensor raises, as in the official code
        pos_kept = pos_[pos_ - eps < max(neg_)]
        if len(neg_kept) < 1 or len(pos_kept) < 1:
            continue
        terms.append(torch.log(1 + torch.sum(torch.exp(-alpha * (pos_kept - lam)))) / alpha
                     + torch.log(1 + torch.sum(torch.exp(beta * (neg_kept - lam)))) / beta)
    if not terms:
        return (X * 0).sum()
    return sum(terms) / sim.shape[0]


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}, "official": {"official-code rules": official}},
)
