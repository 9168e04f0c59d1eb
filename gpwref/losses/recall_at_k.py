r"""Recall@k surrogate (RS@k) with similarity mixup (SiMix), Patel, Tolias, Matas, CVPR 2022.

For query q with scores s_z over its ranking set Omega_q (its positives P_q and negatives N_q;
with ``include_query`` also the query itself, score s_q, as a non-relevant item), each positive p
gets a smooth rank and each k in K a smooth count of the positives ranked within the top k::

    r(p)   = 1 + sum_{z in Omega_q, z != p} sigmoid((s_z - s_p) / tau1)
    R_k    = sum_{p in P_q} sigmoid((k - r(p)) / tau2)          (capped at k with ``recall_cap``)
    l_q    = (1/|K|) sum_k (1 - R_k / min(k, |P_q|))
    L      = (1/N') sum_{q: P_q nonempty} l_q

evaluated as 1 - R_k / n_k = sum_p sigmoid((r(p) - k)/tau2) / n_k when |P_q| <= k (no cancellation
near perfect recall) and (k - R_k) / k otherwise.

GPW weights. With w_p = dl_q/dr(p) = (1/|K|) sum_k [R_k not capped] sigmoid'((k - r(p))/tau2) / n_k >= 0
and sigma1'_zp the slope of sigmoid((s_z - s_p)/tau1) in s_z::

    dl_q/ds_j = sum_{p in P_q, p != j} w_p sigma1'_jp - [j in P_q] w_j sum_{z in Omega_q, z != j} sigma1'_zj
    G_qj = dl_q/ds_j / N'

Negatives always get G >= 0; a positive is pulled by its own rank and pushed by the other positives'
ranks, so its weight can have either sign (``gpw_sign`` False). On tied or duplicated scores the two
sums of a positive's weight are at the slopes' peak 1/(4 tau1) and cancel (exactly, to 0, on a tied
one-class row), so G there is exact only up to round-off of the sums, not of their difference.
Uses self similarity and the whole ranking (negative- and positive-relative similarity).

SiMix (``simix`` = the mixing coefficient a in [0, 1], ``None`` = off). For every class and every
pair of its samples i < j (batch order) a virtual sample v = a x_i + (1 - a) x_j joins the batch,
not re-normalised, as a query and as a ranking item, with the pair's class. Similarities are
bilinear, so the extended similarity matrix is T = M S1 M^T with M the mixing matrix (a row e_i per
real sample, a e_i + (1 - a) e_j per virtual one) and S1 = S with its diagonal set to 1 (the
self-similarity of unit rows; SiMix assumes unit rows, as the official code's normalised embeddings;
S's diagonal is never read). The loss runs on T over all real and virtual queries, and G is reported
on the REAL pairs after chaining through the mixing: G = offdiag(M^T (dL/dT) M). ``per_anchor``
chains the same way (a virtual query's term is shared a : 1 - a by its two sources). Without SiMix
the query's own score (``include_query``) is 1, held constant as in Smooth-AP; with SiMix it is
T_vv for a virtual query (a^2 + (1 - a)^2 + 2 a (1 - a) S_ij, which does move).

Conventions (docs/losses.md#recall_at_k), each a knob; the official code
(yash0307/RecallatK_surrogate ``src/losses.py``, ``src/mixup.py``) is ``include_query=True`` (the
query sits in every positive's rank sum), ``sigmoid_clamp=50`` (both sigmoids' exponents clamped to
[-50, 50], slope 0 beyond), ``recall_cap=True`` (R_k capped at k by torch.minimum; gpwref's rule:
the cap binds only when R_k > k), k clipped to the batch size (pass such k_values), SiMix with a
U(0, 1) coefficient drawn per pair (gpwref takes one coefficient for all pairs) for 3, 4 or 6
samples per class only. It takes no labels (class-sorted equal groups) and divides by the enlarged
batch size. SiMix is defined on the batch only (GpwrefError with a separate ``ref``).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, boolean, integer, non_empty_tuple, number, optional
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .smooth_ap import SIGMOID_CLAMP, sigmoid_and_slope


def mixing_matrix(labels: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    """M (|E| x m) and the extended labels: real samples first, then one virtual per same-class pair i < j."""
    m = len(labels)
    rows, ext = [np.eye(m)], [labels]
    for c in np.unique(labels):
        members = np.nonzero(labels == c)[0]
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                row = np.zeros(m)
                row[members[x]] += a
                row[members[y]] += 1.0 - a
                rows.append(row[None, :])
                ext.append(np.array([c]))
    return np.concatenate(rows), np.concatenate(ext)


def ranking_terms(s, rel, k_values, tau1, tau2, clamp, recall_cap):
    """One query: l_q and dl_q/ds over its items (scores s, relevance rel)."""
    diff = s[:, None] - s[None, :]  # [z, p] = s_z - s_p
    sig1, slope1 = sigmoid_and_slope(diff, tau1, clamp)
    np.fill_diagonal(sig1, 0.0)
    np.fill_diagonal(slope1, 0.0)
    n_rel = int(rel.sum())
    rank = 1.0 + sig1[:, rel].sum(axis=0)  # r(p) for p in P
    loss, w = 0.0, np.zeros(n_rel)
    for k in k_values:
        norm = min(k, n_rel)
        sig2, slope2 = sigmoid_and_slope(k - rank, tau2, clamp)
        count = sig2.sum()
        if recall_cap and count > k:
            continue  # capped: recall 1 (|P| > k here), no gradient
        if n_rel <= k:
            loss += sigmoid_and_slope(rank - k, tau2, clamp)[0].sum() / norm
        else:
            loss += (k - count) / norm
        w += slope2 / norm
    loss /= len(k_values)
    w /= len(k_values)
    w_full = np.zeros(len(s))
    w_full[rel] = w
    grad = slope1 @ w_full - w_full * slope1.sum(axis=0)
    return loss, grad


def value_and_grad(
    S: np.ndarray, pairs: Pairs, profile: Profile, *, k_values: tuple, tau1: float, tau2: float,
    include_query: bool, sigmoid_clamp: float | None, recall_cap: bool, simix: float | None,
) -> PairResult:
    m, n = S.shape
    if simix is not None:
        if not pairs.ref_is_batch:
            raise GpwrefError("ref", "recall_at_k with simix mixes the batch's own samples; it is not defined with a separate reference set (use simix=None)")
        M, ext_labels = mixing_matrix(pairs.labels, simix)
        S1 = S.copy()
        np.fill_diagonal(S1, 1.0)
        T = M @ S1 @ M.T
        same = ext_labels[:, None] == ext_labels[None, :]
        pos = same & ~np.eye(len(ext_labels), dtype=bool)
        neg = ~same
        own_score = np.diag(T)
    else:
        M, T, pos, neg = None, S, pairs.pos, pairs.neg
        own_score = np.ones(m)
    alive = pos.any(axis=1)
    n_alive = int(np.count_nonzero(alive))
    per_query = np.zeros(T.shape[0])
    grad_T = np.zeros(T.shape)
    for q in np.nonzero(alive)[0]:
        items = np.nonzero(pos[q] | neg[q])[0]
        s, rel = T[q, items], pos[q, items]
        if include_query:
            s, rel = np.append(s, own_score[q]), np.append(rel, False)
        loss, grad = ranking_terms(s, rel, k_values, tau1, tau2, sigmoid_clamp, recall_cap)
        per_query[q] = loss / n_alive
        grad_T[q, items] = grad[: len(items)] / n_alive
        if include_query and simix is not None:
            grad_T[q, q] = grad[-1] / n_alive  # a virtual query's own score moves with S_ij
    if simix is None:
        per_anchor, grad_sim = per_query, grad_T
        alive_real = alive
    else:
        per_anchor = M.T @ per_query
        grad_sim = M.T @ grad_T @ M
        np.fill_diagonal(grad_sim, 0.0)  # S's diagonal is held at 1
        alive_real = alive[:m]
    return PairResult(
        loss=float(per_query.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos & alive_real[:, None],
        neg_used=pairs.neg & alive_real[:, None],
    )


ENTRY = LossEntry(
    name="recall_at_k",
    function=value_and_grad,
    hyper={
        "k_values": non_empty_tuple(integer(at_least=1), "integers >= 1"),
        "tau1": number(above=0),
        "tau2": number(above=0),
        "include_query": boolean(),
        "sigmoid_clamp": SIGMOID_CLAMP,
        "recall_cap": boolean(),
        "simix": optional(number(at_least=0, at_most=1, noun="a mixing coefficient"), "no SiMix"),
    },
    defaults={
        "paper": {
            "k_values": (1, 2, 4, 8, 16), "tau1": 0.01, "tau2": 1.0, "include_query": False,
            "sigmoid_clamp": None, "recall_cap": False, "simix": None,
        },
    },
    reference="Patel, Tolias, Matas. Recall@k Surrogate Loss with Large Batches and Similarity Mixup. CVPR 2022",
    similarities=("self", "negative-relative", "positive-relative"),
    gpw_sign=False,
    supports_ref=True,
    variants=(
        {},
        {"include_query": True, "sigmoid_clamp": 50.0, "recall_cap": True, "k_values": (1, 2, 4)},
        {"simix": 0.3},
        {"simix": 0.3, "include_query": True, "sigmoid_clamp": 50.0, "recall_cap": True, "k_values": (1, 2, 4)},
    ),
    limits="simix needs the batch as its own reference set and assumes unit rows (S's diagonal taken as 1); "
    "positive weights can take either sign",
    family="ranking",
    counterparts={"RecallatK_surrogate (official)": "RecallatK (src/losses.py)"},
)
