"""Second opinions on RS@k (+ SiMix): torch formulation, plain loop, the official code's rules."""

from __future__ import annotations

import math

import numpy as np
import torch

from verification.common import NotApplicable
from gpwref.testing import Batch
from verification.refs.smooth_ap import _sigmoid, class_groups, grouped_batch  # noqa: F401 (grouped_batch: a batch kind)


def simix_batch(rng: np.random.Generator) -> Batch:
    """Class-sorted equal groups of 3, 4 or 6 (the group sizes the official pos_mixup handles)."""
    classes = int(rng.integers(2, 4))
    size = int(rng.choice([3, 4, 6]))
    labels = np.repeat(rng.permutation(10)[:classes], size).astype(np.int64)
    dim = int(rng.integers(2, 5))
    X = rng.normal(size=(len(labels), dim)) + 0.7 * rng.normal(size=(10, dim))[labels]
    return Batch(X, labels, cases=("grouped",))


def _labels_from_masks(pos):
    """Class ids of a batch (its own reference set) from the positive mask plus the diagonal."""
    m = pos.shape[0]
    same = pos | torch.eye(m, dtype=torch.bool)
    label = [-1] * m
    for i in range(m):
        if label[i] < 0:
            for j in range(m):
                if same[i, j]:
                    label[j] = i
    return label


def _mixing(labels, a):
    """Rows of the mixing matrix, written out pair by pair (same rule as gpwref's, as a list)."""
    m = len(labels)
    rows, ext = [[1.0 if c == r else 0.0 for c in range(m)] for r in range(m)], list(labels)
    for c in sorted(set(labels)):
        members = [i for i in range(m) if labels[i] == c]
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                row = [0.0] * m
                row[members[x]] += a
                row[members[y]] += 1 - a
                rows.append(row)
                ext.append(c)
    return rows, ext


def torch_loss(S, pos, neg, profile, *, k_values, tau1, tau2, include_query, sigmoid_clamp, recall_cap, simix):
    m = S.shape[0]
    if simix is not None:
        labels = _labels_from_masks(pos)
        rows, ext = _mixing(labels, simix)
        M = torch.tensor(rows, dtype=S.dtype)
        S1 = torch.where(torch.eye(m, dtype=torch.bool), torch.ones_like(S), S)
        T = M @ S1 @ M.T
        e = torch.tensor(ext)
        pos = (e[:, None] == e[None, :]) & ~torch.eye(len(ext), dtype=torch.bool)
        neg = e[:, None] != e[None, :]
        own = torch.diagonal(T)
    else:
        T = S
        own = torch.ones(m, dtype=S.dtype)
    if include_query:
        T = torch.cat([T, own[:, None]], dim=1)
        pos = torch.cat([pos, torch.zeros(T.shape[0], 1, dtype=torch.bool)], dim=1)
        neg = torch.cat([neg, torch.zeros(T.shape[0], 1, dtype=torch.bool)], dim=1)
        member = pos | neg
        member[:, -1] = True
    else:
        member = pos | neg
    n = T.shape[1]
    D = T[:, :, None] - T[:, None, :]  # [q, z, p] = s_z - s_p
    others = member[:, :, None] & ~torch.eye(n, dtype=torch.bool)[None]
    rank = 1 + (_sigmoid(D, tau1, sigmoid_clamp) * others).sum(dim=1)  # [q, p]
    n_pos = pos.sum(dim=1)
    alive = n_pos > 0
    if not alive.any():
        return (S * 0).sum()
    loss = torch.zeros(T.shape[0], dtype=S.dtype)
    for k in k_values:
        norm = torch.clamp(n_pos, max=k).to(S.dtype).clamp(min=1)
        count = (_sigmoid(k - rank, tau2, sigmoid_clamp) * pos).sum(dim=1)
        missing = torch.where(n_pos <= k, (_sigmoid(rank - k, tau2, sigmoid_clamp) * pos).sum(dim=1), k - count)
        term = missing / norm
        if recall_cap:
            term = torch.where(count.detach() > k, torch.zeros_like(term), term)
        loss = loss + term / len(k_values)
    return loss[alive].mean()


def loop(S, pos, neg, profile, *, k_values, tau1, tau2, include_query, sigmoid_clamp, recall_cap, simix):
    """Plain loops: extended similarities by explicit sums, per-query weights from the closed form,
    then G_ab = sum_{e,f} M_ea (dL/dT_ef) M_fb."""
    m = S.shape[0]

    def sig(x, t):
        e = -x / t
        if sigmoid_clamp is not None:
            e = min(max(e, -sigmoid_clamp), sigmoid_clamp)
        return 1 / (1 + math.exp(e)) if e < 700 else 0.0

    def slope(x, t):
        e = -x / t
        if (sigmoid_clamp is not None and abs(e) > sigmoid_clamp) or abs(e) > 700:
            return 0.0
        return math.exp(-abs(e)) / (1 + math.exp(-abs(e))) ** 2 / t

    if simix is not None:
        labels = [-1] * m
        for i in range(m):
            if labels[i] < 0:
                for j in range(m):
                    if i == j or pos[i, j]:
                        labels[j] = i
        rows, ext = _mixing(labels, simix)
        E = len(rows)
        S1 = [[1.0 if a == b else S[a, b] for b in range(m)] for a in range(m)]
        T = [[sum(rows[e][a] * rows[f][b] * S1[a][b] for a in range(m) for b in range(m) if rows[e][a] and rows[f][b]) for f in range(E)] for e in range(E)]
        P = [[f != e and ext[f] == ext[e] for f in range(E)] for e in range(E)]
        N = [[ext[f] != ext[e] for f in range(E)] for e in range(E)]
    else:
        E, T = m, S.tolist()
        P, N = pos.tolist(), neg.tolist()
    queries = [e for e in range(E) if any(P[e])]
    value, GT = 0.0, np.zeros((E, E) if simix is not None else S.shape)
    for q in queries:
        items = [(T[q][f], P[q][f], f) for f in range(len(T[q])) if P[q][f] or N[q][f]]
        if include_query:
            items.append((T[q][q] if simix is not None else 1.0, False, q if simix is not None else None))
        s = [x for x, _, _ in items]
        relevant = [a for a in range(len(items)) if items[a][1]]
        rank = {p: 1 + sum(sig(s[z] - s[p], tau1) for z in range(len(items)) if z != p) for p in relevant}
        w = {p: 0.0 for p in relevant}
        lq = 0.0
        for k in k_values:
            norm = min(k, len(relevant))
            count = sum(sig(k - rank[p], tau2) for p in relevant)
            if recall_cap and count > k:
                continue
            lq += (sum(sig(rank[p] - k, tau2) for p in relevant) if len(relevant) <= k else k - count) / norm
            for p in relevant:
                w[p] += slope(k - rank[p], tau2) / norm
        value += lq / len(k_values) / len(queries)
        for j, (sj, rj, col) in enumerate(items):
            if col is None:
                continue
            d = sum(w[p] * slope(sj - s[p], tau1) for p in relevant if p != j) / len(k_values)
            if rj:
                d -= w[j] * sum(slope(s[z] - sj, tau1) for z in range(len(items)) if z != j) / len(k_values)
            GT[q, col] += d / len(queries)
    if simix is None:
        return value, GT
    G = np.zeros((m, m))
    for e in range(E):
        for f in range(E):
            if GT[e, f]:
                for a in range(m):
                    for b in range(m):
                        if a != b:
                            G[a, b] += rows[e][a] * GT[e, f] * rows[f][b]
    return value, G


def _official_mix(U, spc, a):
    """src/mixup.py pos_mixup with every alpha = a: the virtual rows of each group, inserted after it."""
    orders = {
        3: [(0, 1), (1, 2), (0, 2)],
        4: [(0, 1), (1, 2), (2, 3), (0, 3), (0, 2), (1, 3)],
        6: [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 2), (0, 3), (0, 4), (0, 5), (1, 3), (1, 4), (1, 5), (2, 4), (2, 5), (3, 5)],
    }
    if spc not in orders:
        raise NotApplicable("the official pos_mixup handles 3, 4 or 6 samples per class only")
    blocks = []
    for start in range(0, U.shape[0], spc):
        blocks.append(U[start : start + spc])
        blocks.append(torch.stack([a * U[start + i] + (1 - a) * U[start + j] for i, j in orders[spc]]))
    return torch.cat(blocks)


def official(X, labels, R, ref_labels, ref_self, normalize, *, k_values, tau1, tau2, include_query, sigmoid_clamp, recall_cap, simix):
    """The official RecallatK.forward rules (src/losses.py), transcribed per query and summed over queries."""
    if not (include_query and sigmoid_clamp == 50.0 and recall_cap):
        raise NotApplicable("the official rules are include_query=True, sigmoid_clamp=50, recall_cap=True")
    if R is not None:
        raise NotApplicable("the official code ranks the batch against itself")
    if not normalize:
        raise NotApplicable("the official code's query score is x.x; gpwref holds it at 1 (unit rows)")
    spc = class_groups(labels)
    if len(np.unique(labels)) < 2:
        raise NotApplicable("one class only: the loss has no negative and the code's dX is round-off")
    if max(k_values) > X.shape[0]:
        raise NotApplicable("the official code clips k to the batch size; pass k_values <= batch size")
    num_id = X.shape[0] // spc
    preds = torch.nn.functional.normalize(X, dim=1)
    if simix is not None:
        preds = _official_mix(preds, spc, simix)
    B = preds.shape[0]
    group = B // num_id
    total = torch.zeros((), dtype=X.dtype)
    for q in range(B):
        g = q // group
        sim_all = (preds[q] * preds).sum(1)
        diff = sim_all[:, None] - sim_all.view(num_id, group)[g][None, :]
        sg = _sigmoid(diff, tau1, 50.0).clone()
        for i in range(group):
            sg[g * group + i, i] = 0.0
        rank = 1.0 + sg.sum(dim=0)
        recall = torch.zeros((), dtype=X.dtype)
        for k in k_values:
            r = _sigmoid(k - rank, tau2, 50.0).clone()
            r[q % group] = 0.0
            recall = recall + torch.minimum(r.sum(), torch.tensor(float(k), dtype=X.dtype)) / min(k, group - 1)
        total = total + (1.0 - recall / len(k_values)) / B
    return total


REAL = {"paper": {"official RS@k rules": official}}
