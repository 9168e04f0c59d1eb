"""Second opinions on the neighbouring-pixel affinity loss: torch on the image grid, plain loop, BoxSnake's code rules.

Written from the formula (gpwref/losses/pixel_affinity.py docstring, BoxSnake/BoxInst) without
calling gpwref's code. The torch formulation finds neighbours by shifting the pixel grid; the loop
walks each pixel's window.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs


def _grid(m: int, width):
    W = m if width is None else width
    return W, [(i // W, i % W) for i in range(m)]


def torch_loss(S, pos, neg, profile, *, width, kernel_size, dilation, affinity):
    m = S.shape[0]
    W, where = _grid(m, width)
    index = {rc: i for i, rc in enumerate(where)}
    half = (kernel_size - 1) // 2
    rows, cols = [], []
    for i, (r, c) in enumerate(where):
        for du in range(-half, half + 1):
            for dv in range(-half, half + 1):
                j = index.get((r + dilation * du, c + dilation * dv))
                if (du, dv) != (0, 0) and 0 <= c + dilation * dv < W and j is not None and bool(pos[i, j]):
                    rows.append(i)
                    cols.append(j)
    if not rows:
        return (S * 0).sum()
    sims = S[rows, cols]
    below_one = sims - 1 if affinity == "probability" else (sims - 1) / 2  # a - 1
    return -torch.log1p(below_one).sum() / len(rows)


def loop(S, pos, neg, profile, *, width, kernel_size, dilation, affinity):
    m = S.shape[0]
    W, _ = _grid(m, width)
    half = (kernel_size - 1) // 2
    total, count = 0.0, 0
    G = np.zeros((m, m))
    for i in range(m):
        r, c = divmod(i, W)
        for j in range(m):
            rj, cj = divmod(j, W)
            du, dv = rj - r, cj - c
            in_window = (du % dilation == 0 and dv % dilation == 0 and abs(du) <= half * dilation
                         and abs(dv) <= half * dilation and (du, dv) != (0, 0))
            if not (in_window and pos[i, j]):
                continue
            a, slope = (S[i, j], 1.0) if affinity == "probability" else ((1 + S[i, j]) / 2, 0.5)
            total -= math.log1p(a - 1) if affinity == "probability" else math.log1p((S[i, j] - 1) / 2)
            G[i, j] = -slope / a  # d(-log a)/dS
            count += 1
    Z = max(count, 1)
    return total / Z, G / Z


def boxsnake_code(X, labels, R, ref_labels, ref_self, normalize, *, width, kernel_size, dilation, affinity):
    """BoxSnake ``loss_local_pairwise_box_inst`` (LOSS_LOCAL_PAIRWISE_TYPE "v2") transcribed.

    Needs an H x W image of binary mask probabilities: rows (m_i, 1 - m_i), normalize=False. Clamp m
    to [1e-5, 1 - 1e-5]; log P(same) = logaddexp(log m_i + log m_j, log(1-m_i) + log(1-m_j)) over the
    zero-padded unfold without centre; weights = same colour region (the labels, standing for
    colour similarity >= threshold) x image mask; loss = sum(w * -log P) / max(sum w, 1).
    """
    if affinity != "probability" or normalize or R is not None:
        raise NotApplicable("the code takes binary mask probabilities of one image: affinity='probability', normalize=False, no reference set")
    m = X.shape[0]
    W = m if width is None else width
    if X.shape[1] != 2 or m % W != 0:
        raise NotApplicable("the code's masks are full H x W images of one foreground probability per pixel")
    if not (bool(torch.all(X >= 0)) and torch.allclose(X.sum(dim=1), torch.ones(m, dtype=X.dtype), rtol=0, atol=1e-15)):
        raise NotApplicable("rows are not (m, 1 - m) probability pairs")
    H = m // W
    fg = X[:, 0].reshape(1, 1, H, W).clamp(min=1e-5, max=1 - 1e-5)
    # the code forms 1 - m itself; here it is read from the row's second entry (equal in value), so
    # that dL/dX has the same two coordinates as gpwref's embedding gradient
    bg = X[:, 1].reshape(1, 1, H, W).clamp(min=1e-5, max=1 - 1e-5)
    padding = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2

    def unfold_wo_center(t):
        u = torch.nn.functional.unfold(t, kernel_size=kernel_size, padding=padding, dilation=dilation)
        u = u.reshape(1, 1, kernel_size**2, H, W)
        size = kernel_size**2
        return torch.cat((u[:, :, : size // 2], u[:, :, size // 2 + 1:]), dim=2)

    log_fg, log_bg = torch.log(fg), torch.log(bg)
    same_fg = log_fg[:, :, None] + unfold_wo_center(log_fg)
    same_bg = log_bg[:, :, None] + unfold_wo_center(log_bg)
    top = torch.max(same_fg, same_bg)
    pairwise = -(torch.log(torch.exp(same_fg - top) + torch.exp(same_bg - top)) + top)[:, 0]
    region = torch.as_tensor(np.asarray(labels), dtype=X.dtype).reshape(1, 1, H, W)
    inside = unfold_wo_center(torch.ones_like(region))[:, 0]
    same_region = (unfold_wo_center(region)[:, 0] == region[:, :, None][:, 0]).to(X.dtype)
    weights = same_region * inside
    return (pairwise * weights).sum() / weights.sum().clamp(min=1.0)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"paper": {"BoxSnake code (v2, BoxInst form)": boxsnake_code}},
)
