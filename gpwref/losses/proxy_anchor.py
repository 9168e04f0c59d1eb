r"""Proxy-Anchor loss, Kim, Kim, Cho, Kwak, CVPR 2020, as GPW weights on sample-proxy pairs.

The reference set IS the proxies: ``compute(X, y, ref=W, ref_labels=proxy_classes)`` gives
S = X W^T (m samples x n proxies, both L2-normalised by default) and ``grad_ref = dL/dW``. For proxy
p, its positives X+_p are the samples x with ``pos[x, p]`` (same class, not a ``ref_self`` pair) and
its negatives X-_p the samples of other classes. With P+ the proxies that have at least one positive
in the batch and n the number of proxies::

    L = (1/|P+|) sum_{p in P+} log(1 + sum_{x in X+_p} exp(-alpha (S_xp - margin)))
      + (1/n)    sum_{p}       log(1 + sum_{x in X-_p} exp( alpha (S_xp + margin)))

(the first sum is 0 when P+ is empty). Several proxies of one class, classes without a proxy and
proxies without samples are all allowed: each proxy is one column of the formula above.

GPW weights (a column-wise softmax with an extra logit 0)::

    G_xp = -(alpha/|P+|) exp(-alpha (S_xp - margin)) / (1 + sum_{x' in X+_p} exp(-alpha (S_x'p - margin)))
    G_xp = +(alpha/n)    exp( alpha (S_xp + margin)) / (1 + sum_{x' in X-_p} exp( alpha (S_x'p + margin)))

on positive and negative pairs respectively. Uses self similarity and negative-relative similarity
(the softmax runs over all of a proxy's negatives, so a hard negative takes weight from the others).

The anchors of this loss are the proxies: ``per_anchor`` has one entry per PROXY (length n, the
columns of S), ``per_anchor[p]`` being proxy p's two terms with their divisors; ``loss ==
per_anchor.sum()`` as for every loss.

Defaults alpha = 32, margin = 0.1 in the paper and in pytorch-metric-learning's ``ProxyAnchorLoss``
(``losses/proxy_anchor_loss.py``, divisors len(with_pos_proxies) and num_classes, two sub-losses
summed; masked log-sum-exp with an added 0 logit). Needs a reference set: without proxies there is
nothing to anchor on, so a batch without ``ref`` raises GpwrefError.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile


def require_proxies(pairs: Pairs, loss_name: str) -> None:
    """Sample-to-proxy losses need the proxies as the reference set."""
    if pairs.ref_is_batch:
        raise GpwrefError(
            "ref",
            f"'{loss_name}' is a sample-to-proxy loss: pass the class proxies as ref=W with ref_labels = each proxy's class "
            "(from_similarity: S = samples x proxies with ref_labels); the batch cannot be its own proxy set",
        )


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, alpha: float, margin: float) -> PairResult:
    require_proxies(pairs, "proxy_anchor")
    n = S.shape[1]
    pos, neg = pairs.pos, pairs.neg
    n_with_pos = int(np.count_nonzero(pos.any(axis=0)))
    # Column p of S is proxy p's row once transposed: the softmax runs over the samples.
    pos_lse, pos_w = masked_lse(-alpha * (S.T - margin), pos.T, add_one=True)
    neg_lse, neg_w = masked_lse(alpha * (S.T + margin), neg.T, add_one=True)
    pos_share = 1.0 / n_with_pos if n_with_pos else 0.0
    per_proxy = pos_lse * pos_share + neg_lse / n
    grad_sim = (alpha / n) * neg_w.T - (alpha * pos_share) * pos_w.T
    return PairResult(
        loss=float(per_proxy.sum()),
        per_anchor=per_proxy,
        grad_sim=grad_sim,
        pos_used=pos.copy(),
        neg_used=neg.copy(),
    )


ENTRY = LossEntry(
    name="proxy_anchor",
    function=value_and_grad,
    hyper={"alpha": number(above=0), "margin": number()},
    defaults={"paper": {"alpha": 32.0, "margin": 0.1}, "pml": {"alpha": 32.0, "margin": 0.1}},
    reference="Kim, Kim, Cho, Kwak. Proxy Anchor Loss for Deep Metric Learning. CVPR 2020",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    limits="sample-to-proxy: ref IS the proxies (ref_labels = their classes) and is required; per_anchor is per proxy",
    family="proxy",
    counterparts={"pytorch-metric-learning": "ProxyAnchorLoss"},
)
