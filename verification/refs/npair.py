"""Second opinions on the N-pair loss: torch formulation, plain loop, and PML's NPairsLoss.

Written from the formulas (docs/losses.md#npair, the module docstring of gpwref.losses.npair) without calling
gpwref's code. The pair choice is re-derived here by a scan over anchors in index order.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .contract import LossRefs


def _chosen(pos, labels) -> list[tuple[int, int]]:
    """Per label, in increasing label order: (first anchor with a positive, its first positive)."""
    pos = np.asarray(pos)
    labels = np.asarray(labels)
    first = {}
    for i in range(pos.shape[0]):
        js = [j for j in range(pos.shape[1]) if pos[i, j]]
        if js and labels[i] not in first:
            first[labels[i]] = (i, js[0])
    return [first[c] for c in sorted(first)]


def _labels_of(pos: np.ndarray) -> np.ndarray:
    """Class ids recovered from the batch's positive mask (same label = positive or self).

    ``torch_loss`` and ``loop`` receive masks, not labels; which pair is chosen per class does not
    depend on the label values, only on which rows share one."""
    m = pos.shape[0]
    same = pos | np.eye(m, dtype=bool)
    labels = -np.ones(m, dtype=np.int64)
    for i in range(m):
        if labels[i] < 0:
            labels[same[i]] = i
    return labels


def torch_loss(S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, profile: str) -> torch.Tensor:
    """Cross-entropy over the chosen anchors x chosen positives, target the diagonal."""
    pairs = _chosen(pos.numpy(), _labels_of(pos.numpy()))
    if len(pairs) < 2:
        return (S * 0).sum()
    anchors = torch.tensor([a for a, _ in pairs])
    positives = torch.tensor([p for _, p in pairs])
    logits = S[anchors][:, positives]
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(pairs)))


def loop(S: np.ndarray, pos: np.ndarray, neg: np.ndarray, profile: str):
    """Plain loops; G from the closed forms pi_ij / N and -(1 - pi_ii) / N."""
    m, n = S.shape
    G = np.zeros((m, n))
    pairs = _chosen(pos, _labels_of(pos))
    N = len(pairs)
    if N < 2:
        return 0.0, G
    total = 0.0
    for i, (a, p) in enumerate(pairs):
        row = [S[a, q] for _, q in pairs]
        top = max(row)
        Z = sum(math.exp(v - top) for v in row)
        total += math.log(Z) + top - S[a, p]
        for j, (_, q) in enumerate(pairs):
            pi = math.exp(S[a, q] - top) / Z
            G[a, q] = (pi - 1.0) / N if j == i else pi / N
    return total / N, G


def pml(X, labels, R, ref_labels, ref_self, normalize):
    """PML NPairsLoss; its default DotProductSimilarity normalises rows (cosines)."""
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NPairsLoss

    y = torch.as_tensor(labels)
    distance = DotProductSimilarity() if normalize else DotProductSimilarity(normalize_embeddings=False)
    if R is None:
        return NPairsLoss(distance=distance)(X, y)
    # PML refuses a reference set (ValueError from c_f.ref_not_supported), as gpwref does.
    return NPairsLoss(distance=distance)(X, y, ref_emb=R, ref_labels=torch.as_tensor(ref_labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
