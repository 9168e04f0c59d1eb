"""Second opinions on margin loss: torch formulation (explicit triplets), plain loop, real code.

Written from the formulas (docs/losses.md#margin) without calling gpwref's vectorised
code. Per-class betas need the anchors' labels (``needs_labels``); dL/dbeta is checked by autograd
with beta as a leaf (``torch_extras``). Checks run through verification/harness.py's frozen-value
path (nothing is detached; the regime is the set of active hinges).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs

DUPLICATE = 1e-12  # 2 - 2S at or below this is a duplicated pair (d2 = 0, no slope): gpwref's rule


def _beta_leaves(beta, labels):
    """Leaf tensors for beta (one, or one per class) and each anchor's beta as a tensor."""
    if isinstance(beta, Mapping):
        classes = sorted(beta)
        leaves = {c: torch.tensor(float(beta[c]), dtype=torch.float64, requires_grad=True) for c in classes}
        per_anchor = torch.stack([leaves[int(c)] for c in labels])
        return leaves, per_anchor
    leaf = torch.tensor(float(beta), dtype=torch.float64, requires_grad=True)
    return leaf, leaf.expand(len(labels))


def _torch_value(S, pos, neg, anchor_beta, *, margin, beta, nu, pairing, dist_eps):
    raw = 2 - 2 * S
    apart = raw.detach() > DUPLICATE
    D = torch.where(apart, torch.sqrt(torch.where(apart, raw, torch.ones_like(raw)) + dist_eps), torch.full_like(raw, math.sqrt(dist_eps)))
    b = anchor_beta[:, None]
    pos_term = torch.relu(D - b + margin)
    neg_term = torch.relu(b - D + margin)
    zero = (S * 0).sum()
    if pairing == "pairs":
        p_terms, n_terms = pos_term[pos], neg_term[neg]
        Z = int((p_terms > 0).sum()) + int((n_terms > 0).sum())
        value = (p_terms.sum() + n_terms.sum()) / Z if Z else zero
        if nu > 0:  # global beta only (gpwref refuses per-class betas with nu > 0 here)
            value = value + nu * anchor_beta[0]
        return value
    # triplets (i, p, n): every positive of i with every negative of i, as PML enumerates them
    triplet = pos[:, :, None] & neg[:, None, :]
    p_terms = pos_term[:, :, None].expand(triplet.shape)[triplet]
    n_terms = neg_term[:, None, :].expand(triplet.shape)[triplet]
    Z = int((p_terms > 0).sum()) + int((n_terms > 0).sum())
    if int(triplet.sum()) == 0:
        return zero
    value = (p_terms.sum() + n_terms.sum()) / Z if Z else zero
    if nu > 0:
        if isinstance(beta, Mapping):
            if Z:
                value = value + nu * b.expand(triplet.shape[:2])[:, :, None].expand(triplet.shape)[triplet].sum() / Z
        else:
            value = value + nu * anchor_beta[0]
    return value


def torch_loss(S, pos, neg, profile, *, labels, margin, beta, nu, pairing, dist_eps):
    """Vectorised torch: relu terms on sqrt(2 - 2S + eps); triplets enumerated as a 3-D mask."""
    anchors = np.asarray(labels)
    _, anchor_beta = _beta_leaves(beta, anchors)
    return _torch_value(S, pos, neg, anchor_beta.detach(), margin=margin, beta=beta, nu=nu, pairing=pairing, dist_eps=dist_eps)


def torch_extras(S, pos, neg, profile, *, labels, margin, beta, nu, pairing, dist_eps):
    """dL/dbeta by autograd, beta (global or per class) as leaf tensors."""
    leaves, anchor_beta = _beta_leaves(beta, np.asarray(labels))
    value = _torch_value(S, pos, neg, anchor_beta, margin=margin, beta=beta, nu=nu, pairing=pairing, dist_eps=dist_eps)
    if not value.requires_grad:
        grads = {c: 0.0 for c in leaves} if isinstance(leaves, dict) else 0.0
        return {"grad_beta": grads}
    if isinstance(leaves, dict):
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        return {"grad_beta": {c: (0.0 if g is None else g.item()) for c, g in zip(leaves, grads)}}
    (grad,) = torch.autograd.grad(value, [leaves], allow_unused=True)
    return {"grad_beta": 0.0 if grad is None else grad.item()}


def _distance(s, dist_eps):
    raw = 2 - 2 * s
    if raw <= DUPLICATE:
        return math.sqrt(dist_eps), 0.0
    D = math.sqrt(raw + dist_eps)
    return D, -1.0 / D


def _terms(S, pos, neg, labels, margin, beta, pairing, dist_eps):
    """Every loss term as (anchor, column, multiplicity, value, dvalue/dS, sign for beta)."""
    rows, cols = S.shape
    out = []
    for i in range(rows):
        b = float(beta[int(labels[i])]) if isinstance(beta, Mapping) else float(beta)
        P = [j for j in range(cols) if pos[i, j]]
        N = [j for j in range(cols) if neg[i, j]]
        if pairing == "triplets" and not (P and N):
            continue
        for j in P:
            D, slope = _distance(S[i, j], dist_eps)
            out.append((i, j, len(N) if pairing == "triplets" else 1, D - b + margin, slope, -1.0))
        for j in N:
            D, slope = _distance(S[i, j], dist_eps)
            out.append((i, j, len(P) if pairing == "triplets" else 1, b - D + margin, -slope, +1.0))
    return out


def loop(S, pos, neg, profile, *, labels, margin, beta, nu, pairing, dist_eps):
    """Plain loop over terms: an active term with multiplicity k adds k t / Z and its slope k dD/dS / Z."""
    terms = _terms(S, pos, neg, labels, margin, beta, pairing, dist_eps)
    active = [t for t in terms if t[3] > 0]
    Z = sum(t[2] for t in active)
    G = np.zeros(S.shape)
    value = 0.0
    if Z:
        for i, j, k, t, slope, _ in active:
            value += k * t / Z
            G[i, j] += k * slope / Z
    if nu > 0:
        if isinstance(beta, Mapping):
            if Z:
                for i, j, k, t, slope, sign in terms:
                    if sign < 0:  # one positive term per triplet of anchor i: sum over triplets of beta_{y_i}
                        value += nu * k * float(beta[int(labels[i])]) / Z
        elif pairing == "pairs" or terms:
            value += nu * float(beta)
    return value, G


def frozen_value(S_eval, S_frozen, pos, neg, profile, *, labels, margin, beta, nu, pairing, dist_eps):
    """Nothing is detached: the plain value; the regime is which terms are active."""
    value, _ = loop(S_eval, pos, neg, profile, labels=labels, margin=margin, beta=beta, nu=nu, pairing=pairing, dist_eps=dist_eps)
    active = tuple(t[3] > 0 for t in _terms(S_eval, pos, neg, labels, margin, beta, pairing, dist_eps))
    return value, active


def scales(params, ours, pos, neg):
    """dL/dbeta is a signed sum of the active terms' k/Z, which add up to 1 in absolute value: when
    they cancel (as many active negative as positive terms) the exact 0 carries ~1e-16 of noise."""
    return {"extras": {"grad_beta": 1.0}}


def fd_skip(S, i, j, pos, neg, profile, **hyper):
    """Central differences with h = 1e-6 are unreliable near sqrt's singularity at d2 = 0: their
    relative error is about (h / d2)^2, so entries with 2 - 2S < 1e-2 (S > 0.995) are not compared."""
    return 2 - 2 * S[i, j] < 1e-2


def pml(X, labels, R, ref_labels, ref_self, normalize, *, margin, beta, nu, pairing, dist_eps):
    """pytorch-metric-learning MarginLoss(margin, nu, beta, triplets_per_anchor='all', learn_beta=True)."""
    from pytorch_metric_learning.losses import MarginLoss

    if pairing != "triplets" or dist_eps != 0.0:
        raise NotApplicable("PML MarginLoss enumerates all triplets on torch.cdist distances (no eps)")
    if not normalize:
        raise NotApplicable("PML's LpDistance always normalises rows")
    if ref_self is not None:
        raise NotApplicable("PML has no notion of an anchor's own copy inside ref_emb")
    y = torch.as_tensor(labels)
    yr = None if R is None else torch.as_tensor(ref_labels)
    # PML stores beta as a float32 tensor (margin_loss.py:98), so beta=1.2 becomes 1.2000000477 even
    # for float64 embeddings (a ~4e-8 relative change of the value); we set the float64 value so the
    # comparison is of the rules, and tests/losses/test_margin.py shows the float32 rounding itself.
    if isinstance(beta, Mapping):
        n_classes = int(max(max(beta), int(y.max()))) + 1
        loss_fn = MarginLoss(margin=margin, nu=nu, learn_beta=True, num_classes=n_classes)
        values = torch.ones(n_classes, dtype=torch.float64)
        for c, value in beta.items():
            values[c] = float(value)
    else:
        loss_fn = MarginLoss(margin=margin, nu=nu, beta=beta, learn_beta=True)
        values = torch.tensor([float(beta)], dtype=torch.float64)
    loss_fn.beta = torch.nn.Parameter(values)
    return loss_fn(X, y, None, R, yr)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    needs_labels=True,
    frozen_value=frozen_value,
    fd_skip=fd_skip,
    scales=scales,
    torch_extras=torch_extras,
)
