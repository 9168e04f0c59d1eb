"""Second opinions on ProxyNCA: torch formulation, plain loop, PML ProxyNCALoss, RDML's rules."""

from __future__ import annotations

import numpy as np
import torch

from ..common import NotApplicable
from .normalized_softmax import loop_ce, torch_ce, unless_saturated
from .proxy_anchor import pml_labels
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, scale, include_positive):
    return torch_ce(-scale * (2 - 2 * S), pos, neg, include_positive)


def loop(S, pos, neg, profile, *, scale, include_positive):
    return loop_ce(-scale * (2 - 2 * S), np.full(S.shape, 2.0 * scale), pos, neg, include_positive)


def pml_module(R, *, scale):
    from pytorch_metric_learning.losses import ProxyNCALoss

    loss_fn = ProxyNCALoss(num_classes=R.shape[0], embedding_size=R.shape[1], softmax_scale=scale)
    loss_fn.proxies.data = R.detach().clone()
    return loss_fn, "proxies"


def pml(X, labels, R, ref_labels, ref_self, normalize, *, scale, include_positive):
    """pytorch-metric-learning ProxyNCALoss(softmax_scale=scale): positive proxy in the denominator."""
    if not include_positive:
        raise NotApplicable("PML's softmax always includes the positive proxy")
    y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=False)
    if not (y < R.shape[0]).any():
        raise NotApplicable("no sample has a proxy: PML's MeanReducer averages an empty tensor (NaN)")
    return unless_saturated(pml_module(R, scale=scale)[0](X, y))


def rdml(X, labels, R, ref_labels, ref_self, normalize, *, scale, include_positive):
    """RDML criteria/proxynca.py rules, transcribed: rows normalised then multiplied by 3, squared
    distance to the label's proxy plus logsumexp of minus the squared distances to every other
    class's proxy, mean over the batch."""
    if include_positive or scale != 9.0:
        raise NotApplicable("RDML's rule is scale 9 (3x on both sides) with the positive proxy excluded")
    y = pml_labels(labels, R, ref_labels, ref_self, normalize, every_sample_has_proxy=True)
    if R.shape[0] < 2:
        raise NotApplicable("RDML needs a negative proxy for every sample")
    batch = 3 * torch.nn.functional.normalize(X, dim=1)
    proxies = 3 * torch.nn.functional.normalize(R, dim=1)
    terms = []
    for i in range(X.shape[0]):
        c = int(y[i])
        others = [k for k in range(R.shape[0]) if k != c]
        d_pos = ((batch[i] - proxies[c]) ** 2).sum()
        d_neg = ((batch[i][None, :] - proxies[others]) ** 2).sum(dim=1)
        terms.append(d_pos + torch.logsumexp(-d_neg, dim=0))
    return torch.stack(terms).mean()


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}, "paper": {"RDML rules": rdml}},
)
