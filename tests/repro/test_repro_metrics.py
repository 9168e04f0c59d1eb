"""Recall@K and MAP@R against brute-force definitions, with duplicates and ties, and a hand example."""

from __future__ import annotations

import numpy as np
import pytest

from gpwref import GpwrefError
from gpwref_verification.repro.metrics import retrieval_metrics


def brute_force(E, y, ks, tie):
    """Rank the gallery (everything but the query) with Python's sort; read both metrics off it."""
    n = len(y)
    hits = {k: 0 for k in ks}
    ap_total, counted = 0.0, 0
    for q in range(n):
        gallery = [j for j in range(n) if j != q]
        positives = [j for j in gallery if y[j] == y[q]]
        if not positives:
            continue
        counted += 1
        sim = {j: float(np.dot(E[q], E[j])) for j in gallery}
        # equal similarity: positives first (optimistic) or negatives first (pessimistic)
        kind = (lambda j: 0 if y[j] == y[q] else 1) if tie == "optimistic" else (lambda j: 1 if y[j] == y[q] else 0)
        ranking = sorted(gallery, key=lambda j: (-sim[j], kind(j)))
        first_positive_rank = 1 + next(r for r, j in enumerate(ranking) if y[j] == y[q])
        for k in ks:
            hits[k] += first_positive_rank <= k
        R = len(positives)
        found, precision_sum = 0, 0.0
        for i, j in enumerate(ranking[:R], start=1):
            if y[j] == y[q]:
                found += 1
                precision_sum += found / i
        ap_total += precision_sum / R
    return {k: hits[k] / counted for k in ks}, ap_total / counted


def official_recall(E, y, k):
    """The official code's rule (ret_metric.py), written out: the second-largest same-label
    similarity (the query itself assumed largest) is the threshold; hit if < k negatives beat it."""
    S = E @ E.T
    hits = 0
    for i in range(len(y)):
        pos = np.sort(S[i][y == y[i]])
        neg = S[i][y != y[i]]
        hits += np.sum(neg > pos[-2]) < k
    return hits / len(y)


@pytest.mark.parametrize("tie", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_with_ties_and_duplicates(seed, tie):
    rng = np.random.default_rng(seed)
    n, d = 40, 3
    # coarse integer embeddings make many exact ties; copied rows make duplicates (same and other class)
    E = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
    E[E.sum(axis=1) == 0] = 1.0
    for _ in range(6):
        a, b = rng.integers(0, n, size=2)
        E[a] = E[b]
    y = rng.integers(0, 6, size=n)
    ks = (1, 2, 4, 8, 16)
    got = retrieval_metrics(E, y, ks, tie=tie, chunk=7)  # a chunk size that does not divide n
    want_recall, want_map = brute_force(E, y, ks, tie)
    assert got["recall"] == pytest.approx(want_recall, abs=1e-12)
    assert got["map_at_r"] == pytest.approx(want_map, abs=1e-12)


def test_tie_rules_differ_only_through_ties():
    # query 0; item 1 (positive) and item 2 (negative) equally similar to it
    E = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [0.6, 0.8]])
    y = np.array([0, 0, 1, 1])
    optimistic = retrieval_metrics(E, y, (1,), tie="optimistic")
    pessimistic = retrieval_metrics(E, y, (1,), tie="pessimistic")
    assert optimistic["recall"][1] > pessimistic["recall"][1]


def test_hand_example():
    # Four unit vectors on a circle at angles 0, 10, 90, 100 degrees; labels a, b, a, b.
    angles = np.deg2rad([0.0, 10.0, 90.0, 100.0])
    E = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 1, 0, 1])
    # Query 0: similarities 1 -> cos10 (b), 2 -> cos90 (a), 3 -> cos100 (b); ranking 1, 2, 3.
    #   first positive (item 2) at rank 2; R = 1, top-1 = item 1 (negative): AP 0.
    # Query 1: 0 -> cos10 (a), 2 -> cos80 (a), 3 -> cos90 (b); positive 3 at rank 3; AP 0.
    # Query 2: 0 -> cos90 (a), 1 -> cos80 (b), 3 -> cos10 (b); ranking 3, 1, 0: rank 3; AP 0.
    # Query 3: 0 -> cos100 (a), 1 -> cos90 (b), 2 -> cos10 (a); ranking 2, 1, 0: item 1 at rank 2; AP 0.
    got = retrieval_metrics(E, y, (1, 2, 3))
    assert got["recall"] == {1: 0.0, 2: 0.5, 3: 1.0}
    assert got["map_at_r"] == 0.0
    # Move item 2 next to item 0 (angle 4): queries 0, 2 and 3 now find a positive first.
    angles = np.deg2rad([0.0, 10.0, 4.0, 100.0])
    E = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    got = retrieval_metrics(E, y, (1, 2, 3))
    # query 0: 2 (a, cos4), 1, 3 -> rank 1, AP 1.   query 1 (b at 10): 2 (a, cos6), 0 (a, cos10),
    # 3 (b, cos90) -> rank 3, AP 0.   query 2 (a at 4): 0 (a, cos4), 1 (b, cos6), 3 -> rank 1, AP 1.
    # query 3 (b at 100): 1 (b, cos90), 2 (a, cos96), 0 -> rank 1, AP 1.
    assert got["recall"] == {1: 0.75, 2: 0.75, 3: 1.0}
    assert got["map_at_r"] == pytest.approx(0.75)


def test_equals_official_rule_without_exact_duplicates():
    rng = np.random.default_rng(3)
    E = rng.normal(size=(60, 8))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    y = rng.integers(0, 7, size=60)
    got = retrieval_metrics(E, y, (1, 2, 4, 8))
    for k in (1, 2, 4, 8):
        assert got["recall"][k] == pytest.approx(official_recall(E, y, k), abs=1e-12)


def test_query_removed_by_index_not_by_value():
    # items 0 and 1 are identical copies of the same class: each is the other's perfect match
    E = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = np.array([0, 0, 1, 2])
    got = retrieval_metrics(E, y, (1,))
    # queries 2 and 3 have no positive: left out; queries 0 and 1 find their copy first
    assert got["queries"] == 2 and got["queries_without_positive"] == 2
    assert got["recall"][1] == 1.0 and got["map_at_r"] == 1.0


def test_bad_input():
    with pytest.raises(GpwrefError, match="tie"):
        retrieval_metrics(np.eye(3), [0, 0, 1], tie="random")
    with pytest.raises(GpwrefError, match="labels"):
        retrieval_metrics(np.eye(3), [0, 1])
    with pytest.raises(GpwrefError, match="at least one query"):
        retrieval_metrics(np.eye(3), [0, 1, 2])
    with pytest.raises(GpwrefError, match="finite"):
        retrieval_metrics(np.array([[np.nan, 1.0], [1.0, 0.0]]), [0, 0])
