"""Second opinions on the ranked list loss: torch formulation, plain loop, real code.

Written from the formulas (docs/losses.md#ranked_list) without calling gpwref's vectorised
code. Checks run through verification/harness.py's frozen-value path: nothing is detached, the regime is the
membership of P* and N*, and ``fd_skip`` avoids sqrt's singular slope at d = 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs

DUPLICATE = 1e-12  # 2 - 2S at or below this: d = 0 with no slope (gpwref's duplicate rule)


def _boundary(margin, alpha):
    return 1 + margin / 2 if alpha is None else alpha


def _torch_distance(S):
    raw = 2 - 2 * S
    apart = raw.detach() > DUPLICATE
    return torch.where(apart, torch.sqrt(torch.where(apart, raw, torch.ones_like(raw))), torch.zeros_like(raw))


def torch_loss(S, pos, neg, profile, *, margin, alpha, Tp, Tn, imbalance, denominator_eps, count_zero_distance):
    """PML's structure: membership masks on detached distances, live weights, guarded row ratios."""
    rows, cols = S.shape
    a = _boundary(margin, alpha)
    D = _torch_distance(S)
    Dd = D.detach()
    allowed = torch.ones_like(pos) if count_zero_distance else Dd > 0
    P_star = pos & (Dd > a - margin) & allowed
    N_star = neg & (Dd < a) & allowed
    zeros = torch.zeros_like(D)
    w_p = torch.where(P_star, torch.exp(Tp * (D - (a - margin))), zeros)
    w_n = torch.where(N_star, torch.exp(Tn * (a - D)), zeros)
    # an empty set with no guard is 0/0: its half is 0 by definition (denominator 1 keeps autograd finite)
    den_P = torch.where(P_star.any(dim=1), (w_p + denominator_eps).sum(dim=1), torch.ones(rows, dtype=S.dtype))
    den_N = torch.where(N_star.any(dim=1), (w_n + denominator_eps).sum(dim=1), torch.ones(rows, dtype=S.dtype))
    loss_P = (w_p * (D - (a - margin))).sum(dim=1) / den_P
    loss_N = (w_n * (a - D)).sum(dim=1) / den_N
    return ((1 - imbalance) * loss_P + imbalance * loss_N).mean()


def _distance(s):
    raw = 2 - 2 * s
    return (math.sqrt(raw), -1.0 / math.sqrt(raw)) if raw > DUPLICATE else (0.0, 0.0)


def loop(S, pos, neg, profile, *, margin, alpha, Tp, Tn, imbalance, denominator_eps, count_zero_distance):
    """Plain loop; each weight by the quotient rule on A = sum w e, B = sum w + n eps."""
    rows, cols = S.shape
    a = _boundary(margin, alpha)
    G = np.zeros((rows, cols))
    total = 0.0
    for i in range(rows):
        for members_of, sign, T, factor in (
            (lambda j, d: pos[i, j] and d > a - margin, +1.0, Tp, 1 - imbalance),
            (lambda j, d: neg[i, j] and d < a, -1.0, Tn, imbalance),
        ):
            items = []
            for j in range(cols):
                d, slope = _distance(S[i, j])
                if members_of(j, d) and (count_zero_distance or d > 0):
                    excess = d - (a - margin) if sign > 0 else a - d
                    items.append((j, excess, slope))
            if not items:
                continue
            top = max(T * e for _, e, _ in items)
            w = {j: math.exp(T * e - top) for j, e, _ in items}
            A = sum(w[j] * e for j, e, _ in items)
            B = sum(w.values()) + cols * denominator_eps * math.exp(-top)
            total += factor * A / B / rows
            for j, e, slope in items:
                dA = w[j] * (T * e + 1) * sign  # d/dD of w e, with de/dD = sign
                dB = w[j] * T * sign
                G[i, j] += factor * (dA * B - A * dB) / B**2 * slope / rows
    return total, G


def frozen_value(S_eval, S_frozen, pos, neg, profile, **hyper):
    """Nothing is detached: the plain value; the regime is the membership of P* and N*."""
    a = _boundary(hyper["margin"], hyper["alpha"])
    D = np.sqrt(np.where(2 - 2 * S_eval > DUPLICATE, 2 - 2 * S_eval, 0.0))
    allowed = np.ones_like(pos) if hyper["count_zero_distance"] else D > 0
    regime = ((pos & (D > a - hyper["margin"]) & allowed).tobytes(), (neg & (D < a) & allowed).tobytes())
    return loop(S_eval, pos, neg, profile, **hyper)[0], regime


def fd_skip(S, i, j, pos, neg, profile, **hyper):
    """Central differences (h = 1e-6) are unreliable near sqrt's singularity at d = 0 (relative error
    ~ (h / d^2)^2): entries with 2 - 2S < 1e-2 are skipped."""
    return 2 - 2 * S[i, j] < 1e-2


def pml(X, labels, R, ref_labels, ref_self, normalize, *, margin, alpha, Tp, Tn, imbalance, denominator_eps, count_zero_distance):
    """pytorch-metric-learning RankedListLoss(margin, Tn, imbalance, alpha, Tp), MeanReducer."""
    from pytorch_metric_learning.losses import RankedListLoss

    if (denominator_eps, count_zero_distance) != (1e-5, False):
        raise NotApplicable("PML RankedListLoss adds 1e-5 per row entry and ignores pairs at distance 0")
    if R is not None:
        raise NotApplicable("PML RankedListLoss does not support a reference set")
    if not normalize:
        raise NotApplicable("PML's LpDistance always normalises rows")
    return RankedListLoss(margin=margin, Tn=Tn, imbalance=imbalance, alpha=alpha, Tp=Tp)(X, torch.as_tensor(labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    frozen_value=frozen_value,
    fd_skip=fd_skip,
)
