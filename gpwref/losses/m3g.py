r"""Multi-marginal matching gap (M3G), Piran, Klein, Thornton, Cuturi, ICML 2024, with k views.

k views x^1..x^k of the same n items (row i of every view is item i). With the pair similarities
S^ab = U_a U_b^T of the (normalised) views and the cost tensor::

    C(i_1, ..., i_k) = sum_{a < b} c^ab(i_a, i_b),       c^ab = 2 - 2 S^ab

(the squared Euclidean distance of unit rows), the loss is the gap between the cost of the known
matching (item i in every view) and the entropic optimal transport cost::

    M3G = (1/n) sum_i C(i, ..., i)  -  OT_eps(C)
    OT_eps(C) = min_{P >= 0, every marginal of P = 1/n}  <P, C> + eps KL(P || (1/n)^{(x) k})

OT_eps is solved by log-domain multi-marginal Sinkhorn (cyclic updates of the k potentials f_l,
log P = sum_l (f_l + eps log(1/n)) / eps - C / eps) until the summed L1 error of the k marginals is
<= ``tol``; ``max_iter`` passes without reaching it raise a GpwrefError (never a silent
approximation). The value is the dual objective sum_l <f_l, 1/n> + eps (1 - mass of P) at the final
potentials. Its gradient follows from the envelope (Danskin) theorem: dOT_eps/dC = P, the optimal
coupling, so with P_ab the (a, b) two-view marginal of P::

    dM3G/dS^ab_ij = -2 [ (1/n) [i == j] - P_ab(i, j) ]

GPW reading (k = 2: S = S^12, rows = items of view 1, columns = items of view 2): the matching pair
(i, i) is the positive and is pulled with weight 2 (1/n - P_ii) >= 0 (P_ii <= 1/n by the marginal
constraint; a computed P_ii above 1/n by round-off is clipped to 1/n); every other pair (i, j) is pushed with weight 2 P_ij >= 0. It fits the GPW frame; the weights
are negative-relative (P is a joint softmax over the whole matrix, normalised along rows and
columns), and the positive's weight is how much of its own mass the coupling moves elsewhere.

Frames:
* ``value_and_grad`` (the catalog entry, k = 2): ``compute("m3g", view1, item_ids, ref=view2,
  ref_labels=item_ids2)`` where each item id occurs exactly once in each view (the positives form
  a one-to-one matching); anything else raises a GpwrefError. The batch cannot be its own
  reference set (the identity term would be the self pairs).
* ``matching_gap(views, ...)``: any k >= 2 views, returns the value, the coupling, G for every view
  pair and dL/dview; it needs n^k memory.

Conventions and assumptions: eps is a fixed number (OTT's default, 0.05 x the standard deviation
of the cost tensor, is recomputed from the data and, unless eps is passed, differentiated through;
gpwref does not model that); the KL is relative to the product of the uniform marginals (OTT's
convention; with the entropy -H(P) instead the value shifts by eps k log n and G is unchanged).
Separable costs do not change M3G: adding h_a(i_a) terms shifts both terms by sum_a <h_a, 1/n>, so the
cost 2 - 2 S^ab gives the same M3G and gradients as the squared Euclidean cost ||x^a - x^b||^2 for
raw rows too (normalize=False).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..entry import LossEntry, integer, number
from ..errors import GpwrefError, as_float_matrix, check_memory
from ..pairs import PairResult, Pairs, grad_embeddings, through_normalisation, unit_rows
from ..profiles import Profile

MAX_TENSOR_ENTRIES = 4_000_000


@dataclass(frozen=True)
class Transport:
    """A solved entropic multi-marginal OT problem."""

    value: float  # OT_eps(C), the dual objective at the final potentials
    coupling: np.ndarray  # P, shape (n,) * k
    potentials: tuple[np.ndarray, ...]
    iterations: int
    marginal_error: float  # summed L1 error of the k marginals


def sinkhorn(cost: np.ndarray, *, eps: float, tol: float, max_iter: int) -> Transport:
    """Entropic multi-marginal OT with uniform marginals 1/n on every axis of ``cost``.

    Log-domain Sinkhorn passes (cyclic exact updates of each potential), at most ``max_iter``,
    stopping once the summed L1 marginal error is <= ``tol``. Sinkhorn's linear rate collapses when
    eps is small against the cost gaps (the contraction factor tends to 1), so after
    ``SINKHORN_PASSES`` passes without reaching ``tol`` the same dual is maximised by damped Newton
    steps (at most ``max_iter`` of them): gradient a - marginals(P), Hessian -(1/eps) M with
    M = [diag(marginal_l) on the diagonal blocks, two-view marginals P_lm off it], solved by least
    squares (M is singular along the k - 1 gauge directions f_l + c_l, sum c_l = 0).
    """
    k, n = cost.ndim, cost.shape[0]
    log_a = -np.log(n)
    scaled = -cost / eps
    largest = float(np.max(np.abs(scaled), initial=0.0))
    if not largest <= SCALED_COST_LIMIT:  # the exponents f/eps - C/eps would keep no correct digit
        raise GpwrefError("embeddings", f"m3g's transport needs |cost| / eps <= {SCALED_COST_LIMIT:.3g} (float64 keeps "
                          "no digit of exp(f/eps - C/eps) beyond it): with normalize=False scale the rows down, or raise eps",
                          f"max |cost| / eps = {largest:.3g}")
    f = [np.zeros(n) for _ in range(k)]
    passes = 0
    for passes in range(1, max_iter + 1):
        for axis in range(k):
            # f_axis(i) = -eps log sum_{others} exp(sum_{l != axis} (f_l/eps + log a) - C/eps)
            total = scaled.copy()
            for other in range(k):
                if other != axis:
                    total += _along(f[other] / eps + log_a, other, k)
            others = tuple(l for l in range(k) if l != axis)
            f[axis] = -eps * _logsumexp(total, others)
        coupling, error = _coupling(scaled, f, eps, log_a)
        if error <= tol:
            return Transport(_dual(f, coupling, eps, n), coupling, tuple(f), passes, error)
        if passes >= SINKHORN_PASSES:
            break
    for step in range(1, max_iter + 1):
        f, coupling, new_error = _newton_step(scaled, f, eps, log_a, coupling)
        if new_error <= tol:
            return Transport(_dual(f, coupling, eps, n), coupling, tuple(f), passes + step, new_error)
        if new_error >= error:
            break  # no step length lowers the error: round-off floor reached
        error = new_error
    raise GpwrefError(
        "max_iter",
        f"the OT solver did not reach a marginal error <= tol = {tol:g} in {passes} Sinkhorn passes and "
        f"at most {max_iter} Newton steps (eps = {eps:g}); raise max_iter or eps, or loosen tol",
        f"marginal error {error:.3g}",
    )


SINKHORN_PASSES = 50
# |C| / eps beyond this: exponents carry an absolute round-off of 2^-52 |C| / eps > 1e-3 (found by
# tests/test_property_finite.py: rows of norm 1e40 with normalize=False crashed least squares)
SCALED_COST_LIMIT = 1e-3 * 2.0**52


def _logsumexp(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """log sum exp over ``axes`` with the maximum taken out (rows of -inf give -inf)."""
    top = values.max(axis=axes, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(values - top).sum(axis=axes, keepdims=True)) + top).reshape(-1)


def _coupling(scaled, f, eps, log_a):
    k, n = scaled.ndim, scaled.shape[0]
    with np.errstate(over="ignore"):  # a rejected Newton trial may overflow; its error is then inf
        coupling = np.exp(scaled + sum(_along(f[l] / eps + log_a, l, k) for l in range(k)))
    error = float(sum(np.abs(_marginal(coupling, l) - 1.0 / n).sum() for l in range(k)))
    return coupling, error


def _marginal(coupling, axis):
    return coupling.sum(axis=tuple(x for x in range(coupling.ndim) if x != axis))


def _dual(f, coupling, eps, n):
    return float(sum(fl.sum() for fl in f) / n + eps * (1.0 - coupling.sum()))


def _newton_step(scaled, f, eps, log_a, coupling):
    k, n = scaled.ndim, scaled.shape[0]
    gradient = np.concatenate([1.0 / n - _marginal(coupling, l) for l in range(k)])
    hessian = np.zeros((k * n, k * n))  # M (the dual's Hessian is -M / eps)
    for a in range(k):
        hessian[a * n:(a + 1) * n, a * n:(a + 1) * n] = np.diag(_marginal(coupling, a))
        for b in range(a + 1, k):
            block = _two_view_marginal(coupling, a, b)
            hessian[a * n:(a + 1) * n, b * n:(b + 1) * n] = block
            hessian[b * n:(b + 1) * n, a * n:(a + 1) * n] = block.T
    direction = eps * np.linalg.lstsq(hessian, gradient, rcond=None)[0]
    # Backtrack on the marginal error (near the optimum the dual is flat to round-off, so its value
    # cannot rank steps); a step that fails at every length leaves f unchanged.
    error = float(np.abs(gradient).sum())
    t = 1.0
    while t >= 1e-6:
        trial = [f[l] + t * direction[l * n:(l + 1) * n] for l in range(k)]
        trial_coupling, trial_error = _coupling(scaled, trial, eps, log_a)
        if trial_error < error:
            return trial, trial_coupling, trial_error
        t /= 2
    return f, coupling, error


def _along(vector: np.ndarray, axis: int, k: int) -> np.ndarray:
    shape = [1] * k
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


def _cost_tensor(similarities: dict[tuple[int, int], np.ndarray], k: int, n: int) -> np.ndarray:
    cost = np.zeros((n,) * k)
    for (a, b), S in similarities.items():
        shape = [1] * k
        shape[a], shape[b] = n, n
        cost = cost + (2.0 - 2.0 * S).reshape(shape)
    return cost


def _two_view_marginal(coupling: np.ndarray, a: int, b: int) -> np.ndarray:
    k = coupling.ndim
    return coupling.sum(axis=tuple(x for x in range(k) if x not in (a, b)))


def gap_of_similarities(similarities: dict[tuple[int, int], np.ndarray], k: int, *, eps: float, tol: float,
                        max_iter: int) -> tuple[float, dict[tuple[int, int], np.ndarray], Transport]:
    """M3G and dM3G/dS^ab for every view pair (a < b), from the pair similarity matrices."""
    n = next(iter(similarities.values())).shape[0]
    if n**k > MAX_TENSOR_ENTRIES:
        raise GpwrefError("views", f"M3G needs the n^k cost tensor; n^k = {n}^{k} exceeds {MAX_TENSOR_ENTRIES} entries")
    cost = _cost_tensor(similarities, k, n)
    transport = sinkhorn(cost, eps=eps, tol=tol, max_iter=max_iter)
    identity = float(np.mean([cost[(i,) * k] for i in range(n)]))
    eye = np.eye(n, dtype=bool)
    grads = {}
    for (a, b) in similarities:
        push = 2.0 * _two_view_marginal(transport.coupling, a, b)
        # the true coupling has P_ii <= 1/n; a computed one may exceed it by round-off (<= tol):
        # clip, so that the matching pair's weight is never a push
        grads[(a, b)] = np.where(eye, -np.maximum(2.0 / n - push, 0.0), push)
    return identity - transport.value, grads, transport


@dataclass(frozen=True)
class MatchingGap:
    loss: float
    grad_sim: dict  # (a, b) -> dM3G/dS^ab, a < b
    grad_views: list  # dM3G/d(view a), through the normalisation when normalize=True
    coupling: np.ndarray
    iterations: int
    marginal_error: float
    potentials: tuple = ()


def matching_gap(views, *, eps: float = 0.1, tol: float = 1e-13, max_iter: int = 20000, normalize: bool = True) -> MatchingGap:
    """M3G of k >= 2 views (each n x d, row i = item i) with its GPW weights and view gradients."""
    views = [as_float_matrix(v, f"views[{a}]") for a, v in enumerate(views)]
    k = len(views)
    if k < 2:
        raise GpwrefError("views", "M3G needs at least 2 views", f"{k} view(s)")
    n, d = views[0].shape
    for a, v in enumerate(views):
        if v.shape != (n, d):
            raise GpwrefError(f"views[{a}]", f"every view must have the shape of views[0] {(n, d)}", v.shape)
    for name, value in (("eps", eps), ("tol", tol)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0):
            raise GpwrefError(name, "must be a finite number > 0", repr(value))
    if not (isinstance(max_iter, int) and not isinstance(max_iter, bool) and max_iter >= 1):
        raise GpwrefError("max_iter", "must be an integer >= 1", repr(max_iter))
    check_memory(n, n, k * (k - 1) // 2 + 2, "views")
    if normalize:
        units, norms = zip(*(unit_rows(v, f"views[{a}]") for a, v in enumerate(views)))
    else:
        units, norms = tuple(views), (None,) * k
    similarities = {(a, b): units[a] @ units[b].T for a, b in combinations(range(k), 2)}
    loss, grads, transport = gap_of_similarities(similarities, k, eps=eps, tol=tol, max_iter=max_iter)
    grad_views = []
    for a in range(k):
        grad_unit = np.zeros((n, d))
        for (p, q), G in grads.items():
            if p == a:
                grad_unit += G @ units[q]
            elif q == a:
                grad_unit += G.T @ units[p]
        if normalize:
            grad_unit = through_normalisation(grad_unit, units[a], norms[a])
        grad_views.append(grad_unit)
    return MatchingGap(loss, grads, grad_views, transport.coupling, transport.iterations, transport.marginal_error,
                       transport.potentials)


def matching(pairs: Pairs) -> np.ndarray:
    """The column matched to each row (the positives must be a one-to-one matching), or raise."""
    if pairs.ref_is_batch:
        raise GpwrefError("ref", "m3g compares two views: pass the second view as ref= with ref_labels (the batch cannot be its own second view)")
    m, n = pairs.pos.shape
    if m != n:
        raise GpwrefError("ref", f"m3g needs the same n items in both views (ref must have {m} rows)", f"{n} rows")
    if pairs.self_pair.any():
        raise GpwrefError("ref_self", "m3g has no self pairs: the second view is a separate copy of every item (leave ref_self=None)")
    per_row = pairs.pos.sum(axis=1)
    per_col = pairs.pos.sum(axis=0)
    if np.any(per_row != 1) or np.any(per_col != 1):
        raise GpwrefError(
            "labels",
            "m3g needs item ids that occur exactly once in each view (the positives must be a one-to-one matching)",
            f"row positives {per_row.tolist()}, column positives {per_col.tolist()}",
        )
    return np.argmax(pairs.pos, axis=1)


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, eps: float, tol: float, max_iter: int) -> PairResult:
    match = matching(pairs)
    n = S.shape[0]
    aligned = S[:, match]  # column i is row i's own item: the identity matching
    loss, grads, transport = gap_of_similarities({(0, 1): aligned}, 2, eps=eps, tol=tol, max_iter=max_iter)
    grad_sim = np.empty_like(S)
    grad_sim[:, match] = grads[(0, 1)]
    coupling = np.empty_like(S)
    coupling[:, match] = transport.coupling
    # per anchor (row i): (1/n) C_ii minus row i's primal share of OT_eps,
    # sum_j P_ij C_ij + eps sum_j P_ij log(n^2 P_ij); the primal and dual values agree up to the
    # marginal error, and the remainder is spread evenly so that the rows add up to the loss.
    cost_rows = (2.0 - 2.0 * aligned)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.where(transport.coupling > 0, transport.coupling * np.log(transport.coupling * n * n), 0.0)
    primal_rows = (transport.coupling * cost_rows).sum(axis=1) + eps * entropy.sum(axis=1)
    per_anchor = np.diag(cost_rows) / n - primal_rows
    per_anchor = per_anchor + (loss - per_anchor.sum()) / n  # the dual and primal values differ by round-off
    return PairResult(
        loss=float(loss),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos.copy(),
        neg_used=pairs.neg.copy(),
        extras={
            "coupling": coupling,
            "iterations": transport.iterations,
            "marginal_error": transport.marginal_error,
            # dual potentials: of the rows, and of the columns in S's own column order
            "potentials": (transport.potentials[0], transport.potentials[1][np.argsort(match)]),
        },
    )


ENTRY = LossEntry(
    name="m3g",
    function=value_and_grad,
    hyper={"eps": number(above=0), "tol": number(above=0), "max_iter": integer(at_least=1)},
    defaults={"paper": {"eps": 0.1, "tol": 1e-13, "max_iter": 1000}},
    reference="Piran, Klein, Thornton, Cuturi. Contrasting Multiple Representations with the Multi-Marginal Matching Gap. ICML 2024",
    similarities=("negative-relative",),
    variants=({}, {"eps": 0.5}),
    limits="two views in the catalog frame (second view as ref, item ids once per view); k views via gpwref.losses.m3g.matching_gap (n^k memory); fixed eps",
    family="other",
)
