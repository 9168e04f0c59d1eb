"""Second opinions on the PCE loss: torch formulations, and a plain loop.

``paper_form`` is the textbook expression (tightness + log-sum-exp over classes, self pairs as the
constant 1 of unit rows). It cancels O(1) terms (its value on a one-class batch is round-off, not
0), so the harness compares against ``torch_loss``, the same loss in the cancellation-free form
sum_k (1 - n_k/n) B_k + mean_i log sum_k exp(Delta_ik) (see gpwref/losses/pce_bound.py), and
tests/losses/test_pce_bound.py checks that the two forms agree. The loop evaluates the same
cancellation-free form and writes the weights from their closed form.
No real implementation exists: the authors' repository trains plain cross-entropy (docs/losses.md#pce_bound).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .contract import LossRefs


def _classes(same: torch.Tensor) -> torch.Tensor:
    """n x K membership matrix from the same-class mask (self included)."""
    n = same.shape[0]
    reps = []
    for j in range(n):
        if not any(bool((same[:, j] == same[:, c]).all()) for c in reps):
            reps.append(j)
    return torch.stack([same[:, c] for c in reps], dim=1)


def paper_form(S, pos, neg, profile, *, lam):
    n = S.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    S1 = torch.where(eye, torch.ones((), dtype=S.dtype), S)  # z_i . z_i = 1 on unit rows
    same = pos | eye  # same class, self included
    tightness = -(S1 * same).sum() / (2 * lam * n**2)
    member = _classes(same).to(S.dtype)  # n x K
    sums = S1 @ member
    centre_sq = torch.stack([member[:, k] @ S1 @ member[:, k] for k in range(member.shape[1])]) / n**2
    contrastive = torch.logsumexp(sums / (lam * n) - centre_sq / (2 * lam), dim=1).mean()
    return tightness + contrastive


def torch_loss(S, pos, neg, profile, *, lam):
    n = S.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    S1 = torch.where(eye, torch.ones((), dtype=S.dtype), S)
    member = _classes(pos | eye).to(S.dtype)  # n x K
    sizes = member.sum(dim=0)
    centre = torch.einsum("ak,ab,bk->k", member, S1, member) / (2 * lam * n**2)  # ||c_k||^2 / (2 lam)
    logits = (S1 @ member) / (lam * n) - centre
    own = (logits * member).sum(dim=1, keepdim=True)  # each row's own-class logit
    relative = torch.logsumexp(logits - own, dim=1)  # contains exp(0) for the own class
    return ((1 - sizes / n) * centre).sum() + relative.mean()


def loop(S, pos, neg, profile, *, lam):
    n = S.shape[0]
    label = list(range(n))  # class representative: smallest index of the same class
    for i in range(n):
        for j in range(n):
            if pos[i, j] and j < label[i]:
                label[i] = j
    classes = sorted(set(label))
    sim = [[1.0 if i == j else S[i, j] for j in range(n)] for i in range(n)]
    centre_sq = {k: sum(sim[a][b] for a in range(n) for b in range(n) if label[a] == k and label[b] == k) / n**2 for k in classes}
    size = {k: sum(1 for a in range(n) if label[a] == k) for k in classes}
    total = sum((1 - size[k] / n) * centre_sq[k] / (2 * lam) for k in classes)
    soft = [[0.0] * len(classes) for _ in range(n)]
    for i in range(n):
        logits = [sum(sim[i][j] for j in range(n) if label[j] == k) / (lam * n) - centre_sq[k] / (2 * lam) for k in classes]
        own = logits[classes.index(label[i])]
        others = [math.exp(v - own) for k, v in zip(classes, logits) if k != label[i]]
        total += math.log1p(sum(others)) / n
        top = max(logits)
        z = sum(math.exp(v - top) for v in logits)
        soft[i] = [math.exp(v - top) / z for v in logits]
    soft_mean = [sum(soft[a][c] for a in range(n)) / n for c in range(len(classes))]
    G = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            c = classes.index(label[j])
            if neg[i, j]:
                G[i, j] = soft[i][c] / (lam * n**2)
            elif pos[i, j]:
                G[i, j] = (2 * soft[i][c] - 1 - soft_mean[c]) / (2 * lam * n**2)
    return total, G


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
)
