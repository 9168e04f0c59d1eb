"""Second opinions on RS@k (+ SiMix): torch formulation, plain loop, the official code's rules.

Written from the formulas (docs/losses.md#recall_at_k) without calling gpwref's code.
The loss is checked by verification/harness.py's frozen-value path, because two things of
this loss are beyond the generic harness:

* cancellation. A positive's weight is the difference of two sums of slopes,
  G_qj = sum_{p != j} w_p sigma1'_jp - w_j sum_{z != j} sigma1'_zj (pushed by the other positives'
  ranks, pulled by its own). On tied or duplicated scores the slopes are at their peak 1/(4 tau1)
  = 25 and the two sums cancel, exactly to 0 on a one-class tied batch. Round-off is relative to the
  sums, not to their difference: ``scales`` computes their size here (numpy, from the closed form,
  chained through SiMix's mixing matrix) as the floor of the G comparisons.
* kinks. The clamped sigmoid (``sigmoid_clamp``) has a kink where an exponent crosses +-clamp, and
  ``recall_cap`` switches a k-term off where R_k crosses k. ``frozen_value`` returns the value
  (``torch_loss`` with no autograd) and the ``regime`` (the side of every clamp and cap), and the
  finite-difference check skips an entry of S whose +-h step changes it. Like the harness's, it
  subtracts the differences' own round-off (``fd_roundoff``), so a G of 1e-20 on well-separated scores
  is not measured against a value difference that only holds noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import harness
from ..common import NotApplicable
from gpwref.testing import Batch
from .smooth_ap import _sigmoid, class_groups, grouped_batch  # noqa: F401 (grouped_batch: a batch kind)
from .contract import LossRefs


def simix_batch(rng: np.random.Generator) -> Batch:
    """Class-sorted equal groups of 3, 4 or 6 (the group sizes the official pos_mixup handles)."""
    classes = int(rng.integers(2, 4))
    size = int(rng.choice([3, 4, 6]))
    labels = np.repeat(rng.permutation(10)[:classes], size).astype(np.int64)
    dim = int(rng.integers(2, 5))
    X = rng.normal(size=(len(labels), dim)) + 0.7 * rng.normal(size=(10, dim))[labels]
    return Batch(X, labels, cases=("grouped",))


def _labels_from_masks(pos):
    """Class ids of a batch (its own reference set) from the positive mask (numpy or torch) plus the
    diagonal: each sample gets the index of its class's first sample."""
    m = pos.shape[0]
    same = np.asarray(pos) | np.eye(m, dtype=bool)
    label = [-1] * m
    for i in range(m):
        if label[i] < 0:
            for j in np.nonzero(same[i])[0]:
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


# ----------------------------------------------------------------------------------------------
# Floors and kinks: the closed form again, vectorised per query in numpy.


def _np_sigmoid(x, clamp):
    """sigmoid(x) and its slope in x; ``clamp`` clips the exponent -x to [-clamp, clamp] (slope 0 strictly beyond)."""
    e = -x if clamp is None else np.clip(-x, -clamp, clamp)
    t = np.exp(-np.abs(e))
    sig = np.where(e <= 0, 1 / (1 + t), t / (1 + t))
    slope = t / (1 + t) ** 2
    if clamp is not None:
        slope = np.where(np.abs(x) > clamp, 0.0, slope)
    return sig, slope


def _side(x, clamp):
    """Which piece of the clamped sigmoid x is on: -1 below -clamp, 0 inside, 1 above (all 0 unclamped)."""
    if clamp is None:
        return np.zeros(np.shape(x), dtype=np.int8)
    return (np.sign(x) * (np.abs(x) > clamp)).astype(np.int8)


def _query(s, rel, k_values, tau1, tau2, clamp, cap):
    """One query with item scores s and relevance rel: (l_q, dl_q/ds, sizes, value size, branches).

    ``sizes``: sum_{p != j} w_p sigma1'_jp + [j in P] w_j sum_{z != j} sigma1'_zj, the two (non-negative)
    sums whose difference dl_q/ds_j is; ``value size``: l_q with each k - R_k replaced by k + R_k.
    ``branches``: the clamp side of every sigmoid argument and whether each k-term is capped.
    """
    n = len(s)
    x1 = (s[:, None] - s[None, :]) / tau1  # [z, p]
    sig1, slope1 = _np_sigmoid(x1, clamp)
    off = ~np.eye(n, dtype=bool)
    sig1, slope1 = sig1 * off, slope1 * off / tau1
    n_rel = int(rel.sum())
    rank = 1 + sig1[:, rel].sum(axis=0)
    value, size, w, branches = 0.0, 0.0, np.zeros(n_rel), [_side(x1[off], clamp)]
    for k in k_values:
        x2 = (k - rank) / tau2
        sig2, slope2 = _np_sigmoid(x2, clamp)
        count = sig2.sum()
        capped = bool(cap and count > k)
        branches.append(_side(x2, clamp))
        branches.append(np.array([capped], dtype=np.int8))
        if capped:
            continue
        norm = min(k, n_rel)
        if n_rel <= k:
            missing = _np_sigmoid(-x2, clamp)[0].sum()
            value, size = value + missing / norm, size + missing / norm
        else:
            value, size = value + (k - count) / norm, size + (k + count) / norm
        w += slope2 / tau2 / norm
    W = np.zeros(n)
    W[rel] = w / len(k_values)
    via_other_ranks = slope1 @ W  # [j] sum_p sigma1'_jp w_p (slope1 is 0 on the diagonal): the push
    via_own_rank = W * slope1.sum(axis=0)  # [j] w_j sum_z sigma1'_zj: the pull
    grad = via_other_ranks - via_own_rank
    return value / len(k_values), grad, via_other_ranks + via_own_rank, size / len(k_values), np.concatenate(branches)


def _queries(S, pos, neg, *, k_values, tau1, tau2, include_query, sigmoid_clamp, recall_cap, simix):
    """Every alive query of the (extended) batch: (M or None, [(q, columns, l_q, grad, sizes, value size,
    branches)], N'); a column None is the query's own constant score."""
    S, pos, neg = np.asarray(S, dtype=np.float64), np.asarray(pos), np.asarray(neg)
    if simix is not None:
        rows, ext = _mixing(_labels_from_masks(pos), simix)
        M = np.array(rows)
        T = M @ np.where(np.eye(S.shape[0], dtype=bool), 1.0, S) @ M.T
        e = np.array(ext)
        pos = (e[:, None] == e[None, :]) & ~np.eye(len(ext), dtype=bool)
        neg = e[:, None] != e[None, :]
    else:
        M, T = None, S
    alive = np.nonzero(pos.any(axis=1))[0]
    out = []
    for q in alive:
        columns = list(np.nonzero(pos[q] | neg[q])[0])
        s, rel = T[q, columns], pos[q, columns]
        if include_query:  # the query's own score: 1 (held constant) or T_qq of a mixed query (it moves)
            s = np.append(s, T[q, q] if simix is not None else 1.0)
            rel = np.append(rel, False)
            columns.append(q if simix is not None else None)
        out.append((q, columns) + _query(s, rel, k_values, tau1, tau2, sigmoid_clamp, recall_cap))
    return M, out, len(alive)


def scales(params, ours, pos, neg):
    """Floors: the size of the sums whose differences G and the value are, over the queries.

    G: the largest (M^T sizes M)_ab over real pairs a != b (M = identity without SiMix; M >= 0, so the
    chained sizes bound the chained terms). Value: sum over queries of (k + R_k) / n_k for the terms
    evaluated as (k - R_k) / n_k, and of the (positive) missing-recall sums otherwise.
    """
    M, queries, n_alive = _queries(ours.sim, pos, neg, **params)
    if not queries:
        return {"value": 0.0, "G": 0.0}
    E = M.shape[0] if M is not None else ours.sim.shape[0]
    sizes = np.zeros((E, E if M is not None else ours.sim.shape[1]))
    value = 0.0
    for q, columns, _, _, size, value_size, _ in queries:
        for c, t in zip(columns, size):
            if c is not None:
                sizes[q, c] += t / n_alive
        value += value_size
    if M is not None:
        sizes = M.T @ sizes @ M
        np.fill_diagonal(sizes, 0.0)
    return {"value": value / n_alive, "G": float(sizes.max())}


def frozen_value(S_eval, S_frozen, pos, neg, profile, **params):
    """The value at S_eval (``torch_loss``, nothing is detached: S_frozen is not read) and its regime:
    the clamp side of every sigmoid argument and the cap state of every k-term of every query."""
    with torch.no_grad():
        value = torch_loss(torch.as_tensor(S_eval, dtype=torch.float64), torch.as_tensor(pos), torch.as_tensor(neg), profile, **params)
    _, queries, _ = _queries(S_eval, pos, neg, **params)
    regime = b"".join(branches.tobytes() for *_, branches in queries)
    return float(value), regime


def fd_roundoff(params, ours, pos, neg, floors, h=harness.FD_STEP):
    """FD's own round-off, subtracted from each entry's error by ``harness.frozen_fd_error``, as the harness
    does (``verification.harness.fd_error``): 8 eps / h times the size of what the value is computed
    from, the value's terms plus its sensitivity to the rounding of the scores, sum_qj sizes_qj |s|max
    (a score rounded by eps |s| moves l_q by at most sizes_qj eps |s|), |s|max the largest |T|.
    """
    S0 = ours.sim
    M, queries, n_alive = _queries(S0, pos, neg, **params)
    T = S0 if M is None else M @ np.where(np.eye(S0.shape[0], dtype=bool), 1.0, S0) @ M.T
    score_scale = max(1.0, float(np.max(np.abs(T), initial=0.0)))
    sizes = sum(float(np.sum(size)) for *_, size, _, _ in queries) / max(n_alive, 1)
    return 8 * 2.0**-52 * (floors["value"] + sizes * score_scale) / h


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


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"paper": {"official RS@k rules": official}},
    frozen_value=frozen_value,
    scales=scales,
    fd_roundoff=fd_roundoff,
)
