"""Second opinions on Proxy-Anchor: torch formulation, plain loop, pytorch-metric-learning.

Also the helpers every sample-to-proxy refs module shares: ``proxy_batch`` (a batch whose reference
set is a set of class proxies, the shape PML's proxy losses can express) and ``pml_labels`` (PML
keeps one proxy per class in row order: proxy row r is PML class r, so each sample's label becomes
the row of its class's proxy).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gpwref.testing import Batch, make_batch
from ..common import NotApplicable
from .contract import LossRefs


def proxy_batch(rng: np.random.Generator, *, m=(1, 10), d=(2, 5), per_class=1, extra_classes=(0, 3), missing=False, **knobs) -> Batch:
    """A batch plus proxies: ``per_class`` proxies for every class of the batch, proxies of
    ``extra_classes`` classes no sample has, rows shuffled; ``missing=True`` drops one class's proxies."""
    base = make_batch(rng, m=m, d=d, with_ref=False, on_boundary=False, **knobs)
    classes = list(np.unique(base.labels))
    if missing and len(classes) > 1:
        classes.pop(int(rng.integers(len(classes))))
    lo, hi = extra_classes
    classes += [5000 + k for k in range(int(rng.integers(lo, hi + 1)))]
    proxy_labels = np.repeat(np.array(classes, dtype=np.int64), per_class)
    order = rng.permutation(len(proxy_labels))
    proxy_labels = proxy_labels[order]
    W = rng.normal(size=(len(proxy_labels), base.embeddings.shape[1]))
    return Batch(base.embeddings, base.labels, W, proxy_labels, None, True, None, base.cases + ("with_ref", "proxies"))


def pml_labels(labels, R, ref_labels, ref_self, normalize, *, every_sample_has_proxy: bool) -> torch.Tensor:
    """Sample labels as PML proxy rows; NotApplicable when PML cannot hold this proxy set."""
    if R is None:
        raise NotApplicable("PML's proxy losses hold their own proxies: the batch needs ref = the proxies")
    if not normalize:
        raise NotApplicable("PML's cosine/Lp distances always L2-normalise rows")
    if ref_self is not None:
        raise NotApplicable("a proxy cannot be a sample's own copy in PML")
    ref_labels = np.asarray(ref_labels)
    if len(np.unique(ref_labels)) != len(ref_labels):
        raise NotApplicable("PML holds exactly one proxy per class")
    row_of = {int(c): r for r, c in enumerate(ref_labels)}
    missing = [int(c) for c in np.asarray(labels) if int(c) not in row_of]
    if missing and every_sample_has_proxy:
        raise NotApplicable(f"PML indexes a proxy by the sample's label; class {missing[0]} has none")
    # A class without a proxy gets row index n (outside the proxy table): no positive proxy.
    return torch.as_tensor([row_of.get(int(c), len(ref_labels)) for c in np.asarray(labels)], dtype=torch.int64)


def torch_loss(S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, profile: str, *, alpha, margin) -> torch.Tensor:
    """Column-wise (per proxy) log(1 + sum exp) as logaddexp(0, logsumexp) over masked columns."""
    n = S.shape[1]
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    zero = torch.zeros((), dtype=S.dtype)
    pos_cols = torch.logaddexp(zero, torch.logsumexp(torch.where(pos, -alpha * (S - margin), ninf), dim=0))
    neg_cols = torch.logaddexp(zero, torch.logsumexp(torch.where(neg, alpha * (S + margin), ninf), dim=0))
    with_pos = pos.any(dim=0)
    pos_part = pos_cols[with_pos].sum() / with_pos.sum() if with_pos.any() else (S * 0).sum()
    return pos_part + neg_cols.sum() / n


def loop(S: np.ndarray, pos: np.ndarray, neg: np.ndarray, profile: str, *, alpha, margin):
    """Plain loop over proxies; weights from w = 1 / (exp(-z_xp) + sum_x' exp(z_x'p - z_xp)) (one extra logit 0)."""
    m, n = S.shape
    G = np.zeros((m, n))
    proxies_with_pos = [p for p in range(n) if any(pos[x, p] for x in range(m))]
    total = 0.0
    for p in range(n):
        P = [x for x in range(m) if pos[x, p]]
        N = [x for x in range(m) if neg[x, p]]
        if P:
            total += math.log1p(sum(math.exp(-alpha * (S[x, p] - margin)) for x in P)) / len(proxies_with_pos)
        total += math.log1p(sum(math.exp(alpha * (S[x, p] + margin)) for x in N)) / n
        for x in P:
            z = -alpha * (S[x, p] - margin)
            w = 1.0 / (math.exp(-z) + sum(math.exp(-alpha * (S[k, p] - margin) - z) for k in P))
            G[x, p] = -alpha * w / len(proxies_with_pos)
        for x in N:
            z = alpha * (S[x, p] + margin)
            w = 1.0 / (math.exp(-z) + sum(math.exp(alpha * (S[k, p] + margin) - z) for k in N))
            G[x, p] = alpha * w / n
    return total, G


def pml_module(R, *, alpha, margin):
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    loss_fn = ProxyAnchorLoss(num_classes=R.shape[0], embedding_size=R.shape[1], margin=margin, alpha=alpha)
    loss_fn.proxies.data = R.detach().clone()
    return loss_fn


def pml(X, labels, R, ref_labels, ref_self, normalize, *, alpha, margin):
    """pytorch-metric-learning ProxyAnchorLoss with its proxies set to ref (row r = class r)."""
    y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)
    return pml_module(R, alpha=alpha, margin=margin)(X, y)


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
