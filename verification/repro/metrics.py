r"""Retrieval metrics on a labelled set that is its own gallery: Recall@K and MAP@R.

Every image is a query; the gallery is every *other* image (the query is removed by index, not by
value, so an exact duplicate of the query stays in the gallery). Similarity is the dot product of
the (unit) embeddings, computed in float64.

Tie rule (``tie``): items of equal similarity are ordered

* ``"optimistic"`` (default): positives before negatives. This is the official code's rule
  (``ret_metric.py``: the best positive's similarity is the threshold and a query is a hit at K
  when fewer than K negatives are *strictly* more similar);
* ``"pessimistic"``: negatives before positives (a negative tied with the best positive counts
  against the query).

Among items of the same kind the order does not change either metric.

* Recall@K: the fraction of queries whose highest-ranked positive has rank <= K, i.e.
  ``#{negatives ranked above the best positive} < K``.
* MAP@R (Musgrave, Belongie, Lim, ECCV 2020): with R = the query's number of positives,
  ``MAP@R = (1/R) sum_{i=1..R} P(i) rel(i)`` over the top R of the ranking, P(i) the precision of
  the top i, rel(i) = 1 if the i-th item is a positive.

A query with no positive in the gallery (a class with one image) cannot be retrieved: it is left
out of both means and counted in ``queries_without_positive``.
"""

from __future__ import annotations

import numpy as np

from gpwref import GpwrefError

DEFAULT_KS = (1, 2, 4, 8, 16, 32)
TIES = ("optimistic", "pessimistic")


def _check(embeddings, labels, ks, tie):
    E = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if E.ndim != 2 or E.shape[0] < 2:
        raise GpwrefError("embeddings", "must be a 2-D array with at least 2 rows", f"shape {E.shape}")
    if not np.all(np.isfinite(E)):
        raise GpwrefError("embeddings", "must be finite")
    if y.shape != (E.shape[0],):
        raise GpwrefError("labels", f"must have one label per row ({E.shape[0]})", f"shape {y.shape}")
    if tie not in TIES:
        raise GpwrefError("tie", f"must be one of {list(TIES)}", repr(tie))
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise GpwrefError("ks", "must be a non-empty list of integers >= 1", ks)
    return E, y, ks


def retrieval_metrics(embeddings, labels, ks=DEFAULT_KS, *, tie: str = "optimistic", chunk: int = 512) -> dict:
    """{"recall": {k: value}, "map_at_r": value, "queries": n, "queries_without_positive": c}."""
    E, y, ks = _check(embeddings, labels, ks, tie)
    n = E.shape[0]
    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    counted = 0
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        S = E[rows] @ E.T
        same = y[rows, None] == y[None, :]
        is_self = np.zeros_like(same)
        is_self[np.arange(len(rows)), rows] = True
        pos = same & ~is_self
        neg = ~same
        n_pos = pos.sum(axis=1)
        valid = n_pos > 0
        best_pos = np.where(pos, S, -np.inf).max(axis=1, initial=-np.inf)
        above = S > best_pos[:, None] if tie == "optimistic" else S >= best_pos[:, None]
        negatives_above = (neg & above).sum(axis=1)
        for k in ks:
            hits[k] += int(np.sum(valid & (negatives_above < k)))
        # ranking for MAP@R: descending S, then the tie rule's kind order; the query itself last
        kind = np.where(pos, 0, 1) if tie == "optimistic" else np.where(pos, 1, 0)
        kind = np.where(is_self, 2, kind)
        order = np.lexsort((kind, np.where(is_self, np.inf, -S)), axis=1)
        r_max = int(n_pos.max(initial=0))
        if r_max:
            rel = np.take_along_axis(pos, order[:, :r_max], axis=1).astype(np.float64)
            ranks = np.arange(1, r_max + 1)
            within = ranks[None, :] <= n_pos[:, None]
            precision = np.cumsum(rel, axis=1) / ranks[None, :]
            ap = np.where(within, precision * rel, 0.0).sum(axis=1)
            ap_sum += float(np.sum(ap[valid] / n_pos[valid]))
        counted += int(valid.sum())
    if counted == 0:
        raise GpwrefError("labels", "need at least one query with a positive in the gallery (a class with >= 2 images)")
    return {
        "recall": {k: hits[k] / counted for k in ks},
        "map_at_r": ap_sum / counted,
        "queries": counted,
        "queries_without_positive": n - counted,
        "tie": tie,
    }
