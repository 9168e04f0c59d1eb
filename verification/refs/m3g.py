"""Checks of the multi-marginal matching gap (M3G), run by its own driver (``check_views``).

M3G is not a loss of (S, labels) of a drawn batch: it needs k views of the same n items. From a
drawn batch ``check_views`` builds view 1 = the batch's rows, views 2 and 3 = the rows plus noise
(drawn from a generator seeded by the rows, so a case is reproducible; a tied batch keeps its
views tied), item ids 0..m-1, and runs:

* ``autograd`` (k = 2 and k = 3): the value and its gradients by torch autograd through UNROLLED
  log-domain Sinkhorn iterations in float64 (written here, run to the same marginal tolerance),
  against gpwref's envelope-theorem gradient (coupling). When plain Sinkhorn from zero potentials
  does not converge within ``UNROLL_PASSES`` (small eps against the cost gaps: its contraction
  factor is then ~1; gpwref switches to Newton steps there) the unrolled passes start from
  gpwref's potentials instead (as constants): the value is then re-evaluated and the gradient
  differentiated through torch's own Sinkhorn map, but the optimum itself is gpwref's, certified
  separately below; the report says so under ``skipped``;
* ``loop`` (k = 2): plain-Python Sinkhorn in the primal (scaling vectors u, v and kernel
  exp(-C/eps)), the value from the primal objective <P, C> + eps KL(P | a x b) and
  G = -2 (I/n - P) from the coupling; started from gpwref's potentials, as above, when it does not
  converge from u = v = 1;
* ``loop:certificate`` (k = 2 and 3): weak duality, dual(f) <= OT_eps <= primal(P) for a feasible
  P, certifies gpwref's value: the M3G from gpwref's own coupling through the primal objective must
  equal the returned (dual) value;
* ``fd`` (k = 2: G by central differences of S; k = 3: dM3G/dview on a few entries), relative to
  max|G| or, when G is below what differences of the value can resolve, to that resolution
  (``_fd_floor``);
* ``sign`` (G <= 0 on the matching, >= 0 elsewhere) and ``zeros``.
No real implementation is installed: OTT's MMSinkhorn (JAX) is the code docs/losses.md#m3g read.
"""

from __future__ import annotations

import math
import zlib
from itertools import combinations

import numpy as np
import torch

import gpwref
from gpwref.losses.m3g import matching_gap
from gpwref.testing import Batch
from ..common import rel_err
from ..harness import FD_STEP, CaseReport
from ..torch_pairs import similarity
from .contract import LossRefs

UNROLL_PASSES = 1000
WARM_PASSES = 10
FD_VIEW_ENTRIES = 6


def torch_matching_gap(similarities: dict, k: int, n: int, *, eps: float, tol: float, start=None):
    """M3G by unrolled log-domain Sinkhorn in torch; None when it does not converge.

    ``start``: initial potentials (detached constants; default zeros). From a converged start the
    passes stay at the fixed point and autograd through them still differentiates the unrolled map.
    """
    cost = torch.zeros((n,) * k, dtype=torch.float64)
    for (a, b), S in similarities.items():
        shape = [1] * k
        shape[a], shape[b] = n, n
        cost = cost + (2 - 2 * S).reshape(shape)
    log_a = -math.log(n)
    if start is None:
        potentials = [torch.zeros(n, dtype=torch.float64) for _ in range(k)]
    else:
        potentials = [torch.tensor(np.asarray(f), dtype=torch.float64) for f in start]

    def expand(vector, axis):
        shape = [1] * k
        shape[axis] = n
        return vector.reshape(shape)

    for passes in range(1, UNROLL_PASSES + 1):
        for axis in range(k):
            total = -cost / eps
            for other in range(k):
                if other != axis:
                    total = total + expand(potentials[other] / eps + log_a, other)
            others = [l for l in range(k) if l != axis]
            potentials[axis] = -eps * torch.logsumexp(total, dim=others)
        log_p = -cost / eps + sum(expand(potentials[l] / eps + log_a, l) for l in range(k))
        P = torch.exp(log_p)
        error = sum(float((P.detach().sum(dim=[x for x in range(k) if x != l]) - 1 / n).abs().sum()) for l in range(k))
        if error <= tol and (start is None or passes >= WARM_PASSES):
            dual = sum(p.sum() for p in potentials) / n + eps * (1 - P.sum())
            identity = torch.stack([cost[(i,) * k] for i in range(n)]).mean()
            return identity - dual
    return None


def loop_two_views(S: np.ndarray, *, eps: float, tol: float, start=None):
    """Plain Sinkhorn scaling on K = exp(-C/eps); M3G from the primal objective. None if not converged.

    ``start``: dual potentials (f, g) to start from, u = exp(f/eps)/n, v = exp(g/eps)/n.
    """
    n = S.shape[0]
    C = [[2.0 - 2.0 * S[i][j] for j in range(n)] for i in range(n)]
    K = [[math.exp(-C[i][j] / eps) for j in range(n)] for i in range(n)]
    a = 1.0 / n
    u, v = [1.0] * n, [1.0] * n
    if start is not None:
        u = [a * math.exp(f / eps) for f in start[0]]
        v = [a * math.exp(g / eps) for g in start[1]]
    for _ in range(UNROLL_PASSES):
        u = [a / sum(K[i][j] * v[j] for j in range(n)) for i in range(n)]
        v = [a / sum(K[i][j] * u[i] for i in range(n)) for j in range(n)]
        P = [[u[i] * K[i][j] * v[j] for j in range(n)] for i in range(n)]
        error = sum(abs(sum(P[i]) - a) for i in range(n)) + sum(abs(sum(P[i][j] for i in range(n)) - a) for j in range(n))
        if error <= tol:
            break
    else:
        return None
    primal = sum(P[i][j] * C[i][j] + eps * (P[i][j] * math.log(P[i][j] / (a * a)) if P[i][j] > 0 else 0.0)
                 for i in range(n) for j in range(n))
    identity = sum(C[i][i] for i in range(n)) / n
    G = np.array([[-2.0 * ((1.0 / n if i == j else 0.0) - P[i][j]) for j in range(n)] for i in range(n)])
    return identity - primal, G


def primal_gap(similarities: dict, k: int, coupling: np.ndarray, eps: float) -> float:
    """M3G evaluated through the primal objective at a given coupling."""
    n = coupling.shape[0]
    cost = np.zeros((n,) * k)
    for (a, b), S in similarities.items():
        shape = [1] * k
        shape[a], shape[b] = n, n
        cost = cost + (2 - 2 * S).reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(coupling > 0, coupling * np.log(coupling * float(n) ** k), 0.0).sum()
    identity = np.mean([cost[(i,) * k] for i in range(n)])
    return float(identity - ((coupling * cost).sum() + eps * kl))


def _views(batch: Batch, count: int) -> list[np.ndarray]:
    A = np.asarray(batch.embeddings, dtype=np.float64)
    rng = np.random.default_rng(zlib.crc32(A.tobytes()))
    views = [A]
    for _ in range(count - 1):
        views.append(A.copy() if "ties" in batch.cases else A + 0.3 * rng.normal(size=A.shape))
    return views


def check_views(report: CaseReport, profile: str, hyper: dict, params: dict, batch: Batch, fd: bool) -> None:
    """The driver: builds the views from the drawn batch and runs every check into ``report``."""
    eps, tol = params["eps"], params["tol"]
    A, B, C = _views(batch, 3)
    m = A.shape[0]
    ids = np.arange(m, dtype=np.int64)
    try:
        ours = gpwref.compute("m3g", A, ids, ref=B, ref_labels=ids, normalize=batch.normalize, **hyper)
    except gpwref.GpwrefError as error:
        report.skipped["gpwref"] = str(error)
        return

    # Floors. G = -2 (I/n - P) is a difference of quantities of size 1/n: its natural scale is 2/n,
    # and near-permutation couplings make the exact G ~ 0 with round-off of that scale times 2^-53
    # on both sides; dX's scale is then (2/n) per pair summed over a row, over the row norm.
    g_floor = 2.0 / m
    norms = np.linalg.norm(A, axis=1) if batch.normalize else np.ones(m)
    dx_floor = 2.0 * 2.0 * max(float(np.max(np.abs(A))), float(np.max(np.abs(B)))) / float(np.min(norms))
    # autograd through unrolled Sinkhorn, k = 2
    X = torch.tensor(A, requires_grad=True)
    R = torch.tensor(B, requires_grad=True)
    S = similarity(X, R, batch.normalize)
    S.retain_grad()
    value = torch_matching_gap({(0, 1): S}, 2, m, eps=eps, tol=tol)
    if value is None:
        report.skipped["autograd cold start"] = (
            f"unrolled Sinkhorn from zero potentials did not converge in {UNROLL_PASSES} passes at eps={eps}; "
            f"autograd runs {WARM_PASSES}+ unrolled passes from gpwref's potentials instead")
        value = torch_matching_gap({(0, 1): S}, 2, m, eps=eps, tol=tol, start=ours.extras["potentials"])
    if value is None:
        report.skipped["autograd"] = "unrolled Sinkhorn did not stay converged from gpwref's potentials"
    else:
        value.backward()
        report.errors["autograd:value"] = rel_err(ours.loss, value.item(), 1.0)
        report.errors["autograd:G"] = rel_err(ours.grad_sim, S.grad.numpy(), g_floor)
        report.errors["autograd:dX"] = rel_err(ours.grad_emb, X.grad.numpy(), dx_floor)
        report.errors["autograd:dX_ref"] = rel_err(ours.grad_ref, R.grad.numpy(), dx_floor)

    # plain loop, k = 2
    looped = loop_two_views(ours.sim, eps=eps, tol=tol)
    if looped is None:
        report.skipped["loop cold start"] = (
            f"plain Sinkhorn from u = v = 1 did not converge in {UNROLL_PASSES} passes at eps={eps}; "
            "the loop starts from gpwref's potentials instead")
        looped = loop_two_views(ours.sim, eps=eps, tol=tol, start=ours.extras["potentials"])
    if looped is None:
        report.skipped["loop"] = "plain Sinkhorn did not stay converged from gpwref's potentials"
    else:
        report.errors["loop:value"] = rel_err(ours.loss, looped[0], 1.0)
        report.errors["loop:G"] = rel_err(ours.grad_sim, looped[1], g_floor)
    report.errors["loop:certificate"] = rel_err(ours.loss, primal_gap({(0, 1): ours.sim}, 2, ours.extras["coupling"], eps), 1.0)

    if fd:
        report.errors["fd:G"] = _fd_two_views(ours, ids, params)

    G = ours.grad_sim
    diagonal = np.eye(m, dtype=bool)
    report.errors["sign"] = max(float(np.max(G[diagonal], initial=0.0)), float(-np.min(G[~diagonal], initial=0.0)), 0.0)
    used = ours.pos_used | ours.neg_used
    report.errors["zeros"] = max(float(np.max(np.abs(G[~used]), initial=0.0)), float(np.any(ours.pos_used != diagonal)))

    _check_three_views(report, [A, B, C], batch.normalize, eps, tol, params["max_iter"], fd)


def _fd_floor(value_scale: float, tol: float) -> float:
    """The smallest max|G| that central differences can resolve to a relative 1e-6.

    A difference quotient of two values of size V carries their error over h: round-off 2^-53 V
    and the solver's stopping error, about tol V (each value is the dual at potentials whose
    marginals are off by up to tol). When the exact G is smaller than that over 1e-6
    (near-permutation couplings: P ~ I/n and G ~ 0) the relative test uses this floor instead of
    max|G|, i.e. it asks FD and G to agree within FD's own resolution and no closer.
    """
    return (2.0**-53 + tol) * max(value_scale, 1.0) / FD_STEP / 1e-6


def _fd_two_views(ours, ids, params) -> float:
    S, G = ours.sim, ours.grad_sim
    scale = max(float(np.max(np.abs(G))), _fd_floor(float(np.max(np.abs(2 - 2 * S))), params["tol"]))  # see _fd_floor
    worst = 0.0
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            up, down = S.copy(), S.copy()
            up[i, j] += FD_STEP
            down[i, j] -= FD_STEP
            slope = (gpwref.from_similarity("m3g", up, ids, ids, **params).loss
                     - gpwref.from_similarity("m3g", down, ids, ids, **params).loss) / (2 * FD_STEP)
            worst = max(worst, abs(slope - G[i, j]) / scale)
    return worst


def _check_three_views(report, views, normalize, eps, tol, max_iter, fd) -> None:
    m = views[0].shape[0]
    try:
        ours = matching_gap(views, eps=eps, tol=tol, max_iter=max_iter, normalize=normalize)
    except gpwref.GpwrefError as error:
        report.skipped["k3"] = str(error)
        return
    leaves = [torch.tensor(v, requires_grad=True) for v in views]
    units = [torch.nn.functional.normalize(t, dim=1, eps=0.0) if normalize else t for t in leaves]
    sims = {(a, b): units[a] @ units[b].T for a, b in combinations(range(3), 2)}
    value = torch_matching_gap(sims, 3, m, eps=eps, tol=tol)
    if value is None:
        report.skipped["autograd:k3 cold start"] = (
            f"unrolled Sinkhorn from zero potentials did not converge in {UNROLL_PASSES} passes at eps={eps}; "
            f"autograd runs {WARM_PASSES}+ unrolled passes from gpwref's potentials instead")
        value = torch_matching_gap(sims, 3, m, eps=eps, tol=tol, start=ours.potentials)
    if value is None:
        report.skipped["autograd:k3"] = "unrolled Sinkhorn did not stay converged from gpwref's potentials"
    else:
        value.backward()
        report.errors["autograd:k3 value"] = rel_err(ours.loss, value.item(), 1.0)
        # floor: the size of dM3G/dview before the normalisation's projection (as the harness's dX floor)
        # floor: each view meets two others, each with G of scale 2/n per pair (see check_views)
        norms = [np.linalg.norm(v, axis=1) if normalize else np.ones(m) for v in views]
        floor = 2 * 2.0 * 2.0 * max(float(np.max(np.abs(v))) for v in views) / min(float(np.min(r)) for r in norms)
        report.errors["autograd:k3 dviews"] = max(rel_err(g, t.grad.numpy(), floor) for g, t in zip(ours.grad_views, leaves))
    numpy_sims = {key: S.detach().numpy() for key, S in sims.items()}
    report.errors["loop:k3 certificate"] = rel_err(ours.loss, primal_gap(numpy_sims, 3, ours.coupling, eps), 1.0)
    if fd:
        rng = np.random.default_rng(m)
        h = FD_STEP
        cost_scale = 3 * max(float(np.max(np.abs(2 - 2 * S))) for S in numpy_sims.values())
        scale = max(max(float(np.max(np.abs(g))) for g in ours.grad_views), _fd_floor(cost_scale, tol))
        worst = 0.0
        for _ in range(FD_VIEW_ENTRIES):
            a, i, j = int(rng.integers(3)), int(rng.integers(m)), int(rng.integers(views[0].shape[1]))
            up = [v.copy() for v in views]
            down = [v.copy() for v in views]
            up[a][i, j] += h
            down[a][i, j] -= h
            try:
                slope = (matching_gap(up, eps=eps, tol=tol, max_iter=max_iter, normalize=normalize).loss
                         - matching_gap(down, eps=eps, tol=tol, max_iter=max_iter, normalize=normalize).loss) / (2 * h)
            except gpwref.GpwrefError:
                continue  # a perturbed zero row cannot be normalised
            worst = max(worst, abs(slope - ours.grad_views[a][i, j]) / scale)
        report.errors["fd:k3 dviews"] = worst


REFS = LossRefs(
    driver=check_views,
    verified_against=(
        "autograd through unrolled Sinkhorn (k=2, k=3)",
        "loop (plain Sinkhorn)",
        "duality certificate",
        "fd",
    ),
)
