"""Checks of LVM-Med's graph-matching loss, run by its own driver (``check_views``).

The loss needs two views of the same items. From a drawn batch the driver takes the first
``MAX_ITEMS`` rows as view 1 and view 1 plus noise (seeded by the rows; a tied batch keeps its
views tied) as view 2, passed in reversed order with reversed item ids (so the alignment by item
id is exercised), and runs:

* ``autograd``: an independent blackbox-differentiation implementation in torch, a
  ``torch.autograd.Function`` whose forward solves the matching by its own enumeration of the
  permutations (for the spectral solver: gpwref's spectral solver, used as a black box) and whose
  backward does the second, interpolated solve at c - lam dL/dy and returns (y - y_lam) / lam and
  the edge gradients; the Hamming loss, S, A, B and the normalisation are torch's own, so autograd
  gives value, G, dX and dref end to end;
* ``loop`` (exact solvers): plain-Python enumeration of every matching: both solves are optimal,
  the value is the Hamming distance, G = (y - y_lam) / lam entry by entry;
* ``fd``: central differences of the interpolated surrogate f_lam (``extras["interpolated"]``) in
  every entry of S (edge weights fixed), on the entries where neither solve changes within the
  step (away from f_lam's kinks); the blackbox G is f_lam's exact gradient there;
* ``zeros``: G vanishes wherever the two solves agree.
A batch whose optimum is not unique (ties, duplicates) has no well-defined matching; the driver
reports it under ``skipped`` instead of comparing tie-breaks.
"""

from __future__ import annotations

import zlib
from itertools import permutations

import numpy as np
import torch

import gpwref
from gpwref.losses import lvm_med_matching as lvm
from gpwref.testing import Batch
from ..common import rel_err
from ..harness import FD_STEP, CaseReport
from .contract import LossRefs

MAX_ITEMS = 5
TIE_GAP = 1e-9  # best and second-best objectives closer than this: the matching is not unique
SPECTRAL_GAP = 1e-6  # eigengap or assignment margin of the spectral solver below this: not determined


def _torch_objectives(c, A, B, edge_weight, perms):
    """O(v) of every permutation (rows of ``perms``), in torch."""
    n = c.shape[0]
    rows = torch.arange(n)
    unary = torch.stack([c[rows, torch.tensor(p)].sum() for p in perms])
    if A is None:
        return unary
    a = edge_weight / (n - 1) if n > 1 else 0.0
    off = 1 - torch.eye(n, dtype=c.dtype)
    pairwise = torch.stack([(A * off * (B * off)[torch.tensor(p)][:, torch.tensor(p)]).sum() for p in perms])
    return unary + a * pairwise


def torch_solve(c, A, B, *, solver, edge_weight):
    """(permutation matrix, gap between the best and second-best objective) in torch."""
    n = c.shape[0]
    if solver == "spectral":
        try:
            perm = lvm.solve(c.detach().numpy(), A.detach().numpy(), B.detach().numpy(), order="second",
                             solver="spectral", edge_weight=edge_weight)
        except gpwref.GpwrefError:
            return None, 0.0  # no convergence: the leading eigenvalue is not separated
        gap = _spectral_margin(c.detach().numpy(), A.detach().numpy(), B.detach().numpy(), edge_weight)
    else:
        perms = list(permutations(range(n)))
        scores = _torch_objectives(c.detach(), None if A is None else A.detach(), None if B is None else B.detach(),
                                   edge_weight, perms)
        ordered = torch.sort(scores, descending=True).values
        gap = float(ordered[0] - ordered[1]) if len(perms) > 1 else float("inf")
        perm = perms[int(torch.argmax(scores))]
    if perm is None:
        return None, gap
    y = torch.zeros((n, n), dtype=c.dtype)
    y[torch.arange(n), torch.as_tensor(np.asarray(perm))] = 1.0
    return y, gap


def _spectral_margin(c, A, B, edge_weight) -> float:
    """How well the spectral matching is determined: min(relative eigengap of M, margin of the
    assignment of the leading eigenvector over the next best one), from the explicit n^2 x n^2 M."""
    n = c.shape[0]
    a = edge_weight / (n - 1) if n > 1 else 0.0
    A0, B0 = A - np.diag(np.diag(A)), B - np.diag(np.diag(B))
    M = np.diag(c.reshape(-1)) + a * np.kron(A0, B0)  # M[(i,j),(k,l)] = c_ij [ij == kl] + a A0_ik B0_jl
    values, vectors = np.linalg.eigh(M)
    eigengap = (values[-1] - values[-2]) / max(1.0, float(np.abs(values).max())) if n > 1 else 1.0
    X = vectors[:, -1].reshape(n, n)
    X = X * np.sign(X.sum()) if X.sum() != 0 else X
    scores = sorted((sum(X[i, p[i]] for i in range(n)) for p in permutations(range(n))), reverse=True)
    margin = scores[0] - scores[1] if n > 1 else 1.0
    return min(eigengap, margin)


class BlackboxMatching(torch.autograd.Function):
    """y = argmax O(c, A, B; v); backward: the interpolated second solve (Vlastelica et al.)."""

    @staticmethod
    def forward(ctx, c, A, B, lam, solver, edge_weight, gaps):
        y, gap = torch_solve(c, A, B, solver=solver, edge_weight=edge_weight)
        gaps.append(gap)
        if y is None:
            y = torch.zeros_like(c)  # unconverged: the driver skips this case on the gap
        ctx.save_for_backward(c, A, B, y)
        ctx.settings = (lam, solver, edge_weight, gaps)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        c, A, B, y = ctx.saved_tensors
        lam, solver, edge_weight, gaps = ctx.settings
        y_lam, gap = torch_solve(c - lam * grad_y, A, B, solver=solver, edge_weight=edge_weight)
        gaps.append(gap)
        if y_lam is None:
            y_lam = y
        grad_c = (y - y_lam) / lam
        n = c.shape[0]
        grad_A = grad_B = None
        if ctx.needs_input_grad[1]:
            a = edge_weight / (n - 1) if n > 1 else 0.0
            off = 1 - torch.eye(n, dtype=c.dtype)
            # phi's edge part v_ij v_kl against A_ik B_jl (i != k, j != l)
            grad_A = a / lam * off * (torch.einsum("ij,kl,jl->ik", y, y, B * off) - torch.einsum("ij,kl,jl->ik", y_lam, y_lam, B * off))
            grad_B = a / lam * off * (torch.einsum("ij,kl,ik->jl", y, y, A * off) - torch.einsum("ij,kl,ik->jl", y_lam, y_lam, A * off))
        return grad_c, grad_A, grad_B, None, None, None, None


def _views(batch: Batch):
    A = np.asarray(batch.embeddings, dtype=np.float64)[:MAX_ITEMS]
    rng = np.random.default_rng(zlib.crc32(A.tobytes()))
    B = A.copy() if "ties" in batch.cases else A + np.abs(A).mean() * rng.normal(size=A.shape)
    return A, B


def check_views(report: CaseReport, profile: str, hyper: dict, params: dict, batch: Batch, fd: bool) -> None:
    X_np, Y_np = _views(batch)
    m = X_np.shape[0]
    ids = np.arange(m, dtype=np.int64)
    order = ids[::-1].copy()  # view 2 passed in reversed order: column j holds item order[j]
    R_np, ref_ids = Y_np[order], ids[order]
    try:
        ours = gpwref.compute("lvm_med_matching", X_np, ids, ref=R_np, ref_labels=ref_ids, normalize=batch.normalize, **hyper)
    except gpwref.GpwrefError as error:
        report.skipped["gpwref"] = str(error)
        return
    lam, second = params["lam"], params["order"] == "second"
    scale = 1.0 if params["hamming"] == "sum" else 1.0 / m

    # autograd through the torch blackbox Function
    X = torch.tensor(X_np, requires_grad=True)
    R = torch.tensor(R_np, requires_grad=True)
    U = torch.nn.functional.normalize(X, dim=1, eps=0.0) if batch.normalize else X
    V = torch.nn.functional.normalize(R, dim=1, eps=0.0) if batch.normalize else R
    S = U @ V.T
    S.retain_grad()
    V_items = V[torch.as_tensor(np.argsort(order))]  # row i = item i
    c = S[:, torch.as_tensor(np.argsort(order))] - params["margin"] * torch.eye(m, dtype=torch.float64)  # column i = item i
    A = U @ U.T if second else None
    B = V_items @ V_items.T if second else None
    gaps: list = []
    y = BlackboxMatching.apply(c, A, B, lam, params["solver"], params["edge_weight"], gaps)
    truth = torch.eye(m, dtype=torch.float64)
    value = scale * (y * (1 - truth) + truth * (1 - y)).sum()
    value.backward()
    tie = SPECTRAL_GAP if params["solver"] == "spectral" else TIE_GAP * max(1.0, float(c.detach().abs().max()))
    if min(gaps) <= tie:
        report.skipped["tie"] = f"the matching is not unique (objective gap {min(gaps):.3g}); no check compares tie-breaks"
        return
    report.errors["autograd:value"] = rel_err(ours.loss, value.item(), 1.0)
    report.errors["autograd:G"] = rel_err(ours.grad_sim, S.grad.numpy(), 1.0 / lam)
    dx_floor = 1.0 / lam * max(1.0, float(np.abs(X_np).max()) / (float(np.linalg.norm(X_np, axis=1).min()) if batch.normalize else 1.0))
    report.errors["autograd:dX"] = rel_err(ours.grad_emb, X.grad.numpy(), dx_floor)
    report.errors["autograd:dX_ref"] = rel_err(ours.grad_ref, R.grad.numpy(), dx_floor)

    aligned = ours.sim[:, np.argsort(order)]
    A_np = A.detach().numpy() if second else None
    B_np = B.detach().numpy() if second else None
    if params["solver"] == "exact":
        report.errors["loop"] = _loop(ours, aligned, A_np, B_np, params, order, scale)
    else:
        report.skipped["loop"] = "the spectral solver is approximate: no enumeration to compare its matching with"
    if fd:
        report.errors["fd:interpolated"] = _fd_interpolated(aligned, A_np, B_np, params, ours, order)
    G = ours.grad_sim
    same = ours.extras["matching"] == ours.extras["perturbed_matching"]
    report.errors["zeros"] = float(np.max(np.abs(G[same]), initial=0.0))


def _loop_objective(perm, c, A, B, edge_weight):
    n = len(perm)
    value = sum(c[i][perm[i]] for i in range(n))
    if A is not None and n > 1:
        value += edge_weight / (n - 1) * sum(A[i][k] * B[perm[i]][perm[k]] for i in range(n) for k in range(n)
                                             if i != k)
    return value


def _loop(ours, c, A, B, params, order, scale) -> float:
    n, lam, w = c.shape[0], params["lam"], params["edge_weight"]
    margin = params["margin"]
    c = [[c[i][j] - (margin if i == j else 0.0) for j in range(n)] for i in range(n)]
    c_lam = [[c[i][j] + lam * scale * (1.0 if i == j else -1.0) for j in range(n)] for i in range(n)]
    best = max(permutations(range(n)), key=lambda p: _loop_objective(p, c, A, B, w))
    best_lam = max(permutations(range(n)), key=lambda p: _loop_objective(p, c_lam, A, B, w))
    value = scale * sum(2 for i in range(n) if best[i] != i)
    G = np.zeros((n, n))
    for i in range(n):
        G[i][best[i]] += 1.0 / lam
        G[i][best_lam[i]] -= 1.0 / lam
    G_ours = ours.grad_sim[:, np.argsort(order)]
    return max(rel_err(ours.loss, value, 1.0), rel_err(G_ours, G, 1.0 / lam))


def _fd_interpolated(c, A, B, params, ours, order) -> float:
    """max |FD of f_lam - G| / (1/lam) over the entries away from kinks."""
    h, lam = FD_STEP, params["lam"]
    base = lvm.blackbox(c, A, B, **params)
    G = ours.grad_sim[:, np.argsort(order)]
    worst = 0.0
    for i, j in np.ndindex(*c.shape):
        up, down = c.copy(), c.copy()
        up[i, j] += h
        down[i, j] -= h
        hi, lo = lvm.blackbox(up, A, B, **params), lvm.blackbox(down, A, B, **params)
        if any(not np.array_equal(s["y"], base["y"]) or not np.array_equal(s["y_lam"], base["y_lam"]) for s in (hi, lo)):
            continue  # a kink of f_lam within the step
        slope = (hi["interpolated"] - lo["interpolated"]) / (2 * h)
        # relative to G's unit 1/lam (round-off of f_lam over 2h: ~1e-10 |f_lam|, far below)
        worst = max(worst, abs(slope - G[i, j]) * lam)
    return worst


REFS = LossRefs(
    driver=check_views,
    verified_against=(
        "autograd through a torch blackbox Function (own enumeration solver, interpolated second solve)",
        "loop (enumeration of every matching)",
        "fd of the interpolated surrogate f_lam",
    ),
)
