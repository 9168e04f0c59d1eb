"""Second opinions on sub-center ArcFace: torch formulation, plain loop, PML SubCenterArcFaceLoss.

Written from the formula in ``gpwref/losses/subcenter_arcface.py``'s docstring. The sub-centres are
grouped by class, which the pair masks alone do not tell, so the harness passes the labels and the
reference labels (``needs_labels``, ``needs_ref_labels``). The real implementation is
pytorch-metric-learning 2.9 ``losses/subcenter_arcface_loss.py`` (its W column c*K + k is class c's
k-th sub-centre; ``get_cosine`` takes the max over them, then ArcFace's margin).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs
from .normalized_softmax import torch_ce, unless_saturated
from .proxy_anchor import pml_labels


def _classes(ref_labels):
    return sorted(set(int(c) for c in np.asarray(ref_labels)))


def torch_loss(S, pos, neg, profile, *, labels, ref_labels, scale, margin):
    """Per class a masked ``max`` (autograd sends the weight to the maximum), then ArcFace's psi as
    C cos m - sin(theta) sin m with sin(theta) = sqrt((1 - C)(1 + C)) (acos loses digits near
    theta = 0), and the monotone branch C - m sin m beyond theta = pi - m."""
    y = torch.as_tensor(np.asarray(labels))
    ref_labels = np.asarray(ref_labels)
    classes = _classes(ref_labels)
    usable = pos | neg
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    columns, present = [], []
    for c in classes:
        cols = torch.as_tensor(ref_labels == c)
        Uc = usable[:, cols]
        ok = Uc.any(dim=1)
        best = torch.where(Uc, S[:, cols], ninf).max(dim=1).values
        columns.append(torch.where(ok, best, torch.zeros_like(best)))
        present.append(ok)
    Sc = torch.stack(columns, dim=1)
    present = torch.stack(present, dim=1)
    own = (y[:, None] == torch.as_tensor(classes)[None, :]) & present
    C = torch.clamp(Sc, -1.0, 1.0)
    inner = own & (C.detach().abs() < 1.0)
    safe = torch.where(inner, C, torch.zeros_like(C))  # sqrt has an infinite slope at |C| = 1
    angle_form = torch.where(inner, safe * math.cos(margin) - torch.sqrt((1.0 - safe) * (1.0 + safe)) * math.sin(margin), C.detach() * math.cos(margin))
    psi = torch.where(C.detach() >= -math.cos(margin), angle_form, C - margin * math.sin(margin))
    z = torch.where(own, scale * psi, scale * Sc)
    return torch_ce(z, own, ~own & present)


def loop(S, pos, neg, profile, *, labels, ref_labels, scale, margin):
    """Plain loops: the winner of each class, the class-level cross-entropy, the weight to the winner."""
    m, n = S.shape
    classes = _classes(ref_labels)
    rows = []
    for i in range(m):
        best = {}
        for j in range(n):
            if pos[i, j] or neg[i, j]:
                c = int(ref_labels[j])
                if c not in best or S[i, j] > best[c][0]:
                    best[c] = (S[i, j], j)
        if int(labels[i]) in best:
            rows.append((i, best))
    value, G = 0.0, np.zeros((m, n))
    for i, best in rows:
        yi = int(labels[i])
        z, dz = {}, {}
        for c, (s, j) in best.items():
            if c != yi:
                z[c], dz[c] = scale * s, scale
                continue
            t = math.acos(min(max(s, -1.0), 1.0))
            if t <= math.pi - margin:
                z[c] = scale * math.cos(t + margin)
                dz[c] = 0.0 if abs(s) > 1 else scale * math.sin(t + margin) / math.sin(t)
            else:
                z[c] = scale * (math.cos(t) - margin * math.sin(margin))
                dz[c] = 0.0 if abs(s) > 1 else scale
        top = max(z.values())
        total = sum(math.exp(v - top) for v in z.values())
        others = sum(math.exp(v - top) for c, v in z.items() if c != yi)  # not total - e^z_y: that cancels
        value += math.log1p(others / math.exp(z[yi] - top))
        for c, (s, j) in best.items():
            share = -others / total if c == yi else math.exp(z[c] - top) / total
            G[i, j] = share * dz[c] / len(rows)
    return (value / len(rows) if rows else 0.0), G


def pml_module(R, ref_labels, *, scale, margin):
    """PML SubCenterArcFaceLoss with W column c*K + k = the k-th sub-centre (reference order) of the c-th class."""
    from pytorch_metric_learning.losses import SubCenterArcFaceLoss

    classes = _classes(ref_labels)
    groups = [np.nonzero(np.asarray(ref_labels) == c)[0] for c in classes]
    K = len(groups[0])
    if any(len(g) != K for g in groups):
        raise NotApplicable("PML holds the same number of sub-centres for every class")
    order = torch.as_tensor(np.concatenate(groups))
    loss_fn = SubCenterArcFaceLoss(num_classes=len(classes), embedding_size=R.shape[1], margin=math.degrees(margin), scale=scale, sub_centers=K)
    loss_fn.W.data = R.detach()[order].T.clone()
    return loss_fn, classes, order


def pml(X, labels, R, ref_labels, ref_self, normalize, *, scale, margin):
    """pytorch-metric-learning SubCenterArcFaceLoss (margin in degrees there, monotone branch always on)."""
    if R is None or ref_self is not None or not normalize:
        pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)  # raises the reason
    loss_fn, classes, _ = pml_module(R, ref_labels, scale=scale, margin=margin)
    index = {c: k for k, c in enumerate(classes)}
    if any(int(c) not in index for c in labels):
        raise NotApplicable("PML indexes a class by the sample's label; a sample's class has no sub-centre")
    y = torch.as_tensor([index[int(c)] for c in labels], dtype=torch.int64)
    return unless_saturated(loss_fn(X, y))


def draw_batch(rng, knobs, variant):
    """For ``gpwref verify``: a batch with 1 to 3 sub-centres for every class (the same K for all, as PML holds)."""
    from .proxy_anchor import proxy_batch

    m = knobs.pop("m", (2, 8))
    for knob in ("with_ref", "ref_includes_batch", "on_boundary"):
        knobs.pop(knob, None)
    return proxy_batch(rng, m=m, per_class=int(rng.integers(1, 4)), **knobs)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
    draw_batch=draw_batch,
    needs_labels=True,
    needs_ref_labels=True,
)
