"""Second opinions on normalised softmax; the cross-entropy-over-proxies pieces shared with CosFace,
ArcFace and ProxyNCA (``torch_ce``, ``loop_ce``) live here too."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .proxy_anchor import pml_labels
from .contract import LossRefs


def torch_ce(z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, include_positive: bool = True) -> torch.Tensor:
    """Mean over alive anchors of -log(sum_P e^z / sum_D e^z), D = P u N (or N), as softplus / difference of logsumexps."""
    ninf = torch.tensor(-math.inf, dtype=z.dtype)
    den = (pos | neg) if include_positive else neg
    alive = pos.any(dim=1) & den.any(dim=1)
    if not alive.any():
        return (z * 0).sum()
    za = z[alive]
    lse_pos = torch.logsumexp(torch.where(pos[alive], za, ninf), dim=1)
    lse_neg = torch.logsumexp(torch.where(neg[alive], za, ninf), dim=1)
    if include_positive:
        # log(sum_D / sum_P) = log(1 + sum_N / sum_P) = logaddexp(0, lse_N - lse_P): tiny losses stay
        # accurate. An anchor with no negative has lse_N = -inf and loss 0; the -inf rows' NaN
        # gradients stay inside torch.where's masked branch.
        ce = torch.logaddexp(torch.zeros((), dtype=z.dtype), lse_neg - lse_pos)
    else:
        ce = lse_neg - lse_pos
    return ce.sum() / alive.sum()


def loop_ce(z: np.ndarray, dz_dS: np.ndarray, pos: np.ndarray, neg: np.ndarray, include_positive: bool = True):
    """Plain per-anchor loop; weights from their closed forms: negatives e^{z_j} / sum_D e^z,
    positives -(e^{z_j} / sum_P e^z) (sum_N e^z / sum_D e^z) when D includes P, else -e^{z_j} / sum_P e^z."""
    m, n = z.shape
    rows = []
    for i in range(m):
        P = [j for j in range(n) if pos[i, j]]
        N = [j for j in range(n) if neg[i, j]]
        if P and (N or include_positive):
            rows.append((i, P, N))
    G = np.zeros((m, n))
    total = 0.0
    for i, P, N in rows:
        top = max(z[i, j] for j in P + N)
        sum_p = sum(math.exp(z[i, j] - top) for j in P)
        sum_n = sum(math.exp(z[i, j] - top) for j in N)
        if include_positive:
            total += math.log1p(sum_n / sum_p)
            sum_d = sum_p + sum_n
            for j in P:
                G[i, j] = -(math.exp(z[i, j] - top) / sum_p) * (sum_n / sum_d) * dz_dS[i, j] / len(rows)
            for j in N:
                G[i, j] = math.exp(z[i, j] - top) / sum_d * dz_dS[i, j] / len(rows)
        else:
            total += math.log(sum_n) - math.log(sum_p)
            for j in P:
                G[i, j] = -math.exp(z[i, j] - top) / sum_p * dz_dS[i, j] / len(rows)
            for j in N:
                G[i, j] = math.exp(z[i, j] - top) / sum_n * dz_dS[i, j] / len(rows)
    return (total / len(rows) if rows else 0.0), G


def unless_saturated(value: torch.Tensor) -> torch.Tensor:
    """A PML cross-entropy value, or NotApplicable when every sample is classified with a margin:
    torch's CE gradient is softmax - onehot, whose round-off (~1e-16) is then not small next to the
    exact gradient (~ the mean CE); gpwref's r/(1 + r) form stays accurate there (hand test)."""
    if value.item() < 1e-6:
        raise NotApplicable(f"mean cross-entropy {value.item():.1e} < 1e-6: PML's softmax - onehot gradient is round-off at that scale")
    return value


def torch_loss(S, pos, neg, profile, *, temperature):
    return torch_ce(S / temperature, pos, neg)


def loop(S, pos, neg, profile, *, temperature):
    return loop_ce(S / temperature, np.full(S.shape, 1.0 / temperature), pos, neg)


def pml_module(R, *, temperature):
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    loss_fn = NormalizedSoftmaxLoss(num_classes=R.shape[0], embedding_size=R.shape[1], temperature=temperature)
    loss_fn.W.data = R.detach().T.clone()  # PML's W is d x C: column c is class c's weight
    return loss_fn, "W"


def pml(X, labels, R, ref_labels, ref_self, normalize, *, temperature):
    """pytorch-metric-learning NormalizedSoftmaxLoss with W = ref^T (class r = proxy row r)."""
    y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)
    return unless_saturated(pml_module(R, temperature=temperature)[0](X, y))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
