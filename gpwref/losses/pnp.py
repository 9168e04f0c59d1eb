r"""PNP loss ("only penalizing negatives before positives"), Li, Ji, Jiang, Zhang, Wang, Tian,
Cheng, Tang, AAAI 2022.

For query (anchor) i with scores s_j = S_ij, each positive p in P_i counts the negatives ranked
above it with a sigmoid of temperature ``anneal``::

    R_i(p) = sum_{n in N_i} sigmoid((s_n - s_p) / anneal)
    l_i    = (1/|P_i|) sum_{p in P_i} F(R_i(p)),     L = (1/N') sum_{i: P_i nonempty} l_i

with F per ``variant`` (each F(0) = 0 and F increasing, written to stay accurate for tiny R):

    O:  F = R                    Ds: F = log(1 + R)             Iu: F = (1 + R) log(1 + R)
    Ib: F = (b R - log(1 + b R)) / b^2                           Dq: F = 1 - (1 + R)^(-alpha)

(Dq is "1 - mean (1 + R)^-alpha" of the paper and PML, distributed over the mean.)

GPW weights, with s'_np = d sigmoid((s_n - s_p)/anneal) / ds_n::

    G_in = +(1/N') (1/|P_i|) sum_{p in P_i} F'(R_i(p)) s'_np          (negatives: pushed, >= 0)
    G_ip = -(1/N') (1/|P_i|) F'(R_i(p)) sum_{n in N_i} s'_np          (positives: pulled, <= 0)

F' = 1, 1/(1 + R), 1 + log(1 + R), R/(1 + b R), alpha (1 + R)^(-alpha - 1); so the loss obeys GPW.
Uses self similarity and negative-relative / positive-relative similarity (the ranks). Ties: no
tie-break, a negative tied with a positive counts sigmoid(0) = 1/2 (slope 1/(4 anneal)).

Conventions (docs/losses.md#pnp), each a knob: pytorch-metric-learning ``PNPLoss``
(``losses/pnp_loss.py``: b=2, alpha=1, anneal=0.01, variant "O") sets the diagonal of its positive
mask for the anchors of its positive pairs, so a query that has a positive is also one of its own
positives (``include_query``: gpwref adds it with score 1, held constant as for Smooth-AP; a query
without any other positive stays out, as in PML, where its N_pos is 0), and clamps the sigmoid's exponent to [-50, 50]
(``sigmoid_clamp=50``: slope 0 beyond).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, number, one_of
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .smooth_ap import SIGMOID_CLAMP, query_items, sigmoid_and_slope


def x_minus_log1p(x: np.ndarray) -> np.ndarray:
    """x - log(1 + x) for x >= 0 without cancellation: its Taylor series below 0.1."""
    x = np.asarray(x, dtype=float)
    small = x < 0.1
    xs = np.where(small, x, 0.0)
    series = np.zeros_like(x)
    power = xs * xs
    for k in range(2, 22):  # x^k / k alternating; x < 0.1 leaves < 1e-21 relative
        series += (1.0 if k % 2 == 0 else -1.0) * power / k
        power = power * xs
    return np.where(small, series, x - np.log1p(np.where(small, 0.0, x)))


def rank_penalty(R: np.ndarray, variant: str, b: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """F(R) and F'(R) of the chosen variant."""
    if variant == "O":
        return R, np.ones_like(R)
    if variant == "Ds":
        return np.log1p(R), 1.0 / (1.0 + R)
    if variant == "Iu":
        return (1.0 + R) * np.log1p(R), 1.0 + np.log1p(R)
    if variant == "Ib":
        return x_minus_log1p(b * R) / b**2, R / (1.0 + b * R)
    if variant == "Dq":
        return -np.expm1(-alpha * np.log1p(R)), alpha * np.exp(-(alpha + 1.0) * np.log1p(R))
    raise ValueError(variant)  # pragma: no cover - the catalog validates variant


def value_and_grad(
    S: np.ndarray, pairs: Pairs, profile: Profile, *, variant: str, b: float, alpha: float, anneal: float,
    include_query: bool, sigmoid_clamp: float | None,
) -> PairResult:
    m, n = S.shape
    alive = pairs.pos.any(axis=1)  # the query joins its positives only when it has one (PML)
    n_alive = int(np.count_nonzero(alive))
    per_anchor = np.zeros(m)
    grad_sim = np.zeros((m, n))
    for i in np.nonzero(alive)[0]:
        items, s, rel = query_items(S[i], pairs.pos[i], pairs.neg[i], include_query)
        sig, slope = sigmoid_and_slope(s[~rel][:, None] - s[rel][None, :], anneal, sigmoid_clamp)  # [n, p]
        F, dF = rank_penalty(sig.sum(axis=0), variant, b, alpha)
        n_rel = int(rel.sum())
        per_anchor[i] = F.sum() / n_rel / n_alive
        grad = np.zeros(len(s))
        grad[~rel] = slope @ dF / n_rel / n_alive
        grad[rel] = -dF * slope.sum(axis=0) / n_rel / n_alive
        grad_sim[i, items] = grad[: len(items)]  # the appended query (constant score) has none
    used = alive[:, None]
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos & used,
        neg_used=pairs.neg & used,
    )


ENTRY = LossEntry(
    name="pnp",
    function=value_and_grad,
    hyper={
        "variant": one_of("O", "Ds", "Dq", "Iu", "Ib"),
        "b": number(above=0),
        "alpha": number(above=0),
        "anneal": number(above=0),
        "include_query": boolean(),
        "sigmoid_clamp": SIGMOID_CLAMP,
    },
    defaults={
        "paper": {"variant": "O", "b": 2.0, "alpha": 1.0, "anneal": 0.01, "include_query": False, "sigmoid_clamp": None},
        "pml": {"variant": "O", "b": 2.0, "alpha": 1.0, "anneal": 0.01, "include_query": True, "sigmoid_clamp": 50.0},
    },
    reference="Li, Ji, Jiang, Zhang, Wang, Tian, Cheng, Tang. Rethinking the Optimization of Average Precision: "
    "Only Penalizing Negative Instances before Positive Ones is Enough. AAAI 2022",
    similarities=("self", "negative-relative", "positive-relative"),
    supports_ref=True,
    variants=({}, {"variant": "Ds"}, {"variant": "Dq"}, {"variant": "Iu"}, {"variant": "Ib"}),
    limits="include_query holds the query's own score at 1 (unit rows)",
    family="ranking",
    counterparts={"pytorch-metric-learning": "PNPLoss"},
)
