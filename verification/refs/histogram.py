"""Second opinions on the histogram loss: torch formulation, plain loop, PML's HistogramLoss.

Written from the formulas (docs/losses.md#histogram, the module docstring of gpwref.losses.histogram) without
calling gpwref's code. Shared with it are only the rules: RANGE_SLACK and the two node rules, which
are re-implemented here (the float32 rule with torch's own float32 arithmetic, as PML runs it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gpwref.losses.histogram import AT_ONE, RANGE_SLACK
from ..common import NotApplicable
from .contract import LossRefs


def _entering(pos, neg, pair_rule: str, ref_is_batch: bool):
    """(positive pairs, negative pairs) as lists of (i, j); unordered i < j with the batch as reference."""
    pos, neg = np.asarray(pos), np.asarray(neg)
    m, n = pos.shape
    has_pos, has_neg = pos.any(axis=1), neg.any(axis=1)

    def enters(mask, i, j, needs):
        return mask[i, j] and (pair_rule == "all" or needs[i])

    pos_pairs, neg_pairs = [], []
    for i in range(m):
        for j in range(n):
            if ref_is_batch:
                if j <= i:
                    continue
                if enters(pos, i, j, has_neg) or enters(pos, j, i, has_neg):
                    pos_pairs.append((i, j))
                if enters(neg, i, j, has_pos) or enters(neg, j, i, has_pos):
                    neg_pairs.append((i, j))
            else:
                if enters(pos, i, j, has_neg):
                    pos_pairs.append((i, j))
                if enters(neg, i, j, has_pos):
                    neg_pairs.append((i, j))
    return pos_pairs, neg_pairs


def _torch_nodes(s: torch.Tensor, n_bins: int, node_precision: str):
    """(r, weight on node r, weight on node r+1) for clipped s; weights differentiable in s."""
    delta = 2.0 / n_bins
    if node_precision == "float64":
        r = torch.clamp(torch.floor((s.detach() + 1) / delta), max=n_bins - 1).long()
        node = -1 + r.double() * delta  # t_r
        upper = (s - node) / delta
        return r, 1 - upper, upper
    r = torch.clamp(torch.floor((s.detach().float() + 1) / delta), max=n_bins - 1).long()
    offset = (r * delta).double()  # long x float is float32, as PML
    node_next = ((r + 1) * delta - 1).double()  # the "- 1" still in float32
    return r, (node_next - s) / delta, (s + 1 - offset) / delta


def torch_loss(S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, profile: str, *, n_bins, pair_rule, node_precision) -> torch.Tensor:
    ref_is_batch = _batch_is_reference(pos.numpy(), neg.numpy())
    pos_pairs, neg_pairs = _entering(pos.numpy(), neg.numpy(), pair_rule, ref_is_batch)
    if not pos_pairs or not neg_pairs:
        return (S * 0).sum()

    def similarities(pairs):
        i = torch.tensor([a for a, _ in pairs])
        j = torch.tensor([b for _, b in pairs])
        s = (S[i, j] + S[j, i]) / 2 if ref_is_batch else S[i, j]
        # Within AT_ONE beyond +-1: exactly +-1 with slope 1 (as at +-1 itself); further out: clamped, slope 0.
        at_bound = torch.sign(s.detach()) + (s - s.detach())
        near = (s.detach().abs() > 1) & (s.detach().abs() <= 1 + AT_ONE)
        return torch.where(near, at_bound, torch.clamp(s, -1.0, 1.0))

    def density(s):
        r, low, high = _torch_nodes(s, n_bins, node_precision)
        onehot_low = torch.nn.functional.one_hot(r, n_bins + 1).double()
        onehot_high = torch.nn.functional.one_hot(r + 1, n_bins + 1).double()
        return (low[:, None] * onehot_low + high[:, None] * onehot_high).sum(dim=0) / len(s)

    h_pos = density(similarities(pos_pairs))
    h_neg = density(similarities(neg_pairs))
    return (h_neg * torch.cumsum(h_pos, dim=0)).sum()


def _batch_is_reference(pos, neg) -> bool:
    """Whether S is the batch against itself, read from the masks (the harness passes masks only).

    With the batch as reference, S is square and no diagonal entry is a pair (the self pair is removed
    and is not a negative). With a separate reference set, entry (i, i) is a positive or a negative
    unless ``ref_self[i] == i``; the harness's reference sets put the batch after at least one extra
    row, so its diagonal is never all self pairs.
    """
    p, q = np.asarray(pos), np.asarray(neg)
    return p.shape[0] == p.shape[1] and not (np.diagonal(p).any() or np.diagonal(q).any())


def _nodes(s: float, n_bins: int, node_precision: str) -> tuple[int, float, float]:
    """Scalar node rule: (r, weight on node r, weight on node r+1) for clipped s."""
    delta = 2.0 / n_bins
    if node_precision == "float64":
        r = min(math.floor((s + 1.0) / delta), n_bins - 1)
        upper = (s - (-1.0 + r * delta)) / delta
        return r, 1.0 - upper, upper
    f32 = np.float32
    r = min(int(math.floor((f32(s) + f32(1.0)) / f32(delta))), n_bins - 1)
    offset = float(f32(r) * f32(delta))
    node_next = float(f32(r + 1) * f32(delta) - f32(1.0))
    return r, (node_next - s) / delta, (s + 1.0 - offset) / delta


def loop(S: np.ndarray, pos: np.ndarray, neg: np.ndarray, profile: str, *, n_bins, pair_rule, node_precision):
    """Plain loops: histograms by accumulation, then G from dL/ds = h+_{r+1}/(Delta |N|), -h-_r/(Delta |P|)."""
    m, n = S.shape
    ref_is_batch = _batch_is_reference(pos, neg)
    G = np.zeros((m, n))
    pos_pairs, neg_pairs = _entering(pos, neg, pair_rule, ref_is_batch)
    if not pos_pairs or not neg_pairs:
        return 0.0, G
    delta = 2.0 / n_bins

    def placed(pairs):
        out = []
        for i, j in pairs:
            s = (S[i, j] + S[j, i]) / 2.0 if ref_is_batch else S[i, j]
            inside = -1.0 - AT_ONE <= s <= 1.0 + AT_ONE
            out.append((i, j, inside) + _nodes(min(max(s, -1.0), 1.0), n_bins, node_precision))
        return out

    P, N = placed(pos_pairs), placed(neg_pairs)
    h_pos = [0.0] * (n_bins + 1)
    h_neg = [0.0] * (n_bins + 1)
    for hist, items in ((h_pos, P), (h_neg, N)):
        for _, _, _, r, low, high in items:
            hist[r] += low / len(items)
            hist[r + 1] += high / len(items)
    cumulative, running = [], 0.0
    for value in h_pos:
        running += value
        cumulative.append(running)
    total = sum(h_neg[r] * cumulative[r] for r in range(n_bins + 1))
    for items, slope_of in ((N, lambda r: h_pos[r + 1] / (delta * len(N))), (P, lambda r: -h_neg[r] / (delta * len(P)))):
        for i, j, inside, r, _, _ in items:
            slope = slope_of(r) if inside else 0.0
            if ref_is_batch:
                G[i, j] += slope / 2.0
                G[j, i] += slope / 2.0
            else:
                G[i, j] += slope
    return total, G


# ----------------------------------------------------------------------------------------------
# Real implementation: pytorch-metric-learning's HistogramLoss.


def pml(X, labels, R, ref_labels, ref_self, normalize, *, n_bins, pair_rule, node_precision):
    """PML HistogramLoss(n_bins); rows normalised by its CosineSimilarity (or raw dot products)."""
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
    from pytorch_metric_learning.losses import HistogramLoss

    if R is not None:
        raise NotApplicable("HistogramLoss refuses ref_emb (ValueError from c_f.ref_not_supported); gpwref takes the "
                            "m x n pairs of a reference set as given")
    if pair_rule != "triplets" or node_precision != "float32":
        raise NotApplicable("PML builds its pairs from triplets and places them with float32 node arithmetic")
    distance = CosineSimilarity() if normalize else DotProductSimilarity(normalize_embeddings=False)
    with torch.no_grad():
        S = distance(X).double()
    # The pairs PML histograms: those of its triplets (an anchor with a positive and a negative).
    y = np.asarray(labels)
    same = y[:, None] == y[None, :]
    pos_mask = same & ~np.eye(len(y), dtype=bool)
    pos_pairs, neg_pairs = _entering(pos_mask, ~same, "triplets", True)
    s = torch.stack([S[i, j] for i, j in pos_pairs + neg_pairs]) if pos_pairs and neg_pairs else S.new_zeros(0)
    node_index = torch.floor((s.float() + 1) / (2.0 / n_bins))
    out_of_range = (node_index < 0) | (node_index >= n_bins)
    if out_of_range.any():
        beyond = (s.abs() > 1.0 + RANGE_SLACK).any()
        if not beyond:
            raise NotApplicable("a pair at s = 1 (within float32 round-off): PML's node index runs past the last node "
                                "and its scatter_add fails; gpwref puts s = 1 in the last bin")
        try:
            return HistogramLoss(n_bins=n_bins, distance=distance)(X, torch.as_tensor(labels))
        except (RuntimeError, IndexError) as error:  # scatter_add_ out of range: PML fails too
            raise ValueError(f"PML HistogramLoss fails on similarities outside [-1, 1]: {error}") from error
    return HistogramLoss(n_bins=n_bins, distance=distance)(X, torch.as_tensor(labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    # L is a probability in [0, 1] with absolute round-off ~n_bins 2^-53 (and may be ~1e-17):
    # its value checks use the scale 1 as floor
    value_scale=1.0,
)
