"""The oracle on sample-to-proxy losses (proxy sets as drawn, proxy rows apart from sample rows in the
report) and the strategies' label-structure knobs: pk, proxies, one_class=False at every m, m = 1 only
when asked."""

from __future__ import annotations

import numpy as np
import pytest

import gpwref
from gpwref.testing import Batch, assert_loss_matches, batches, explain_mismatch, make_batch

X = np.random.default_rng(0).normal(size=(12, 6))
Y = np.arange(12) // 3
PROXIES = np.random.default_rng(1).normal(size=(4, 6))
PROXY_LABELS = np.arange(4)


def _proxy_anchor(alpha):
    def loss(embeddings, labels, ref, ref_labels):
        return gpwref.compute("proxy_anchor", embeddings, labels, ref=ref, ref_labels=ref_labels, alpha=alpha).loss

    def grad(embeddings, labels, ref, ref_labels):
        r = gpwref.compute("proxy_anchor", embeddings, labels, ref=ref, ref_labels=ref_labels, alpha=alpha)
        return r.grad_emb, r.grad_ref

    def per_proxy(embeddings, labels, ref, ref_labels):
        return gpwref.compute("proxy_anchor", embeddings, labels, ref=ref, ref_labels=ref_labels, alpha=alpha).per_anchor

    return loss, grad, per_proxy


# --- explain(): proxy rows and sample rows kept apart ------------------------------------------------

def test_proxy_loss_report_with_more_samples_than_proxies():
    """The worst sample (row 4 or beyond) used to index the 4 per-proxy contributions: IndexError."""
    loss, grad, _ = _proxy_anchor(16.0)  # the paper's alpha is 32
    report = explain_mismatch(loss, "proxy_anchor", Batch(X, Y, PROXIES, PROXY_LABELS), candidate_grad=grad,
                              framework="numpy")
    assert not report.agree
    assert report.worst_anchor is not None and report.worst_anchor.reference is None  # a sample: no contribution of its own
    text = str(report)
    assert "per-proxy contributions, reference" in text and "per-anchor contributions" not in text


def test_proxy_loss_report_names_the_worst_proxy_not_a_sample_beside_it():
    loss, grad, per_proxy = _proxy_anchor(16.0)
    batch = Batch(X[[0, 3, 6]], Y[[0, 3, 6]], PROXIES, PROXY_LABELS)  # 3 samples, 4 proxies
    report = explain_mismatch(loss, "proxy_anchor", batch, candidate_grad=grad, candidate_per_anchor=per_proxy,
                              framework="numpy")
    mine = per_proxy(batch.embeddings, batch.labels, PROXIES, PROXY_LABELS)
    paper = gpwref.compute("proxy_anchor", batch.embeddings, batch.labels, ref=PROXIES, ref_labels=PROXY_LABELS).per_anchor
    worst = int(np.argmax(np.abs(mine - paper)))
    assert report.worst_proxy is not None
    assert (report.worst_proxy.index, report.worst_proxy.label) == (worst, PROXY_LABELS[worst])
    assert report.worst_proxy.candidate == mine[worst] and report.worst_proxy.reference == paper[worst]
    assert report.worst_anchor.reference is None and report.worst_anchor.candidate is None
    assert f"worst proxy: row {worst} of ref" in str(report)


def test_oracle_draws_proxy_sets_for_a_proxy_loss_by_default():
    loss, grad, _ = _proxy_anchor(32.0)
    seen = []

    def candidate(embeddings, labels, ref=None, ref_labels=None):
        seen.append((np.asarray(labels), None if ref_labels is None else np.asarray(ref_labels)))
        return loss(embeddings, labels, ref, ref_labels)

    summary = assert_loss_matches(candidate, "proxy_anchor", candidate_grad=grad, framework="numpy",
                                  check=("value",), examples=15)
    assert summary.compared == 15
    for labels, ref_labels in seen:
        classes = int(labels.max()) + 1
        assert set(labels.tolist()) == set(range(classes))  # labels 0..C-1
        assert np.array_equal(ref_labels, np.arange(classes))  # one proxy per class, every class


# --- strategies: proxies ----------------------------------------------------------------------------

@pytest.mark.parametrize("per_class", [1, 3])
def test_proxy_sets_cover_every_class_with_k_proxies_and_labels_0_to_c_minus_1(per_class):
    for seed in range(80):
        batch = make_batch(np.random.default_rng(seed), proxies=per_class, m=(1, 12))
        classes = int(batch.labels.max()) + 1
        assert sorted(set(batch.labels.tolist())) == list(range(classes))
        assert np.array_equal(batch.ref_labels, np.repeat(np.arange(classes), per_class))
        assert batch.ref.shape == (classes * per_class, batch.embeddings.shape[1]) and batch.ref_self is None
        assert {"proxies", "with_ref"} <= set(batch.cases)
    with_singletons = make_batch(np.random.default_rng(0), proxies=1, singletons=True)
    assert with_singletons.labels.max() < 1000 and "singletons" in with_singletons.cases


@pytest.mark.parametrize("knobs", [{"proxies": 0}, {"proxies": True}, {"proxies": 1, "with_ref": False},
                                   {"proxies": 2, "ref_includes_batch": True}])
def test_bad_proxy_knobs_are_refused_when_built(knobs):
    with pytest.raises(gpwref.GpwrefError) as caught:
        batches(**knobs)
    assert caught.value.argument == "proxies"


# --- strategies: class-sorted P x K ------------------------------------------------------------------

def test_pk_batches_are_class_sorted_blocks():
    for seed in range(40):
        batch = make_batch(np.random.default_rng(seed), pk=((2, 5), (2, 4)))
        P, K = int(batch.labels.max()) + 1, int(np.sum(batch.labels == 0))
        assert 2 <= P <= 5 and 2 <= K <= 4 and batch.m == P * K
        assert np.array_equal(batch.labels, np.repeat(np.arange(P), K)) and "pk" in batch.cases
    fixed = make_batch(np.random.default_rng(0), pk=(3, 4), proxies=1)
    assert fixed.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and fixed.ref_labels.tolist() == [0, 1, 2]
    one = make_batch(np.random.default_rng(0), pk=(1, 3))
    assert "one_class" in one.cases


@pytest.mark.parametrize("knobs", [{"pk": (2, 3), "m": 6}, {"pk": (2, 3), "classes": 2}, {"pk": 4},
                                   {"pk": (2, 3), "one_class": True}, {"pk": (1, 3), "one_class": False},
                                   {"pk": (2, 1), "singletons": False}, {"pk": (2, 0)}])
def test_bad_pk_knobs_are_refused_when_built(knobs):
    with pytest.raises(gpwref.GpwrefError) as caught:
        batches(**knobs)
    assert caught.value.argument == "pk"


# --- strategies: one_class=False at every m, m = 1 only when asked ------------------------------------

def test_one_class_false_is_honoured_at_every_m():
    for seed in range(300):
        batch = make_batch(np.random.default_rng(seed), m=(1, 5), one_class=False)
        assert len(np.unique(batch.labels)) >= 2, (seed, batch.labels)
        strict = make_batch(np.random.default_rng(seed), m=(1, 5), one_class=False, singletons=False)
        values, counts = np.unique(strict.labels, return_counts=True)
        assert len(values) >= 2 and (counts >= 2).all(), (seed, strict.labels)
    with pytest.raises(gpwref.GpwrefError, match="at least 2 rows"):
        batches(m=1, one_class=False)
    with pytest.raises(gpwref.GpwrefError, match="at least 4 rows"):
        batches(m=(1, 3), one_class=False, singletons=False)


def test_m_1_only_when_asked_and_the_smallest_m_is_the_low_end():
    sizes = [make_batch(np.random.default_rng(seed)).m for seed in range(300)]
    assert min(sizes) == 2 and max(sizes) == 12
    asked = [make_batch(np.random.default_rng(seed), m=(1, 12)) for seed in range(300)]
    assert any(b.m == 1 and "m=1" in b.cases for b in asked)
    assert min(make_batch(np.random.default_rng(seed), m=(5, 9)).m for seed in range(100)) == 5
