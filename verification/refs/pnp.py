r"""Second opinions on PNP: torch formulation, plain loop, PML PNPLoss.

Checked by verification/harness.py's frozen-value path (nothing is detached; no floor:
each weight is a sum of terms of one sign, G_in = (1/N'|P|) sum_p F'(R_p) s'_np >= 0 and
G_ip = -(1/N'|P|) F'(R_p) sum_n s'_np <= 0, and the value a sum of F(R) >= 0, so nothing cancels).
What the failing cases showed:

* Finite differences (``frozen_value``). With anneal 0.01 a batch with a negative far above a
  positive has |L| ~ 1 while every slope s' ~ e^{-|x|/a} / a is tiny, so a float64 central
  difference (round-off ~2^-53 |L| / h per term of the value, a few 1e-10 in all) is noise against
  max|G|; the generic check's allowance of 8 ulps of |L| / h is exceeded once the value sums many
  terms (a reference set, duplicates). Truncation h^2 L'''/6 is ~1e-9 of G (each derivative of
  the sigmoid adds at most ~1/a). As for Smooth-AP (verification/refs/smooth_ap.py), the
  increments are exact: ``frozen_value`` returns L(S_eval) - L(S_frozen) over the changed rows,
  evaluated in mpmath with 30 + 2 max|x/a| / ln 10 digits (F's plain forms, such as
  b R - log(1 + b R) for Ib, lose up to twice the digits of R), and ``regime`` lists the pairs
  past the clamp (|x/a| > c; the clamp boundary is the only kink).
* PML's Ib gradient (``_require_resolvable_ib_gradient``). PML writes F = (bR - log(1 + bR))/b^2,
  so its autograd F' = (1/b)(1 - 1/(1 + bR)) is a difference of terms of size 1/b, exact 0 once
  bR < 2^-53: on a well-separated batch (every R < ~1e-7; make_batch seed 56, singletons, PML dX
  exactly 0 against gpwref's exact ~1e-33, real dX read 0.24; seed 9: 1.1e-4) PML's dX is its own
  round-off. The real comparison is declared not applicable exactly where 8 ulps of PML's term
  sizes exceed 1% of the real tolerance against the exact G (8 of 199 plain batches).
"""

from __future__ import annotations

import functools
import math

import mpmath
import numpy as np
import torch

from ..common import NotApplicable
from .smooth_ap import _sigmoid, with_query
from .contract import LossRefs


def _x_minus_log1p_torch(x):
    small = x.detach() < 0.1
    xs = torch.where(small, x, torch.zeros_like(x))
    series = sum(((-1.0) ** k) * xs**k / k for k in range(2, 22))
    return torch.where(small, series, x - torch.log1p(torch.where(small, torch.zeros_like(x), x)))


def _penalty_torch(R, variant, b, alpha):
    if variant == "O":
        return R
    if variant == "Ds":
        return torch.log1p(R)
    if variant == "Iu":
        return (1 + R) * torch.log1p(R)
    if variant == "Ib":
        return _x_minus_log1p_torch(b * R) / b**2
    return -torch.expm1(-alpha * torch.log1p(R))  # Dq: 1 - (1 + R)^-alpha


def torch_loss(S, pos, neg, profile, *, variant, b, alpha, anneal, include_query, sigmoid_clamp):
    has_pos = pos.any(dim=1, keepdim=True)
    S, pos, neg = with_query(S, pos, neg, include_query)
    if include_query:  # PML sets the diagonal only for anchors of positive pairs
        pos = torch.cat([pos[:, :-1], pos[:, -1:] & has_pos], dim=1)
    D = S[:, :, None] - S[:, None, :]  # [i, n, p] = s_n - s_p
    R = (_sigmoid(D, anneal, sigmoid_clamp) * neg[:, :, None]).sum(dim=1)  # [i, p]
    F = torch.where(pos, _penalty_torch(R, variant, b, alpha), torch.zeros_like(R))
    alive = pos.any(dim=1)
    if not alive.any():
        return (S * 0).sum()
    return (F.sum(dim=1)[alive] / pos.sum(dim=1)[alive]).mean()


def loop(S, pos, neg, profile, *, variant, b, alpha, anneal, include_query, sigmoid_clamp):
    m, n = S.shape

    def sig(x):
        e = -x / anneal
        if sigmoid_clamp is not None:
            e = min(max(e, -sigmoid_clamp), sigmoid_clamp)
        return 1 / (1 + math.exp(e)) if e < 700 else 0.0

    def slope(x):
        e = -x / anneal
        if (sigmoid_clamp is not None and abs(e) > sigmoid_clamp) or abs(e) > 700:
            return 0.0
        return math.exp(-abs(e)) / (1 + math.exp(-abs(e))) ** 2 / anneal

    def F(R):
        if variant == "O":
            return R, 1.0
        if variant == "Ds":
            return math.log1p(R), 1 / (1 + R)
        if variant == "Iu":
            return (1 + R) * math.log1p(R), 1 + math.log1p(R)
        if variant == "Ib":
            x = b * R
            value = sum((-1) ** k * x**k / k for k in range(2, 22)) if x < 0.1 else x - math.log1p(x)
            return value / b**2, R / (1 + b * R)
        return -math.expm1(-alpha * math.log1p(R)), alpha * (1 + R) ** (-alpha - 1)  # 1 - (1 + R)^-alpha

    queries = []
    for i in range(m):
        P = [(S[i, j], j) for j in range(n) if pos[i, j]]
        if P and include_query:
            P.append((1.0, None))
        N = [(S[i, j], j) for j in range(n) if neg[i, j]]
        if P:
            queries.append((i, P, N))
    value, G = 0.0, np.zeros((m, n))
    for i, P, N in queries:
        for sp, p in P:
            R = sum(sig(sn - sp) for sn, _ in N)
            f, df = F(R)
            value += f / len(P) / len(queries)
            for sn, k in N:
                G[i, k] += df * slope(sn - sp) / len(P) / len(queries)
            if p is not None:
                G[i, p] = -df * sum(slope(sn - sp) for sn, _ in N) / len(P) / len(queries)
    return value, G


@functools.lru_cache(maxsize=65536)
def _row_value_mp(positives: tuple, negatives: tuple, variant, b, alpha, anneal, clamp, dps):
    """One query's (1/|P|) sum_p F(R(p)) at ``dps`` digits, and the pairs (n, p) past the clamp."""
    with mpmath.workdps(dps):
        a = mpmath.mpf(anneal)
        clamped = []
        total = mpmath.mpf(0)
        for p, sp in enumerate(positives):
            R = mpmath.mpf(0)
            for n, sn in enumerate(negatives):
                e = -(mpmath.mpf(sn) - mpmath.mpf(sp)) / a
                if clamp is not None:
                    if abs(e) > clamp:
                        clamped.append((n, p))
                    e = min(max(e, -clamp), clamp)
                R += 1 / (1 + mpmath.exp(e))
            if variant == "O":
                F = R
            elif variant == "Ds":
                F = mpmath.log(1 + R)
            elif variant == "Iu":
                F = (1 + R) * mpmath.log(1 + R)
            elif variant == "Ib":
                F = (b * R - mpmath.log(1 + b * R)) / b**2
            else:
                F = 1 - (1 + R) ** (-alpha)
            total += F
        return total / len(positives), frozenset(clamped)


def frozen_value(S_eval, S_frozen, pos, neg, profile, *, variant, b, alpha, anneal, include_query, sigmoid_clamp):
    """L(S_eval) - L(S_frozen), exact to 2^-53 of itself (mpmath, module docstring), and the regime:
    per changed row, the pairs past the clamp. Nothing is detached; S_frozen is the base point."""
    m = S_eval.shape[0]
    alive = int(np.count_nonzero(pos.any(axis=1)))
    total, regime = mpmath.mpf(0), []
    for i in range(m):
        if not pos[i].any() or np.array_equal(S_eval[i], S_frozen[i]):
            continue
        rows = []
        for S in (S_eval, S_frozen):
            positives = tuple(float(x) for x in S[i][pos[i]]) + ((1.0,) if include_query else ())
            rows.append((positives, tuple(float(x) for x in S[i][neg[i]])))
        scores = [x for r in rows for part in r for x in part]
        spread = max(scores) - min(scores)
        reach = spread / anneal if sigmoid_clamp is None else min(spread / anneal, sigmoid_clamp)
        dps = 30 + 2 * int(math.ceil(reach / math.log(10)))
        (value_eval, clamped), (value_frozen, _) = (
            _row_value_mp(*r, variant, b, alpha, anneal, sigmoid_clamp, dps) for r in rows
        )
        with mpmath.workdps(dps):
            total += value_eval - value_frozen
        regime.append((i, clamped))
    return (float(total / alive) if alive else 0.0), tuple(regime)


def _require_resolvable_ib_gradient(X, labels, b, anneal):
    """NotApplicable where PML's own round-off swamps its Ib gradient (module docstring).

    PML writes F = (b R - log(1 + b R)) / b^2, so autograd forms F'(R) = (1/b) (1 - 1/(1 + b R)):
    two terms of size 1/b whose difference is R / (1 + b R), with an absolute error ~2^-53 / b. Its G
    entry is (PML's masks: the query is its own positive) the sum over the entry's sigmoid slopes s'
    of F'(R) s', with an error ~2^-53 (1/b) times the sum of those s'. Where 8 ulps of that error
    bound exceed 1e-11 (1% of the real tolerance) of the largest exact G, PML's dX is round-off of
    its formula, not the loss (a well-separated batch, every R < ~1e-7: PML's dX is exactly 0).
    """
    U = torch.nn.functional.normalize(X, dim=1)
    S = U @ U.T
    y = torch.as_tensor(labels)
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool)
    neg = ~same
    has_pos = (same & ~eye).any(dim=1, keepdim=True)
    pos = same & has_pos  # the diagonal too, for anchors with a positive (as PML)
    e = torch.clamp(-(S[:, :, None] - S[:, None, :]) / anneal, -50.0, 50.0)  # [q, n, p], x = s_n - s_p
    sig = 1.0 / (1.0 + torch.exp(e))
    slope = torch.where(e.abs() <= 50.0, sig / (1.0 + torch.exp(-e)) / anneal, torch.zeros_like(sig))  # no 1 - sig
    pair = (neg[:, :, None] & pos[:, None, :]).to(S.dtype)
    slope = slope * pair
    R_ = (sig * pair).sum(dim=1)  # [q, p]
    dF = R_ / (1.0 + b * R_)
    per_row = 1.0 / pos.sum(dim=1).clamp(min=1).to(S.dtype)[:, None]
    exact = per_row * ((slope * dF[:, None, :]).sum(dim=2) + dF * slope.sum(dim=1))  # [q, j]: j as negative, as positive
    terms = per_row * (slope.sum(dim=2) + slope.sum(dim=1)) / b
    if 8 * 2.0**-53 * float(terms.max()) > 1e-11 * float(exact.abs().max()):
        raise NotApplicable(
            "PML's Ib gradient (1/b)(1 - 1/(1 + bR)) cancels: its round-off (~2^-53/b per slope) exceeds 1% of the "
            "tolerance against this batch's exact G (every R tiny)"
        )


def pml(X, labels, R, ref_labels, ref_self, normalize, *, variant, b, alpha, anneal, include_query, sigmoid_clamp):
    """pytorch-metric-learning PNPLoss: the query is its own positive, exponent clamped at 50."""
    from pytorch_metric_learning.losses import PNPLoss

    if not include_query or sigmoid_clamp != 50.0:
        raise NotApplicable("PML's PNP counts the query as its own positive and clamps the exponent at 50")
    if R is not None or not normalize:
        raise NotApplicable("PML's PNP takes no ref_emb and normalises rows")
    if variant == "Ib":
        _require_resolvable_ib_gradient(X.detach(), labels, b, anneal)
    return PNPLoss(b=b, alpha=alpha, anneal=anneal, variant=variant)(X, torch.as_tensor(labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    frozen_value=frozen_value,
)
