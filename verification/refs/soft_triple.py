"""Second opinions on SoftTriple: torch formulation, plain loop, PML SoftTripleLoss.

SoftTriple groups the reference columns (centers) by class, which the pair masks alone do not tell
(two negative centers of one anchor may belong to one class or to two), so the harness passes the
labels and reference labels to the torch formulation and the loop (``needs_labels``, ``needs_ref_labels``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs
from .normalized_softmax import torch_ce, unless_saturated
from .proxy_anchor import pml_labels


def torch_loss(S, pos, neg, profile, *, labels, ref_labels, la, gamma, margin, center_softmax):
    """Per class, a masked softmax over its usable centers (or RDML's softmax across classes per
    center index), the relaxed similarity as a weighted sum, then a masked cross-entropy."""
    y = torch.as_tensor(np.asarray(labels))
    classes = sorted(set(int(c) for c in np.asarray(ref_labels)))
    ref_labels = np.asarray(ref_labels)
    usable = pos | neg
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    relaxed, present = [], []
    if center_softmax == "centers":
        for c in classes:
            cols = torch.as_tensor(ref_labels == c)
            Sc, Uc = S[:, cols], usable[:, cols]
            ok = Uc.any(dim=1, keepdim=True)
            logits = torch.where(ok, torch.where(Uc, Sc / gamma, ninf), torch.zeros_like(Sc).detach())
            a = torch.softmax(logits, dim=1)
            relaxed.append((a * Sc).sum(dim=1))
            present.append(ok[:, 0])
    else:
        K = int(np.sum(ref_labels == classes[0]))
        grid = [[int(j) for j in np.nonzero(ref_labels == c)[0]] for c in classes]  # grid[c][k]
        per_k = [torch.softmax(torch.stack([S[:, grid[c][k]] for c in range(len(classes))], dim=1) / gamma, dim=1) for k in range(K)]
        for c in range(len(classes)):
            relaxed.append(sum(per_k[k][:, c] * S[:, grid[c][k]] for k in range(K)))
            present.append(torch.ones(S.shape[0], dtype=torch.bool))
    Sp = torch.stack(relaxed, dim=1)
    present = torch.stack(present, dim=1)
    own = y[:, None] == torch.as_tensor(classes)[None, :]
    z = la * (Sp - margin * own.to(S.dtype))
    return torch_ce(z, own & present, ~own & present)


def loop(S, pos, neg, profile, *, labels, ref_labels, la, gamma, margin, center_softmax):
    """Plain loops; weights from the closed forms of gpwref/losses/soft_triple.py's docstring."""
    m, n = S.shape
    classes = sorted(set(int(c) for c in ref_labels))
    cols_of = {c: [j for j in range(n) if ref_labels[j] == c] for c in classes}
    rows = []
    for i in range(m):
        relaxed, weight = {}, {}
        for c in classes:
            if center_softmax == "centers":
                cols = [j for j in cols_of[c] if pos[i, j] or neg[i, j]]
                if not cols:
                    continue
                top = max(S[i, j] for j in cols)
                total = sum(math.exp((S[i, j] - top) / gamma) for j in cols)
                for j in cols:
                    weight[j] = math.exp((S[i, j] - top) / gamma) / total
            else:
                for k, j in enumerate(cols_of[c]):
                    others = [cols_of[c2][k] for c2 in classes]
                    top = max(S[i, o] for o in others)
                    weight[j] = math.exp((S[i, j] - top) / gamma) / sum(math.exp((S[i, o] - top) / gamma) for o in others)
                cols = cols_of[c]
            relaxed[c] = sum(weight[j] * S[i, j] for j in cols)
        if int(labels[i]) in relaxed:
            rows.append((i, relaxed, weight))
    value, G = 0.0, np.zeros((m, n))
    for i, relaxed, weight in rows:
        yi = int(labels[i])
        z = {c: la * (relaxed[c] - (margin if c == yi else 0.0)) for c in relaxed}
        top = max(z.values())
        total = sum(math.exp(v - top) for v in z.values())
        others = sum(math.exp(v - top) for c, v in z.items() if c != yi)
        value += math.log1p(others / math.exp(z[yi] - top))
        # g_c = la (p_c - [c = y]) / m', with p_y - 1 = -(sum over other classes) / total
        g = {c: la * (math.exp(v - top) / total if c != yi else -others / total) / len(rows) for c, v in z.items()}
        for c in relaxed:
            for j in cols_of[c]:
                if j not in weight:
                    continue
                if center_softmax == "centers":
                    G[i, j] = g[c] * weight[j] * (1 + (S[i, j] - relaxed[c]) / gamma)
                else:
                    k = cols_of[c].index(j)
                    common = sum(g[c2] * weight[cols_of[c2][k]] * S[i, cols_of[c2][k]] for c2 in classes) / gamma
                    G[i, j] = weight[j] * (g[c] * (1 + S[i, j] / gamma) - common)
    return (value / len(rows) if rows else 0.0), G


def pml_module(R, ref_labels, *, la, gamma, margin):
    """PML SoftTripleLoss with fc column c*K + k = the k-th center (ref order) of the c-th class (sorted)."""
    from pytorch_metric_learning.losses import SoftTripleLoss

    classes = sorted(set(int(c) for c in ref_labels))
    groups = [np.nonzero(np.asarray(ref_labels) == c)[0] for c in classes]
    K = len(groups[0])
    if any(len(g) != K for g in groups):
        raise NotApplicable("PML holds the same number of centers for every class")
    order = torch.as_tensor(np.concatenate(groups))
    loss_fn = SoftTripleLoss(num_classes=len(classes), embedding_size=R.shape[1], centers_per_class=K, la=la, gamma=gamma, margin=margin)
    loss_fn.fc.data = R.detach()[order].T.clone()
    return loss_fn, classes, order


def pml(X, labels, R, ref_labels, ref_self, normalize, *, la, gamma, margin, center_softmax):
    """pytorch-metric-learning SoftTripleLoss (softmax over each class's centers, gamma stored as 1/gamma)."""
    if center_softmax != "centers":
        raise NotApplicable("PML's softmax runs over each class's centers")
    if R is None or ref_self is not None or not normalize:
        pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)  # raises the reason
    loss_fn, classes, _ = pml_module(R, ref_labels, la=la, gamma=gamma, margin=margin)
    index = {c: k for k, c in enumerate(classes)}
    if any(int(c) not in index for c in labels):
        raise NotApplicable("PML indexes a class by the sample's label; a sample's class has no center")
    y = torch.as_tensor([index[int(c)] for c in labels], dtype=torch.int64)
    return unless_saturated(loss_fn(X, y))


def draw_batch(rng, knobs, variant):
    """For ``gpwref verify``: a batch with proxies (centers) for its classes, ``per_class`` each.

    The RDML variant (center_softmax="classes") needs the same number of centers in every class,
    which a randomly labelled reference set almost never has, so every class gets two there.
    """
    from .proxy_anchor import proxy_batch

    m = knobs.pop("m", (2, 8))
    for knob in ("with_ref", "ref_includes_batch", "on_boundary"):
        knobs.pop(knob, None)
    per_class = 2 if variant.get("center_softmax") == "classes" else int(rng.integers(1, 3))
    return proxy_batch(rng, m=m, per_class=per_class, **knobs)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    draw_batch=draw_batch,
    needs_labels=True,
    needs_ref_labels=True,
    # value and G by autograd at torch's S from X, as this loss has always been checked
    autograd_at_own_S=False,
    sign_exempt="SoftTriple's center weights can take either sign (module docstring)",
)
