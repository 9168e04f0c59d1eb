r"""Second opinions on Smooth-AP: torch formulation, plain loop, PML SmoothAPLoss, the official rules.

Checked by verification/harness.py's frozen-value path (nothing is detached: ``frozen_value``
ignores its frozen argument but the base point), because two of the generic harness's comparisons
measure round-off against the wrong scale. What the failing cases showed, entry by entry:

* Cancellation in G (``scales``). A positive's weight is a signed sum,
  G_ij = -(1/N') [sum_{p != j} a_P(p) G'_jp - a_P(j) sum_{k in P\j} G'_kj + a_N(j) sum_n G'_nj]
  (gpwref.losses.smooth_ap), and when positives j and p are tied or duplicated the first two sums
  hold a_P(p) G'(0) and a_P(j) G'(0) = a_P / (4 tau), equal in exact arithmetic, so G_ij is their
  small difference. Examples (``make_batch(np.random.default_rng(seed), m=(1, 9), d=(2, 5), ...)``):
  two duplicated positives under a far higher negative (seed 111, duplicates): terms ~25, G ~1e-9,
  the three codes differ by 2e-17, one ulp of the terms (loop:G read 1e-8 of max|G|); a query and a
  duplicate of it at S = 1 + 1 ulp with every negative past the clamp (seed 14, duplicates +
  ref_includes_batch, include_query, clamp 50): terms ~1e-21, G ~1.6e-35 (the exact G of that S:
  sigmoid(+-2e-14) is 1/2 -+ 5e-15), codes differ by 2e-37 (autograd:G and loop:G read 1.2e-2); the
  same layout with S = 1 exactly (seed 117, with_ref) has G = 0 in gpwref and ~1e-35 in torch, whose
  S from X is one ulp off, so autograd:dX read 1.0 against a zero scale. In every case the
  difference is ~2^-53 times the terms, so the floor of the G, dX and fd comparisons is the size
  of those terms, max over (i, j) of (1/N') [sum_{p != j} a_P(p) G'_jp + a_P(j) sum_{k in P\j} G'_kj
  + a_N(j) sum_n G'_nj] (negatives: (1/N') sum_p a_N(p) G'_jp, which does not cancel), computed here
  by its own plain loop. The value (1/N') sum_i (1/|P|) sum_p R_N / R_A is a sum of non-negative
  terms and gets no floor.
* Finite differences (``frozen_value``). Central differences with h = 1e-6 carry round-off
  ~2^-53 |L| / h ~ 1e-10 (|L| ~ 1), and with tau = 0.01 a batch whose items are all ranked far
  apart can have |L| ~ 1 (a negative far above a positive) while every G' is ~e^{-|x|/tau} / tau,
  1e-30 and below: the relative error is then far above 1, though the formula is right. Truncation
  is not the issue (h^2 L'''/6 is ~1e-9 of G: each derivative of a sigmoid at temperature tau adds
  a factor of at most ~1/tau). So the increments are computed exactly: ``frozen_value`` returns
  L(S_eval) - L(S_frozen), summed over the rows that differ, each row's value evaluated in mpmath
  with enough digits to resolve its smallest sigmoid tail (30 + max |x/tau| / ln 10), then rounded
  once; the central difference then carries only 2^-53 of the increment. The clamp of the exponent
  at |x/tau| = c is the only kink: ``regime`` lists, for each changed row, the pairs past the clamp
  (|x/tau| > c strictly, as torch.clamp passes the gradient at |x/tau| = c), and an entry whose step
  crosses it is skipped.
* Ties are not kinks: sigmoid is smooth at x = 0, and every code (gpwref, torch, loop, PML, the
  official rules) gives a tie sigmoid(0) = 1/2 and slope 1/(4 tau), ranking each of the two items
  half above the other. The self pair (k = p) is excluded by index, never by value, so a duplicate
  of the query (S = 1, tied with the query's own score 1) is ranked like any other item.
"""

from __future__ import annotations

import functools
import math

import mpmath
import numpy as np
import torch

from gpwref.testing import Batch
from ..common import NotApplicable
from .contract import LossRefs


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


def _plain_sigmoid(x, temperature, clamp):
    """sigmoid(x / temperature), the exponent -x/t clipped to [-clamp, clamp] first when clamped."""
    e = -x / temperature
    if clamp is not None:
        e = min(max(e, -clamp), clamp)
    return 1 / (1 + math.exp(e)) if e < 700 else 0.0


def _plain_slope(x, temperature, clamp):
    """d sigmoid(x / temperature) / dx; 0 past the clamp (|x/t| > clamp)."""
    e = -x / temperature
    if (clamp is not None and abs(e) > clamp) or abs(e) > 700:
        return 0.0
    return math.exp(-abs(e)) / (1 + math.exp(-abs(e))) ** 2 / temperature


def _queries(S, pos, neg, include_query):
    """Per query with a relevant item: (i, items), items = (score, relevant, column or None for the query)."""
    m, n = S.shape
    queries = []
    for i in range(m):
        items = [(S[i, j], pos[i, j], j) for j in range(n) if pos[i, j] or neg[i, j]]
        if include_query:
            items.append((1.0, True, None))
        if any(rel for _, rel, _ in items):
            queries.append((i, items))
    return queries


def loop(S, pos, neg, profile, *, temperature, include_query, sigmoid_clamp):
    """Per query and per pair of items, the weights from the closed form in the module docstring."""
    m, n = S.shape

    def sig(x):
        return _plain_sigmoid(x, temperature, sigmoid_clamp)

    def slope(x):
        return _plain_slope(x, temperature, sigmoid_clamp)

    queries = _queries(S, pos, neg, include_query)
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


def scales(params, ours, pos, neg):
    r"""The cancellation floor of G (module docstring): the largest sum of the absolute terms of one
    weight, (1/N') [sum_{p != j} a_P(p) G'_jp + a_P(j) sum_{k in P\j} G'_kj + a_N(j) sum_n G'_nj] for
    a positive j, (1/N') sum_p a_N(p) G'_jp for a negative, with a_P(p) = R_N(p) / (|P| R_A(p)^2) and
    a_N(p) = R_P(p) / (|P| R_A(p)^2)."""
    tau, clamp = params["temperature"], params["sigmoid_clamp"]
    queries = _queries(ours.sim, pos, neg, params["include_query"])
    floor = 0.0
    for _, items in queries:
        s = [x for x, _, _ in items]
        P = [a for a in range(len(items)) if items[a][1]]
        N = [a for a in range(len(items)) if not items[a][1]]
        slope = [[_plain_slope(s[k] - s[p], tau, clamp) for p in range(len(s))] for k in range(len(s))]  # [k][p] = G'_kp
        a_pos, a_neg = {}, {}
        for p in P:
            r_pos = 1 + sum(_plain_sigmoid(s[k] - s[p], tau, clamp) for k in P if k != p)
            r_neg = sum(_plain_sigmoid(s[k] - s[p], tau, clamp) for k in N)
            a_pos[p] = r_neg / (len(P) * (r_pos + r_neg) ** 2)
            a_neg[p] = r_pos / (len(P) * (r_pos + r_neg) ** 2)
        for j in range(len(items)):
            if items[j][2] is None:
                continue
            if items[j][1]:
                size = (sum(a_pos[p] * slope[j][p] for p in P if p != j) + a_pos[j] * sum(slope[k][j] for k in P if k != j)
                        + a_neg[j] * sum(slope[k][j] for k in N))
            else:
                size = sum(a_neg[p] * slope[j][p] for p in P)
            floor = max(floor, size / len(queries))
    return {"G": floor}


@functools.lru_cache(maxsize=65536)
def _row_value_mp(scores: tuple, relevant: tuple, temperature: float, clamp, dps: int):
    """One query's (1/|P|) sum_p R_N(p) / R_A(p) at ``dps`` digits, and the pairs (k, p) past the clamp."""
    with mpmath.workdps(dps):
        tau = mpmath.mpf(temperature)
        s = [mpmath.mpf(x) for x in scores]
        P = [a for a in range(len(s)) if relevant[a]]
        clamped = []

        def sig(k, p):
            e = -(s[k] - s[p]) / tau
            if clamp is not None:
                if abs(e) > clamp:
                    clamped.append((k, p))
                e = min(max(e, -clamp), clamp)
            return 1 / (1 + mpmath.exp(e))

        total = mpmath.mpf(0)
        for p in P:
            r_pos = 1 + mpmath.fsum(sig(k, p) for k in P if k != p)
            r_neg = mpmath.fsum(sig(k, p) for k in range(len(s)) if not relevant[k])
            total += r_neg / (r_pos + r_neg)
        return (total / len(P) if P else mpmath.mpf(0)), frozenset(clamped)


def _row_key(S_row, pos_row, neg_row, include_query):
    cols = np.flatnonzero(pos_row | neg_row)
    scores = [float(S_row[j]) for j in cols] + ([1.0] if include_query else [])
    relevant = [bool(pos_row[j]) for j in cols] + ([True] if include_query else [])
    return tuple(scores), tuple(relevant)


def frozen_value(S_eval, S_frozen, pos, neg, profile, *, temperature, include_query, sigmoid_clamp):
    """L(S_eval) - L(S_frozen), exact to 2^-53 of itself (mpmath, module docstring), and the regime:
    per changed row, the pairs past the clamp. Nothing is detached; S_frozen is the base point."""
    m = S_eval.shape[0]
    alive = sum(1 for i in range(m) if include_query or pos[i].any())
    total, regime = mpmath.mpf(0), []
    for i in range(m):
        if np.array_equal(S_eval[i], S_frozen[i]):
            continue
        rows = [_row_key(S[i], pos[i], neg[i], include_query) for S in (S_eval, S_frozen)]
        spread = max((max(r[0]) - min(r[0]) for r in rows if r[0]), default=0.0)
        reach = spread / temperature if sigmoid_clamp is None else min(spread / temperature, sigmoid_clamp)
        dps = 30 + int(math.ceil(reach / math.log(10)))
        (value_eval, clamped), (value_frozen, _) = (_row_value_mp(*r, temperature, sigmoid_clamp, dps) for r in rows)
        with mpmath.workdps(dps):
            total += value_eval - value_frozen
        regime.append((i, clamped))
    return (float(total / alive) if alive else 0.0), tuple(regime)


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


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}, "paper": {"official Smooth-AP rules": official}},
    frozen_value=frozen_value,
    scales=scales,
)
