"""Second opinions on Smooth-AP: torch formulation, plain loop, PML SmoothAPLoss, the official rules."""

from __future__ import annotations

import math

import numpy as np
import torch

from gpwref.testing import Batch
from verification.common import NotApplicable


def _sigmoid(x, temperature, clamp):
    """sigmoid(x / temperature). Unclamped it is written exp(-softplus(-x/t)): autograd then gives the
    slope as sigmoid(x) sigmoid(-x) (softplus' = z/(1+z)), where torch.sigmoid's backward forms
    y (1 - y) and loses the relative precision of saturated slopes (1e-10 at |x/t| = 15)."""
    if clamp is None:
        return torch.exp(-torch.nn.functional.softplus(-x / temperature, threshold=30))
    return 1.0 / (1.0 + torch.exp(torch.clamp(-x / temperature, -clamp, clamp)))


def with_query(S, pos, neg, include_query):
    """S, pos, neg with the query appended as a last column (score 1, constant) when included."""
    if not include_query:
        return S, pos, neg
    m = S.shape[0]
    ones = torch.ones(m, 1, dtype=S.dtype)
    return torch.cat([S, ones], dim=1), torch.cat([pos, torch.ones(m, 1, dtype=torch.bool)], dim=1), torch.cat([neg, torch.zeros(m, 1, dtype=torch.bool)], dim=1)


def torch_loss(S, pos, neg, profile, *, temperature, include_query, sigmoid_clamp):
    """All queries at once: D[i, k, p] = s_ik - s_ip, masked sums for R_P and R_N."""
    S, pos, neg = with_query(S, pos, neg, include_query)
    n = S.shape[1]
    D = S[:, :, None] - S[:, None, :]
    not_same = ~torch.eye(n, dtype=torch.bool)[None]
    sig = _sigmoid(D, temperature, sigmoid_clamp)
    r_pos = 1 + (sig * (pos[:, :, None] & not_same)).sum(dim=1)  # [i, p]
    r_neg = (sig * neg[:, :, None]).sum(dim=1)
    alive = pos.any(dim=1)
    if not alive.any():
        return (S * 0).sum()
    per = (torch.where(pos, r_neg / (r_pos + r_neg), torch.zeros_like(r_neg)).sum(dim=1) / pos.sum(dim=1).clamp(min=1))
    return per[alive].mean()


def loop(S, pos, neg, profile, *, temperature, include_query, sigmoid_clamp):
    """Per query and per pair of items, the weights from the closed form in the module docstring."""
    m, n = S.shape

    def sig(x):
        e = -x / temperature
        if sigmoid_clamp is not None:
            e = min(max(e, -sigmoid_clamp), sigmoid_clamp)
        return 1 / (1 + math.exp(e)) if e < 700 else 0.0

    def slope(x):
        e = -x / temperature
        if sigmoid_clamp is not None and abs(e) > sigmoid_clamp:
            return 0.0
        if abs(e) > 700:
            return 0.0
        return math.exp(-abs(e)) / (1 + math.exp(-abs(e))) ** 2 / temperature

    queries = []
    for i in range(m):
        items = [(S[i, j], pos[i, j], j) for j in range(n) if pos[i, j] or neg[i, j]]
        if include_query:
            items.append((1.0, True, None))
        if any(rel for _, rel, _ in items):
            queries.append((i, items))
    value, G = 0.0, np.zeros((m, n))
    for i, items in queries:
        P = [a for a in range(len(items)) if items[a][1]]
        s = [x for x, _, _ in items]
        rp = {p: 1 + sum(sig(s[k] - s[p]) for k in P if k != p) for p in P}
        rn = {p: sum(sig(s[k] - s[p]) for k in range(len(items)) if not items[k][1]) for p in P}
        value += sum(rn[p] / (rp[p] + rn[p]) for p in P) / len(P)
        N = [a for a in range(len(items)) if not items[a][1]]
        for j in range(len(items)):
            if items[j][2] is None:
                continue
            d = 0.0
            for p in P:
                # d(R_P/R_A) = (R_N dR_P - R_P dR_N) / R_A^2, with R_A = R_P + R_N
                if p == j:
                    d_rp = -sum(slope(s[k] - s[j]) for k in P if k != j)
                    d_rn = -sum(slope(s[k] - s[j]) for k in N)
                else:
                    d_rp = slope(s[j] - s[p]) if items[j][1] else 0.0
                    d_rn = 0.0 if items[j][1] else slope(s[j] - s[p])
                d += (rn[p] * d_rp - rp[p] * d_rn) / (rp[p] + rn[p]) ** 2
            G[i, items[j][2]] = -d / len(P) / len(queries)
    return (value / len(queries) if queries else 0.0), G


def grouped_batch(rng: np.random.Generator, *, square: bool | None = None, d=(2, 5)) -> Batch:
    """A class-sorted batch of equal contiguous groups (what the label-free codes need); ``square``:
    as many samples per class as classes (the only layout PML 2.9's Smooth-AP groups correctly)."""
    classes = int(rng.integers(2, 4))
    square = bool(rng.random() < 0.5) if square is None else square
    size = classes if square else int(rng.integers(2, 5))
    labels = np.repeat(rng.permutation(10)[:classes], size).astype(np.int64)
    dim = int(rng.integers(d[0], d[1] + 1))
    X = rng.normal(size=(len(labels), dim)) + 0.7 * rng.normal(size=(10, dim))[labels]
    return Batch(X, labels, cases=("grouped",))


def require_negatives(labels):
    y = np.asarray(labels)
    if np.all(y == y[0]):
        raise NotApplicable(
            "one class only: the loss is identically 0, the exact gradient is 0 and the code's dX is round-off "
            "with no scale to compare it against"
        )


def class_groups(labels) -> int:
    """The group size when the batch is class-sorted in equal contiguous groups, else NotApplicable."""
    y = np.asarray(labels)
    starts = np.flatnonzero(np.r_[True, y[1:] != y[:-1]])
    sizes = np.diff(np.r_[starts, len(y)])
    if len(set(y[starts].tolist())) != len(starts) or len(set(sizes.tolist())) != 1:
        raise NotApplicable("the code takes no labels: it needs a class-sorted batch of equal contiguous class groups")
    return int(sizes[0])


def pml(X, labels, R, ref_labels, ref_self, normalize, *, temperature, include_query, sigmoid_clamp):
    """pytorch-metric-learning 2.9 SmoothAPLoss, run with float64 as torch's default dtype (its AP
    buffer is created with the default dtype)."""
    from pytorch_metric_learning.losses import SmoothAPLoss

    if not include_query or sigmoid_clamp is not None:
        raise NotApplicable("PML's Smooth-AP ranks the query in its own set with an unclamped sigmoid")
    if R is not None or not normalize:
        raise NotApplicable("PML's Smooth-AP takes no ref_emb and normalises rows")
    size = class_groups(labels)
    require_negatives(labels)
    if size != len(np.unique(labels)):
        raise NotApplicable(
            "PML 2.9 groups the batch in blocks of C consecutive items (C = number of classes), which are the "
            "classes only when every class has C samples"
        )
    if np.asarray(labels).min() < 0:
        raise NotApplicable("PML bincounts the labels")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return SmoothAPLoss(temperature=temperature)(X, torch.as_tensor(labels))
    finally:
        torch.set_default_dtype(previous)


def official(X, labels, R, ref_labels, ref_self, normalize, *, temperature, include_query, sigmoid_clamp):
    """The official Smooth-AP forward (Andrew-Brown1/Smooth_AP src/losses.py), transcribed: masks from
    the group layout, clamped sigmoid, the query ranked and counted in its own set, 1 - mean AP."""
    if not include_query or sigmoid_clamp != 50.0:
        raise NotApplicable("the official rules are include_query=True with the exponent clamped at 50")
    if R is not None:
        raise NotApplicable("the official code ranks the batch against itself")
    if not normalize:
        raise NotApplicable("the query's own score is x.x there; gpwref holds it at 1 (unit rows)")
    group = class_groups(labels)
    require_negatives(labels)
    B = X.shape[0]
    num_id = B // group
    U = torch.nn.functional.normalize(X, dim=1)
    sim = U @ U.T
    mask = 1.0 - torch.eye(B, dtype=X.dtype)
    diff = sim[:, None, :] - sim[:, :, None]  # [q, a, b] = s_qb - s_qa
    rank_all = (_sigmoid(diff, temperature, 50.0) * mask[None]).sum(dim=-1) + 1
    xs = U.view(num_id, group, -1)
    sim_pos = xs @ xs.transpose(1, 2)
    diff_pos = sim_pos[:, :, None, :] - sim_pos[:, :, :, None]
    pos_mask = 1.0 - torch.eye(group, dtype=X.dtype)
    rank_pos = (_sigmoid(diff_pos, temperature, 50.0) * pos_mask).sum(dim=-1) + 1
    ap = torch.zeros((), dtype=X.dtype)
    for g in range(num_id):
        block = slice(g * group, (g + 1) * group)
        ap = ap + (rank_pos[g] / rank_all[block, block]).sum() / group / B
    return 1 - ap


REAL = {"pml": {"pytorch-metric-learning": pml}, "paper": {"official Smooth-AP rules": official}}
