"""Second opinions on FastAP: torch formulation, plain loop, PML FastAPLoss, the official code's rules.

Written from the formulas (docs/losses.md#fast_ap) without calling gpwref's vectorised
code. The loss is piecewise smooth in each distance, with a kink wherever a distance crosses a point
of the bin grid t = d B / 4 in Z (a triangle's peak or feet; t = 0 and t = B also start the
off-grid mass). The slope jump there is G's second difference across three neighbouring bins and
can be arbitrarily small, so the generic harness's kink detector (a jump of G above 1e-3 max|G|)
misses some kinks whose half-jump is still far above the fd tolerance (1e-6). The checks therefore
run through verification/harness.py's frozen-value FD with the regime = the grid cell floor(t) of every used
pair, computed here from the distances: a central difference that crosses or starts on a grid point
is a kink and is skipped, every other entry is compared. Nothing is detached (``frozen_value``
ignores its frozen argument). G exactly on a grid point follows ``kink_slope`` and is checked by
autograd, the loop and the real codes (see ``gpwref/losses/fast_ap.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs


def _kernel(d, num_bins, kink_slope):
    """Triangular kernels on the bin scale u = d B/4 - l, whose autograd slope at a kink follows the
    rule: |u| as where(u > 0, u, -u) gives slope +1/Delta at the peak ("left"); torch.abs gives 0
    there ("zero")."""
    u = (d * num_bins / 4)[..., None] - torch.arange(num_bins + 1, dtype=d.dtype)
    if kink_slope == "zero":
        return torch.relu(1 - torch.abs(u))
    v = 1 - torch.where(u > 0, u, -u)
    keep = (v.detach() > 0) | ((v.detach() == 0) & (u.detach() > 0))  # the right foot keeps its slope
    return torch.where(keep, v, torch.zeros_like(v))


GAP = 64 * 2.0**-52  # duplicates up to rounding are at distance 0 (gpwref/losses/fast_ap.py)


def torch_loss(S, pos, neg, profile, *, num_bins, kink_slope):
    """1 - FastAP_i as (1/|P|)(sum_l h+ H-/H + mass of the positives outside [0, 4]), the mass written as
    |P| - sum_l h+ on [0, 4]'s complement only (on [0, 4] the kernels sum to 1 exactly)."""
    d = torch.where((1 - S.detach()).abs() <= GAP, torch.zeros_like(S), 2 - 2 * S)
    K = _kernel(d, num_bins, kink_slope)  # m x n x L
    h_pos = (K * pos[..., None]).sum(dim=1)
    h_neg = (K * neg[..., None]).sum(dim=1)
    H_pos = torch.cumsum(h_pos, dim=1)
    H = torch.cumsum(h_pos + h_neg, dim=1)
    filled = H.detach() > 0
    H_neg = H - H_pos
    misranked = torch.where(filled, h_pos * H_neg / torch.where(filled, H, torch.ones_like(H)), torch.zeros_like(H)).sum(dim=1)
    off = (d.detach() < 0) | (d.detach() > 4)
    lost = torch.where(pos & off, 1 - K.sum(dim=2), torch.zeros_like(S)).sum(dim=1)
    n_pos = pos.sum(dim=1)
    alive = n_pos > 0
    if not alive.any():
        return (S * 0).sum()
    return ((misranked[alive] + lost[alive]) / n_pos[alive]).mean()


def loop(S, pos, neg, profile, *, num_bins, kink_slope):
    """Plain loops: histograms bin by bin, the derivative of 1 - FastAP_i in each bin from its closed form."""
    m, n = S.shape
    delta = 4.0 / num_bins
    L = num_bins + 1

    def K(d, l):
        return max(0.0, 1 - abs(d * num_bins / 4 - l))

    def dK(d, l):
        u = d * num_bins / 4 - l
        v = 1 - abs(u)
        if kink_slope == "zero":
            return 0.0 if v <= 0 or u == 0 else (-1.0 if u > 0 else 1.0) / delta
        if v > 0 or (v == 0 and u > 0):
            return (-1.0 if u > 0 else 1.0) / delta
        return 0.0

    anchors = [i for i in range(m) if any(pos[i])]
    value, G = 0.0, np.zeros((m, n))
    for i in anchors:
        P = [j for j in range(n) if pos[i, j]]
        N = [j for j in range(n) if neg[i, j]]
        dd = {j: (0.0 if abs(1 - S[i, j]) <= GAP else 2 - 2 * S[i, j]) for j in P + N}
        hp = [sum(K(dd[j], l) for j in P) for l in range(L)]
        hn = [sum(K(dd[j], l) for j in N) for l in range(L)]
        Hp = [sum(hp[: l + 1]) for l in range(L)]
        Ht = [sum(hp[: l + 1]) + sum(hn[: l + 1]) for l in range(L)]
        # 1 - FastAP_i = (1/|P|) [sum_l hp_l (Ht_l - Hp_l) / Ht_l + sum_{j in P} (1 - sum_l K_l(d_j))],
        # the last sum written per pair in closed form (0 on [0, 4]).
        dist = [dd[j] for j in P]
        lost = sum(min(1.0, -x / delta) if x < 0 else (min(1.0, (x - 4) / delta) if x > 4 else 0.0) for x in dist)
        value += (sum(hp[l] * (Ht[l] - Hp[l]) / Ht[l] for l in range(L) if Ht[l] > 0) + lost) / len(P)
        # L_i = (1/|P|) [sum_l hp_l Hn_l / Ht_l + sum_P out(d)]: its derivative in each bin count,
        #   d/dhp_m = Hn_m (Ht_m - hp_m) / Ht_m^2 - sum_{l > m} hp_l Hn_l / Ht_l^2,  d/dhn_m = sum_{l >= m} hp_l Hp_l / Ht_l^2,
        # and out'(d) = -sum_l K_l'(d) for a positive; dd/dS = -2, averaged over the anchors.
        Hn = [Ht[l] - Hp[l] for l in range(L)]
        d_pos, d_neg = [], []
        for mm in range(L):
            dp = Hn[mm] * (Ht[mm] - hp[mm]) / Ht[mm] ** 2 if Ht[mm] > 0 else 0.0
            dp -= sum(hp[l] * Hn[l] / Ht[l] ** 2 for l in range(mm + 1, L) if Ht[l] > 0)
            dn = sum(hp[l] * Hp[l] / Ht[l] ** 2 for l in range(mm, L) if Ht[l] > 0)
            d_pos.append(dp / len(P))
            d_neg.append(dn / len(P))
        for j in P:
            slopes = [dK(dd[j], l) for l in range(L)]
            g = sum(d_pos[l] * slopes[l] for l in range(L)) - sum(slopes) / len(P)
            G[i, j] = 0.0 if abs(1 - S[i, j]) <= GAP else -2 * g / len(anchors)
        for j in N:
            g = sum(d_neg[l] * dK(dd[j], l) for l in range(L))
            G[i, j] = 0.0 if abs(1 - S[i, j]) <= GAP else -2 * g / len(anchors)
    return (value / len(anchors) if anchors else 0.0), G


def grid_cells(S, pos, neg, num_bins):
    """The regime: per used pair, the grid cell floor(t) of t = d B / 4 (d = 0 for duplicates up to
    GAP, as the loss's rule says, flagged as such). L is one smooth piece in S_ij while t_ij stays in
    one closed cell [k, k + 1], so the two ends of a central difference have the same cells only when
    no grid point lies strictly inside the step; a step centred exactly on the grid has its ends in
    cells k - 1 and k and is skipped."""
    d = np.where(np.abs(1 - S) <= GAP, 0.0, 2 - 2 * S)
    t = d * num_bins / 4
    used = pos | neg
    return tuple(int(math.floor(x)) for x in t[used]) + tuple((np.abs(1 - S[used]) <= GAP).tolist())


def frozen_value(S_eval, S_frozen, pos, neg, profile, *, num_bins, kink_slope):
    """The value at S_eval (nothing is detached, S_frozen is not used) and its grid cells."""
    with torch.no_grad():
        value = torch_loss(torch.from_numpy(np.asarray(S_eval, dtype=np.float64)), torch.as_tensor(pos), torch.as_tensor(neg),
                           profile, num_bins=num_bins, kink_slope=kink_slope)
    return float(value), grid_cells(S_eval, pos, neg, num_bins)


def pml(X, labels, R, ref_labels, ref_self, normalize, *, num_bins, kink_slope):
    """pytorch-metric-learning FastAPLoss: cdist^2 of normalised rows, autograd (kink slope 0)."""
    from pytorch_metric_learning.losses import FastAPLoss

    if kink_slope != "zero":
        raise NotApplicable("PML differentiates with autograd: slope 0 at kinks")
    if R is not None:
        raise NotApplicable("PML FastAPLoss does not take ref_emb")
    if not normalize:
        raise NotApplicable("PML's LpDistance always normalises rows")
    _require_some_ranking(labels)
    _require_same_kink_sides(X, num_bins)
    return _unless_flat(FastAPLoss(num_bins=num_bins)(X, torch.as_tensor(labels)))


def _require_same_kink_sides(X, num_bins):
    """NotApplicable when PML's own arithmetic puts a distance on another side of a kink than the
    exact distance: PML bins cdist(u, v)**2 (sqrt then square: 2 becomes 2.0000000000000004) against
    torch.linspace centres and a rounded Delta = 4/B, so a distance exactly on the grid can land an ulp
    to either side, where its autograd slope is a one-sided one decided by that round-off. Where every
    pair's branch (sign of d - z_l, sign of the kernel's argument) is the same as on the exact grid
    t = (2 - 2 u.v) B / 4, PML's gradient must equal gpwref's "zero" rule, kinks included (at d = 0,
    and e.g. at d = 1 with B = 4, where cdist and linspace are exact: tests/losses/test_fast_ap.py)."""
    with torch.no_grad():
        U = torch.nn.functional.normalize(X.detach(), p=2, dim=1)
        theirs = torch.cdist(U, U) ** 2
        centres = torch.linspace(0.0, 4.0, steps=num_bins + 1, dtype=U.dtype)
        their_offset = theirs[..., None] - centres
        their_arg = 1 - their_offset.abs() / (4.0 / num_bins)
        S = U @ U.T
        exact_d = torch.where((1 - S).abs() <= GAP, torch.zeros_like(S), 2 - 2 * S)
        offset = (exact_d * num_bins / 4)[..., None] - torch.arange(num_bins + 1, dtype=U.dtype)
        arg = 1 - offset.abs()
    used = ~torch.eye(X.shape[0], dtype=torch.bool)  # PML uses every pair but the self pairs
    same = (torch.sign(their_offset) == torch.sign(offset)) & (torch.sign(their_arg) == torch.sign(arg))
    if not bool(same.all(dim=2)[used].all()):
        raise NotApplicable("PML's cdist**2 and linspace centres put a distance on the other side of a bin-grid kink "
                            "than the exact distance (its slope there is decided by that round-off)")


def _unless_flat(value):
    """NotApplicable when the code's loss is 0 to round-off: every positive's histogram mass then lies
    strictly before any negative's, L is locally constant, the exact gradient is 0 and the code's dX
    is the round-off of its partition-of-unity sums (no scale to compare against)."""
    if abs(value.item()) < 1e-12:
        raise NotApplicable(f"loss {value.item():.1e}: perfectly separated histograms, exact gradient 0, the code's dX is round-off")
    return value


def _require_some_ranking(labels):
    y = np.asarray(labels)
    same = y[:, None] == y[None, :]
    np.fill_diagonal(same, False)
    if not (same.any(axis=1) & ~(y[:, None] == y[None, :]).all(axis=1)).any():
        raise NotApplicable(
            "no anchor has both a positive and a negative: FastAP is identically 1 there, the exact gradient is 0 "
            "and the code's dX is the round-off of 1 - sum_l K_l (~1e-17), with no scale to compare it against"
        )


class _OfficialFastAP(torch.autograd.Function):
    """The official pytorch/FastAP_loss.py forward and hand-written backward, transcribed in float64.
    ``rescale`` multiplies the backward (1 reproduces the official gradient exactly)."""

    @staticmethod
    def forward(ctx, X, labels, num_bins, rescale):
        N = X.shape[0]
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(N, dtype=torch.bool)
        I_pos = (same & ~eye).to(X.dtype)
        I_neg = (~same).to(X.dtype)
        N_pos = I_pos.sum(dim=1)
        dist2 = 2 - 2 * X @ X.T
        delta = 4.0 / num_bins
        Z = torch.linspace(0.0, 4.0, num_bins + 1, dtype=X.dtype)
        h_pos = torch.stack([(torch.clamp(1 - torch.abs(dist2 - z) / delta, min=0) * I_pos).sum(dim=1) for z in Z], dim=1)
        h_neg = torch.stack([(torch.clamp(1 - torch.abs(dist2 - z) / delta, min=0) * I_neg).sum(dim=1) for z in Z], dim=1)
        H_pos = torch.cumsum(h_pos, dim=1)
        H = torch.cumsum(h_pos + h_neg, dim=1)
        ap = h_pos * H_pos / H
        ap[torch.isnan(ap) | torch.isinf(ap)] = 0
        ap = ap.sum(dim=1) / N_pos
        ap = ap[~torch.isnan(ap)]
        ctx.save_for_backward(X)
        ctx.stuff = (Z, delta, dist2, I_pos, I_neg, h_pos, H_pos, H, N_pos, rescale)
        return 1 - ap.mean()

    @staticmethod
    def backward(ctx, grad_output):  # the official backward ignores grad_output
        (X,) = ctx.saved_tensors
        Z, delta, dist2, I_pos, I_neg, h_pos, H_pos, H, N_pos, rescale = ctx.stuff
        L = len(Z)
        H2 = H**2
        H_neg = H - H_pos
        tmp1 = h_pos * H_neg / H2
        tmp1[torch.isnan(tmp1)] = 0
        d_pos = (H_pos * H + h_pos * H_neg) / H2 + tmp1 @ torch.tril(torch.ones(L, L, dtype=X.dtype), -1)
        d_pos = d_pos / N_pos[:, None]
        d_pos[torch.isnan(d_pos) | torch.isinf(d_pos)] = 0
        tmp2 = -h_pos * H_pos / H2
        tmp2[torch.isnan(tmp2)] = 0
        d_neg = tmp2 @ torch.tril(torch.ones(L, L, dtype=X.dtype), 0) / N_pos[:, None]
        d_neg[torch.isnan(d_neg) | torch.isinf(d_neg)] = 0
        d_x = 0
        for l in range(L):
            z = Z[l]
            dpulse = (((dist2 > z - delta) & (dist2 <= z)).to(X.dtype) - ((dist2 > z) & (dist2 <= z + delta)).to(X.dtype)) / delta
            ddp, ddn = dpulse * I_pos, dpulse * I_neg
            ap_, an_ = torch.diag(d_pos[:, l]), torch.diag(d_neg[:, l])
            d_x = d_x - X.T @ (ddp @ ap_ + ap_ @ ddp + ddn @ an_ + an_ @ ddn)
        return (-d_x).T * rescale, None, None, None


def official(X, labels, R, ref_labels, ref_self, normalize, *, num_bins, kink_slope, rescale=None):
    """The official FastAP code's rules (kink slope "left"), its backward divided by its documented
    N'/2 factor (docs/losses.md#fast_ap; tests/losses/test_fast_ap.py shows the factor)."""
    if kink_slope != "left":
        raise NotApplicable("the official dSoftBinning is the one-sided slope ('left')")
    if R is not None:
        raise NotApplicable("the official code ranks the batch against itself")
    y = torch.as_tensor(np.asarray(labels))
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    n_alive = int(same.any(dim=1).sum())
    if n_alive == 0:
        raise NotApplicable("the official code returns NaN (mean of no anchor) when no anchor has a positive")
    _require_some_ranking(labels)
    U = torch.nn.functional.normalize(X, dim=1) if normalize else X
    with torch.no_grad():
        dist2 = (2 - 2 * U @ U.T).numpy()
    off_diagonal = ~np.eye(len(y), dtype=bool)
    scaled = dist2 * num_bins / 4
    if np.any((np.abs(dist2) <= GAP * 2) & off_diagonal):
        raise NotApplicable("a duplicate pair sits on bin 0's kink, which the official code decides by the sign of a round-off of 2 - 2 x.x")
    if np.any((np.abs(scaled - np.round(scaled)) < 1e-9) & off_diagonal):
        raise NotApplicable("a distance sits on a bin centre, a kink the official code decides by how torch.linspace rounds z_l")
    return _unless_flat(_OfficialFastAP.apply(U, y, num_bins, 2.0 / n_alive if rescale is None else rescale))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}, "paper": {"official FastAP rules": official}},
    verified_against=("autograd", "fd (steps that cross the bin grid skipped)", "loop"),
    frozen_value=frozen_value,
)
