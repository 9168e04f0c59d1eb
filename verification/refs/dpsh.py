"""Second opinions on the DPSH pairwise likelihood: torch formulation, plain loop, the released code's rules.

Written from the formula (Li et al. 2016; docs/losses.md#dpsh) without calling gpwref's code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common import NotApplicable
from .contract import LossRefs


def torch_loss(S, pos, neg, profile, *, reduction):
    """Negative log-likelihood of Bernoulli(sigmoid(S/2)) labels, via binary_cross_entropy_with_logits."""
    used = pos | neg
    logits = S[used] / 2
    target = pos[used].to(S.dtype)
    nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    return nll / max(int(used.sum()), 1) if reduction == "mean" else nll


def loop(S, pos, neg, profile, *, reduction):
    m, n = S.shape
    total, count = 0.0, 0
    G = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            if not (pos[i, j] or neg[i, j]):
                continue
            theta = S[i, j] / 2
            s = 1.0 if pos[i, j] else 0.0
            # -log p(s | theta), p(1) = sigmoid(theta): -s*theta + log(1 + e^theta)
            total += -s * theta + (max(theta, 0.0) + math.log1p(math.exp(-abs(theta))))
            p_same = 1.0 / (1.0 + math.exp(-theta)) if theta >= 0 else math.exp(theta) / (1.0 + math.exp(theta))
            G[i, j] = (p_same - s) / 2
            count += 1
    Z = max(count, 1) if reduction == "mean" else 1
    return total / Z, G / Z


def released_code(X, labels, R, ref_labels, ref_self, normalize, *, reduction):
    """jiangqy/DPSH-pytorch DPSH_CIFAR_10.py training loss, likelihood part, transcribed.

    theta = outputs x bank^T / 2 with the bank detached; logloss = (S*theta - Logtrick(theta)).sum()
    / (num_train * batch), Logtrick(x) = log(1 + exp(-|x|)) + max(x, 0); loss = -logloss.
    """
    if R is None:
        raise NotApplicable("the released code pairs the batch with a separate memory bank of training codes")
    if ref_self is not None:
        raise NotApplicable("the released code keeps each sample's own (detached) copy in the bank as a pair with s_ii = 1; gpwref never counts the self pair")
    if reduction != "mean":
        raise NotApplicable("the released code divides by num_train x batch (the 'mean' reduction)")
    U = torch.nn.functional.normalize(X, dim=1) if normalize else X
    bank = (torch.nn.functional.normalize(R, dim=1) if normalize else R).detach()
    sim = torch.as_tensor(np.asarray(labels)[:, None] == np.asarray(ref_labels)[None, :], dtype=X.dtype)
    theta = U.mm(bank.t()) / 2
    logtrick = torch.log(1 + torch.exp(-torch.abs(theta))) + torch.max(theta, torch.zeros(1, dtype=X.dtype))
    logloss = (sim * theta - logtrick).sum() / (bank.shape[0] * U.shape[0])
    return -logloss


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"paper": {"DPSH-pytorch code rules": released_code}},
)
