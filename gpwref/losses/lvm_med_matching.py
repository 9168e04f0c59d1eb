r"""LVM-Med's graph-matching loss (Nguyen et al., NeurIPS 2023), trained by blackbox differentiation.

Two views of the same n items (rows U of view 1, rows V of view 2, each row a node of its view's
graph). The matching of the two graphs is a permutation matrix v (v_ij = 1: item i of view 1 goes to
item j of view 2), chosen by a combinatorial solver that maximises the graph-matching objective

    first order:   O(v) = sum_ij c_ij v_ij,                                   c = S = U V^T
    second order:  O(v) = sum_ij c_ij v_ij + (edge_weight / (n - 1)) sum_{i != k, j != l} A_ik B_jl v_ij v_kl

with A = U U^T and B = V V^T the edge weights of the two complete graphs (the second-order affinity
of edge (i, k) with edge (j, l) is A_ik B_jl, the Koopmans-Beckmann form; the factor 1 / (n - 1)
gives each node one unit of edge affinity on average). The loss is the Hamming distance of the
solver's matching y = argmax O to the known one v* (item i in both views, from the item ids)::

    L(y) = s * sum_ij [ y_ij (1 - v*_ij) + v*_ij (1 - y_ij) ] = s * (g . y + n),  g = 1 - 2 v*,
    s = 1 (hamming="sum") or 1/n (hamming="mean").

L is piecewise constant in S (zero gradient almost everywhere), so training replaces its gradient by
the blackbox one (Vlastelica et al. ICLR 2020; Rolinek et al. ECCV 2020 for graph matching). With
O linear in the costs theta = (c, edge affinities) for a fixed v, O(theta, v) = theta . phi(v),
phi(v) = (v, v (x) v), and interpolation parameter lam > 0 (``lam``)::

    y_lam = argmax_v  O(theta, v) - lam (s g) . v          (costs c' = c + lam s (2 v* - 1))
    dL/dtheta := (1/lam) [ phi(y) - phi(y_lam) ]
    G_ij = dL/dS_ij = (1/lam) (y_ij - y_lam,ij)

(the papers minimise costs w; with w = -theta their -(1/lam)(y(w) - y(w + lam dL/dy)) is this).
Derivation: it is the exact gradient of the piecewise-linear interpolation

    f_lam(theta) = L(y_lam) + (1/lam) [ O(theta, y) - O(theta, y_lam) ]

wherever y and y_lam stay constant (both terms are then linear in theta); for an exact solver
f_lam = s n + (1/lam) [max_v O(theta, v) - max_v (O(theta, v) - lam s g . v)] is continuous, and
f_lam = L(y) whenever the perturbed solve returns y. ``extras["interpolated"]`` is f_lam.
Edge gradients (second order) give dL/dA_ik = (edge_weight / (n-1) / lam) [y B y^T - y_lam B y_lam^T]_ik
(i != k) and dL/dB likewise with y^T A y; dL/dX adds them through A = U U^T, B = V V^T.
``margin`` >= 0 is BB-GM's cost margin (Rolinek et al. section 3.3, alpha = 1 there): both solves see
c - margin I, the true pairs made harder, so L is only zero with that much to spare; G is unchanged
in form (dc/dS = 1).

GPW reading (S = cross-view similarities, rows = view 1): the matching pair (i, i) is the positive,
every other pair a negative. G is nonzero only where the two solves differ: a pair the solver
took but the perturbed (truth-favouring) solve drops is pushed by 1/lam, a pair the perturbed
solve takes but the solver did not is pulled by 1/lam. The GPW sign rule does not always hold: with an
exact solver the perturbed solve has at least as many correct pairs as the solver's, but not necessarily a superset
of them, so a correct pair can be pushed and a wrong pair pulled (gpw_sign=False).

Solvers (``solver``):
* "exact": first order SciPy's ``linear_sum_assignment`` (maximize=True); second order enumeration
  of all n! permutations, refused beyond ``MAX_EXACT_ITEMS`` items with a GpwrefError.
* "spectral" (second order only): spectral matching, Leordeanu & Hebert, ICCV 2005: the leading
  eigenvector (largest algebraic eigenvalue) of the n^2 x n^2 affinity matrix M (c on the
  diagonal, the edge affinities a A0_ik B0_jl off it), by a dense ``eigh`` up to n^2 = 400 and by
  Lanczos (SciPy's ``eigsh``, M applied as c * X + a A0 X B0 without being formed) beyond, its sign
  chosen with positive mass, discretised by ``linear_sum_assignment``. Not the QAP optimum: f_lam is
  then only piecewise linear (it may jump where the discretisation changes), and G is still
  (1/lam)(y - y_lam) with both solves spectral. Refused beyond ``MAX_SPECTRAL_ITEMS`` items or when
  the leading eigenvalue is not separated (relative eigengap <= ``EIGENGAP``).

Frames: ``compute("lvm_med_matching", view1, item_ids, ref=view2, ref_labels=item_ids2)``, each
item id exactly once in each view (as m3g); the batch cannot be its own second view. order="first"
is a function of S and ``from_similarity`` takes it; order="second" needs the views (A, B) and
``from_similarity`` refuses it.

What the paper leaves open (its public repository, duyhominhnguyen/LVM-Med, holds the released
backbones and downstream segmentation / classification / detection code, not the pre-training loss):
the graph construction and the node features come from the model there; gpwref takes the
embeddings as given as the node features and complete graphs. The edge affinity is gpwref's product
A_ik B_jl with weight edge_weight / (n - 1). (BB-GM's edge affinity, the inner product of edge
features u_i - u_k and v_j - v_l, would be degenerate on complete graphs: summed over a matching p
it is 2n sum_i S_i,p(i) - 2 sum_ij S_ij, the first-order objective rescaled plus a constant; it needs
sparse graphs to add anything.) The QAP solver is exact or spectral (BB-GM's is a Lagrange
decomposition solver, Swoboda et al. CVPR 2017, not reproduced). lam (default 80, BB-GM's value),
the Hamming scale and the use of the cost margin (default 0) are not stated for LVM-Med; any further
loss terms of the paper are not modelled.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse.linalg import LinearOperator, eigsh

from ..entry import LossEntry, number, one_of
from ..errors import GpwrefError, check_memory
from ..pairs import PairResult, Pairs, Result, build_pairs, through_normalisation, unit_rows
from ..profiles import Profile

MAX_EXACT_ITEMS = 8  # n! permutations: 40320 at n = 8
MAX_SPECTRAL_ITEMS = 128  # M is n^2 x n^2; Lanczos applies it in O(n^3) per step
DENSE_SPECTRAL_SIZE = 400  # up to this n^2, M is formed and solved by a dense eigh
EIGENGAP = 1e-10  # relative gap below which the leading eigenvector is not determined


def _edge_factor(n: int, edge_weight: float) -> float:
    return edge_weight / (n - 1) if n > 1 else 0.0


def _off_diagonal(M: np.ndarray) -> np.ndarray:
    out = M.copy()
    np.fill_diagonal(out, 0.0)
    return out


def objective(perm: np.ndarray, c: np.ndarray, A=None, B=None, edge_weight: float = 0.0) -> float:
    """O(v) of the matching i -> perm[i]."""
    n = c.shape[0]
    rows = np.arange(n)
    value = float(c[rows, perm].sum())
    if A is not None:
        A0, B0 = _off_diagonal(A), _off_diagonal(B)
        value += _edge_factor(n, edge_weight) * float((A0 * B0[np.ix_(perm, perm)]).sum())
    return value


def _exact_second_order(c, A, B, edge_weight):
    n = c.shape[0]
    if n > MAX_EXACT_ITEMS:
        raise GpwrefError(
            "solver",
            f"the exact second-order solver enumerates n! matchings and takes at most {MAX_EXACT_ITEMS} items; "
            "pass solver='spectral' (approximate) for larger batches",
            f"{n} items",
        )
    perms = np.array(list(permutations(range(n))), dtype=np.int64).reshape(-1, n)
    unary = c[np.arange(n)[None, :], perms].sum(axis=1)
    A0, B0 = _off_diagonal(A), _off_diagonal(B)
    pairwise = np.einsum("ik,pik->p", A0, B0[perms[:, :, None], perms[:, None, :]])
    scores = unary + _edge_factor(n, edge_weight) * pairwise
    return perms[int(np.argmax(scores))]  # first maximiser in lexicographic order


def _spectral(c, A, B, edge_weight):
    n = c.shape[0]
    if n > MAX_SPECTRAL_ITEMS:
        raise GpwrefError("solver", f"the spectral solver takes at most {MAX_SPECTRAL_ITEMS} items", f"{n} items")
    a = _edge_factor(n, edge_weight)
    A0, B0 = _off_diagonal(A), _off_diagonal(B)
    size = n * n
    if size <= DENSE_SPECTRAL_SIZE:
        # M[(i, j), (k, l)] = c_ij [(i, j) == (k, l)] + a A0_ik B0_jl, row (i, j) at i n + j
        values, vectors = np.linalg.eigh(np.diag(c.reshape(-1)) + a * np.kron(A0, B0))
        top, second = values[-1], (values[-2] if size > 1 else -np.inf)
        leading = vectors[:, -1]
    else:
        def apply(x):  # M x without forming M
            X = x.reshape(n, n)
            return (c * X + a * (A0 @ X @ B0)).reshape(-1)
        operator = LinearOperator((size, size), matvec=apply, dtype=np.float64)
        values, vectors = eigsh(operator, k=2, which="LA", v0=np.full(size, 1.0 / n), tol=0.0)
        order = np.argsort(values)
        top, second = values[order[-1]], values[order[-2]]
        leading = vectors[:, order[-1]]
    spread = max(float(np.max(np.abs(values))), 1.0)
    if top - second <= EIGENGAP * spread:
        raise GpwrefError("solver", "the leading eigenvalue of the spectral solver's affinity matrix is not separated "
                          f"(eigengap <= {EIGENGAP:g} x its scale): the spectral matching is not determined",
                          f"eigengap {top - second:.3g}")
    X = leading.reshape(n, n)
    if X.sum() < 0:  # an eigenvector's sign is arbitrary: take the one with positive mass
        X = -X
    return linear_sum_assignment(X, maximize=True)[1]


def solve(c: np.ndarray, A=None, B=None, *, order: str, solver: str, edge_weight: float) -> np.ndarray:
    """The solver's matching as a permutation (row i -> column perm[i])."""
    if order == "first":
        if solver != "exact":
            raise GpwrefError("solver", "the first-order form has only the exact (assignment) solver: solver='exact'", repr(solver))
        return linear_sum_assignment(c, maximize=True)[1]
    if solver == "exact":
        return _exact_second_order(c, A, B, edge_weight)
    return _spectral(c, A, B, edge_weight)


def _perm_matrix(perm: np.ndarray) -> np.ndarray:
    n = perm.shape[0]
    P = np.zeros((n, n))
    P[np.arange(n), perm] = 1.0
    return P


def blackbox(c, A, B, *, lam, hamming, order, solver, edge_weight, margin) -> dict:
    """Both solves on the aligned problem (item i of view 1 is item i of view 2) and the gradients."""
    n = c.shape[0]
    c = c - margin * np.eye(n)  # the cost margin: the true pairs' affinities lowered by margin (dc/dS = 1)
    scale = 1.0 if hamming == "sum" else 1.0 / n
    truth = np.eye(n)
    g = scale * (1.0 - 2.0 * truth)  # dL/dy
    y = _perm_matrix(solve(c, A, B, order=order, solver=solver, edge_weight=edge_weight))
    y_lam = _perm_matrix(solve(c - lam * g, A, B, order=order, solver=solver, edge_weight=edge_weight))
    hamming_rows = scale * np.abs(y - truth).sum(axis=1)
    O_y, O_lam = float((c * y).sum()), float((c * y_lam).sum())
    out = {"y": y, "y_lam": y_lam, "per_anchor": hamming_rows, "grad_c": (y - y_lam) / lam}
    if order == "second":
        a = _edge_factor(n, edge_weight)
        A0, B0 = _off_diagonal(A), _off_diagonal(B)
        O_y += a * float((A0 * (y @ B0 @ y.T)).sum())
        O_lam += a * float((A0 * (y_lam @ B0 @ y_lam.T)).sum())
        out["grad_A"] = _off_diagonal(a * (y @ B0 @ y.T - y_lam @ B0 @ y_lam.T) / lam)
        out["grad_B"] = _off_diagonal(a * (y.T @ A0 @ y - y_lam.T @ A0 @ y_lam) / lam)
    out["interpolated"] = float(scale * np.abs(y_lam - truth).sum() + (O_y - O_lam) / lam)
    return out


def matching(pairs: Pairs) -> np.ndarray:
    """The column matched to each row (the positives must be a one-to-one matching), or raise."""
    if pairs.ref_is_batch:
        raise GpwrefError("ref", "lvm_med_matching matches two views: pass the second view as ref= with ref_labels "
                          "(the batch cannot be its own second view)")
    m, n = pairs.pos.shape
    if m != n:
        raise GpwrefError("ref", f"lvm_med_matching needs the same n items in both views (ref must have {m} rows)", f"{n} rows")
    if pairs.self_pair.any():
        raise GpwrefError("ref_self", "lvm_med_matching has no self pairs: the second view is a separate copy of every item (leave ref_self=None)")
    per_row, per_col = pairs.pos.sum(axis=1), pairs.pos.sum(axis=0)
    if np.any(per_row != 1) or np.any(per_col != 1):
        raise GpwrefError(
            "labels",
            "lvm_med_matching needs item ids that occur exactly once in each view (the positives must be a one-to-one matching)",
            f"row positives {per_row.tolist()}, column positives {per_col.tolist()}",
        )
    return np.argmax(pairs.pos, axis=1)


def _result(S, pairs, match, solved) -> PairResult:
    """Back from the aligned order (column i = row i's item) to S's own column order."""
    def unalign(M):
        out = np.empty_like(M)
        out[:, match] = M
        return out
    return PairResult(
        loss=float(solved["per_anchor"].sum()),
        per_anchor=solved["per_anchor"],
        grad_sim=unalign(solved["grad_c"]),
        pos_used=pairs.pos.copy(),
        neg_used=pairs.neg.copy(),
        extras={"matching": unalign(solved["y"]), "perturbed_matching": unalign(solved["y_lam"]),
                "interpolated": solved["interpolated"]},
    )


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, lam: float, hamming: str, order: str,
                   solver: str, edge_weight: float, margin: float) -> PairResult:
    """The first-order form as a function of S; the second order needs the views (``compute``)."""
    if order != "first":
        raise GpwrefError("order", "the second-order form needs both views' edge weights, not S alone: call "
                          "gpwref.compute('lvm_med_matching', view1, ids, ref=view2, ref_labels=ids, order='second')", repr(order))
    match = matching(pairs)
    solved = blackbox(S[:, match], None, None, lam=lam, hamming=hamming, order=order, solver=solver,
                      edge_weight=edge_weight, margin=margin)
    return _result(S, pairs, match, solved)


def compute(inputs, profile: Profile, params: dict) -> Result:
    """The catalog's ``embeddings_function``: both orders from the two views, with dL/dX and dL/dref."""
    if inputs.dtype != np.float64:
        raise GpwrefError("dtype", "lvm_med_matching runs in float64 only (None or 'float64')", repr(inputs.dtype.name))
    X, R = inputs.embeddings, inputs.ref
    m = X.shape[0]
    check_memory(m, max(R.shape[0], 1), 6, "embeddings")
    if inputs.normalize:
        U, norms = unit_rows(X, "embeddings")
        V, ref_norms = (U, norms) if inputs.ref_is_batch else unit_rows(R, "ref")
    else:
        U, norms, V, ref_norms = X, None, R, None
    S = U @ V.T
    pairs = build_pairs(S, inputs.labels, inputs.ref_labels, inputs.ref_is_batch, profile, inputs.ref_self)
    match = matching(pairs)
    V_aligned = V[match]
    A = U @ U.T if params["order"] == "second" else None
    B = V_aligned @ V_aligned.T if params["order"] == "second" else None
    solved = blackbox(S[:, match], A, B, **params)
    result = _result(S, pairs, match, solved)
    grad_u = result.grad_sim @ V
    grad_v = result.grad_sim.T @ U
    if params["order"] == "second":
        grad_u = grad_u + (solved["grad_A"] + solved["grad_A"].T) @ U
        grad_v_aligned = (solved["grad_B"] + solved["grad_B"].T) @ V_aligned
        grad_v[match] += grad_v_aligned
        result.extras["grad_edges_view1"] = solved["grad_A"]
        result.extras["grad_edges_view2"] = solved["grad_B"][np.ix_(np.argsort(match), np.argsort(match))]
    if inputs.normalize:
        grad_u = through_normalisation(grad_u, U, norms)
        grad_v = through_normalisation(grad_v, V, ref_norms)
    return Result(
        loss=result.loss, per_anchor=result.per_anchor, grad_sim=result.grad_sim, pos_used=result.pos_used,
        neg_used=result.neg_used, extras=result.extras, grad_emb=grad_u, grad_ref=grad_v, sim=S,
        loss_name="lvm_med_matching", profile=profile.name, hyper=params,
    )


ENTRY = LossEntry(
    name="lvm_med_matching",
    function=value_and_grad,
    embeddings_function=compute,
    hyper={"lam": number(above=0), "hamming": one_of("sum", "mean"), "order": one_of("first", "second"),
           "solver": one_of("exact", "spectral"), "edge_weight": number(at_least=0), "margin": number(at_least=0)},
    defaults={"paper": {"lam": 80.0, "hamming": "sum", "order": "first", "solver": "exact", "edge_weight": 1.0,
                        "margin": 0.0}},
    reference="Nguyen et al. LVM-Med: Learning Large-Scale Self-Supervised Vision Models for Medical Imaging via "
    "Second-order Graph Matching. NeurIPS 2023 (blackbox gradients: Vlastelica et al. ICLR 2020; Rolinek et al. ECCV 2020)",
    similarities=("negative-relative",),
    gpw_sign=False,
    variants=({}, {"lam": 2.0, "hamming": "mean", "margin": 0.3}, {"order": "second"}, {"order": "second", "solver": "spectral", "lam": 0.5}),
    limits="two views (second view as ref, item ids once per view); complete graphs, product edge affinities; "
    f"second order exact up to {MAX_EXACT_ITEMS} items, spectral (approximate) beyond; the paper's GNN and k-NN graphs not modelled",
    family="other",
)
