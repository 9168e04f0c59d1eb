"""assert_loss_matches / explain_mismatch: deliberately wrong candidates are caught, located and explained.

The wrong candidates are the official MS code's rules (``official_ms`` in test_testing_clients.py)
with one deliberate change each: a sign error, a mean over the surviving anchors only, the index
self rule instead of the value rule, beta 50 instead of 40. Each must raise ``LossMismatch`` whose
report names the anchor and the rule (or says that no known rule explains it).
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402

import gpwref  # noqa: E402
from gpwref.testing import Batch, LossMismatch, assert_loss_matches, batches, explain_mismatch, make_batch  # noqa: E402
from tests.oracle.test_testing_clients import DUPLICATE_X, DUPLICATE_Y, official_ms, pml_ms  # noqa: E402

EXAMPLES = 25


def caught(candidate, loss="multi_similarity", **kwargs):
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(candidate, loss, examples=EXAMPLES, **kwargs)
    assert isinstance(info.value, AssertionError)
    assert str(info.value) == str(info.value.report)
    return info.value.report


# ---- the deliberately wrong candidates -------------------------------------------------------------


def test_a_sign_error_is_caught_and_no_known_rule_explains_it():
    report = caught(functools.partial(official_ms, sign=-1.0), profile="official")
    assert not report.agree and report.best is None
    assert "no known profile, rule, default or reduction makes the candidate agree" in str(report)
    # the sign error is in the negative term: the pair with the largest difference of dL/dS is a negative
    assert report.worst_anchor is not None and report.worst_pair is not None
    assert report.worst_pair.relation == "negative"
    assert "inferred from the candidate's embedding gradients" in report.worst_pair.candidate_source


def test_a_mean_over_the_surviving_anchors_is_named_with_the_skipped_anchors():
    skipped_seen = []

    def candidate(X, y):
        return official_ms(X, y, divide_by_batch=False)

    report = caught(candidate, profile="official")
    assert report.best is not None and report.best.changes["reduction"] in ("nonzero_anchors", "active_anchors")
    # independent count of the anchors the official rules skip on the failing batch (a plain loop)
    X, y = report.batch.embeddings, report.batch.labels
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = U @ U.T
    for i in range(len(y)):
        pos = [S[i, j] for j in range(len(y)) if y[j] == y[i] and S[i, j] < 1 - 1e-5]
        neg = [S[i, j] for j in range(len(y)) if y[j] != y[i]]
        kept_neg = [s for s in neg if s + 0.1 > min(pos)]
        kept_pos = [s for s in pos if s - 0.1 < max(neg)]
        if not kept_neg or not kept_pos:
            skipped_seen.append(i)
    assert skipped_seen, "a surviving-anchor mean differs only when some anchor is skipped"
    assert any(f"anchors without one: {skipped_seen}" in note for note in report.notes)
    m, k = len(y), len(y) - len(skipped_seen)
    anchor = report.worst_anchor
    assert anchor.candidate == pytest.approx(anchor.reference * m / k, rel=1e-9)
    assert "reduction: mean over the anchors" in str(report)


def test_a_missing_value_self_rule_names_the_duplicated_pair():
    report = caught(functools.partial(official_ms, self_by_value=False), profile="official", batches={"duplicates": True})
    assert report.best is not None and report.best.changes == {"self_rule": "index", "self_threshold": None}
    assert report.rule_names() == {"self_rule"}
    pair = report.worst_pair
    assert pair.relation.startswith("self pair by value")
    X = report.batch.embeddings
    cosine = X[pair.anchor] @ X[pair.item] / np.linalg.norm(X[pair.anchor]) / np.linalg.norm(X[pair.item])
    assert report.batch.labels[pair.anchor] == report.batch.labels[pair.item] and cosine >= 1 - 1e-5
    assert any("self_rule='index'" in rule for rule in pair.rules)


def test_beta_50_under_official_suggests_the_other_default():
    report = caught(functools.partial(official_ms, beta=50.0), profile="official")
    assert report.best is not None and report.best.changes == {"beta": 50.0}
    assert "as under 'paper', 'pml'" in report.best.label
    assert report.worst_anchor is not None and report.worst_anchor.candidate_source.startswith("modelled by beta=50.0")


# ---- pair weights inferred from embedding gradients ----------------------------------------------


def test_inferred_pair_weights_are_exact_on_an_added_term():
    # The candidate is PML's MS plus 0.05 * S_01. No catalog rule explains that, so the report infers
    # the candidate's dL/dS from its embedding gradients on the lifted batch: G + G^T must differ
    # from the reference by exactly 0.05 at (0, 1) and (1, 0), and by 0 elsewhere.
    def candidate(X, y):
        U = torch.nn.functional.normalize(X, dim=1)
        return pml_ms(X, y) + 0.05 * (U[0] @ U[1])

    batch = Batch(DUPLICATE_X[[0, 2, 3, 4, 5]] + 0.1 * np.arange(20).reshape(5, 4) / 20, np.array([0, 0, 1, 1, 1]))
    report = explain_mismatch(candidate, "multi_similarity", batch, profile="pml")
    pair = report.worst_pair
    assert {pair.anchor, pair.item} == {0, 1}
    assert pair.observable == "G_ij + G_ji"
    assert pair.candidate - pair.reference == pytest.approx(0.05, abs=1e-8)


def test_inferred_pair_weights_with_a_reference_set():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    def candidate(X, y, ref, ref_labels):
        loss = MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(X, y, ref_emb=ref, ref_labels=ref_labels)
        U = torch.nn.functional.normalize(X, dim=1)
        V = torch.nn.functional.normalize(ref, dim=1)
        return loss + 0.05 * (U[1] @ V[2])

    rng = np.random.default_rng(3)
    batch = Batch(rng.normal(size=(4, 5)), np.array([0, 0, 1, 1]), ref=rng.normal(size=(5, 5)), ref_labels=np.array([0, 1, 1, 0, 2]))
    report = explain_mismatch(candidate, "multi_similarity", batch, profile="pml", check=("value", "grad_emb", "grad_ref"))
    pair = report.worst_pair
    assert (pair.anchor, pair.item) == (1, 2) and pair.observable == "G_ij"
    assert pair.candidate - pair.reference == pytest.approx(0.05, abs=1e-8)


# ---- agreeing candidates, and the other ways of calling ------------------------------------------


def test_an_agreeing_candidate_gives_an_agreeing_report():
    report = explain_mismatch(official_ms, "multi_similarity", Batch(DUPLICATE_X, DUPLICATE_Y), profile="official")
    assert report.agree and report.alternatives == () and "agrees with" in str(report)


def test_a_reference_set_with_its_gradient():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    def candidate(X, y, ref, ref_labels):
        return MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(X, y, ref_emb=ref, ref_labels=ref_labels)

    summary = assert_loss_matches(candidate, "multi_similarity", profile="pml", check=("value", "grad_emb", "grad_ref"),
                                  batches={"with_ref": True, "ref_includes_batch": False}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def official_terms(X, y):
    """Each anchor's term under the official rules divided by the batch size (0 when skipped)."""
    U = torch.nn.functional.normalize(X, dim=1)
    sim = U @ U.T
    out = []
    for i in range(len(y)):
        pos = sim[i][(y == y[i]) & (sim[i] < 1 - 1e-5)]
        neg = sim[i][y != y[i]]
        neg_kept, pos_kept = neg[neg + 0.1 > pos.min()], pos[pos - 0.1 < neg.max()]
        if len(neg_kept) == 0 or len(pos_kept) == 0:
            out.append(torch.zeros((), dtype=X.dtype))
            continue
        out.append(torch.log(1 + torch.exp(-2 * (pos_kept - 0.5)).sum()) / 2 + torch.log(1 + torch.exp(40 * (neg_kept - 0.5)).sum()) / 40)
    return torch.stack(out).detach() / len(y)


def test_per_anchor_values_of_the_candidate_are_checked_and_used():
    batch = Batch(DUPLICATE_X, DUPLICATE_Y)
    summary = assert_loss_matches(official_ms, "multi_similarity", profile="official", check=("value", "grad_emb", "per_anchor"),
                                  candidate_per_anchor=official_terms, batches=[batch])
    assert summary.compared == 1
    with pytest.raises(LossMismatch):  # per-anchor values that do not add up to the reference's are caught
        assert_loss_matches(official_ms, "multi_similarity", profile="official", check=("per_anchor",),
                            candidate_per_anchor=lambda X, y: official_terms(X, y).flip(0), batches=[batch])
    report = explain_mismatch(functools.partial(official_ms, beta=50.0), "multi_similarity", batch, profile="official",
                              candidate_per_anchor=lambda X, y: official_terms(X, y) * 0 + 1.0)
    assert report.worst_anchor.candidate_source == "candidate_per_anchor" and report.worst_anchor.candidate == 1.0


def numpy_ms(X, y, beta=50.0):
    """MS without mining (pml semantics) in NumPy, from the formula: sum over anchors / m."""
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = U @ U.T
    total = 0.0
    for i in range(len(y)):
        pos = [S[i, j] for j in range(len(y)) if y[j] == y[i] and j != i]
        neg = [S[i, j] for j in range(len(y)) if y[j] != y[i]]
        total += np.log1p(sum(np.exp(-2.0 * (s - 0.5)) for s in pos)) / 2.0
        total += np.log1p(sum(np.exp(beta * (s - 0.5)) for s in neg)) / beta
    return total / len(y)


def torch_gradient_of(fn):
    """A 'second callable' for the gradient, as jax.grad(fn) would be for a JAX candidate."""
    def grad(X, y):
        Xt = torch.tensor(X, requires_grad=True)
        U = torch.nn.functional.normalize(Xt, dim=1)
        S = U @ U.T
        same = torch.as_tensor(y)[:, None] == torch.as_tensor(y)[None, :]
        pos = same & ~torch.eye(len(y), dtype=torch.bool)
        neg = ~same
        ninf = torch.tensor(-float("inf"), dtype=S.dtype)
        zero = torch.zeros(len(y), 1, dtype=S.dtype)
        pos_lse = torch.logsumexp(torch.cat([torch.where(pos, -2.0 * (S - 0.5), ninf), zero], 1), 1) / 2.0
        neg_lse = torch.logsumexp(torch.cat([torch.where(neg, 50.0 * (S - 0.5), ninf), zero], 1), 1) / 50.0
        ((pos_lse + neg_lse).sum() / len(y)).backward()
        return Xt.grad.numpy()

    return grad


NUMPY_BATCHES = {"m": (3, 6), "d": (2, 3), "singletons": False, "one_class": False, "ties": False, "duplicates": False}


def test_a_numpy_candidate_with_a_gradient_callable():
    summary = assert_loss_matches(numpy_ms, "multi_similarity", profile="pml", candidate_grad=torch_gradient_of(numpy_ms),
                                  batches=NUMPY_BATCHES, examples=10)
    assert summary.framework == "numpy" and summary.compared == 10


def test_a_numpy_candidate_by_finite_differences():
    summary = assert_loss_matches(numpy_ms, "multi_similarity", profile="pml", batches=NUMPY_BATCHES, examples=6)
    assert summary.framework == "numpy" and summary.tolerance.grad_rtol > 1e-9  # the finite-difference allowance
    # a wrong beta changes the gradient: caught by the finite differences alone
    report = caught(functools.partial(numpy_ms, beta=40.0), profile="pml", check=("grad_emb",), batches=NUMPY_BATCHES)
    assert report.grad_source == "finite differences"
    assert report.best is not None and report.best.changes == {"beta": 40.0}


def test_a_jax_candidate_with_jax_grad():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")

    def jax_ms(X, y):  # JAX's default float32: the oracle must judge it as float32
        U = X / jnp.linalg.norm(X, axis=1, keepdims=True)
        S = U @ U.T
        same = y[:, None] == y[None, :]
        pos, neg = same & ~jnp.eye(len(y), dtype=bool), ~same
        pos_term = jnp.log1p(jnp.sum(jnp.where(pos, jnp.exp(-2.0 * (S - 0.5)), 0.0), axis=1)) / 2.0
        neg_term = jnp.log1p(jnp.sum(jnp.where(neg, jnp.exp(50.0 * (S - 0.5)), 0.0), axis=1)) / 50.0
        return jnp.mean(pos_term + neg_term)

    summary = assert_loss_matches(jax_ms, "multi_similarity", profile="pml", candidate_grad=jax.grad(jax_ms),
                                  batches=NUMPY_BATCHES, examples=6)
    assert summary.framework == "jax" and summary.dtype == "float32" and summary.compared == 6


def test_a_constant_offset_is_reported_as_such():
    report = explain_mismatch(lambda X, y: pml_ms(X, y) + 0.25, "multi_similarity", Batch(DUPLICATE_X, DUPLICATE_Y), profile="pml")
    assert not report.agree
    assert any("gradients agree but the values differ by 0.25" in note for note in report.notes)


def test_a_candidate_that_computes_in_float32_is_judged_as_float32():
    def candidate(X, y):
        return pml_ms(X.float(), y)  # float64 in, float32 arithmetic

    summary = assert_loss_matches(candidate, "multi_similarity", profile="pml", examples=EXAMPLES)
    assert summary.compared == EXAMPLES and summary.dtype == "float32"
    # the float32 tolerance is what lets it pass: at float64's it fails
    report = caught(candidate, profile="pml", rtol=1e-9, atol=1e-12)
    assert report.dtype == "float32"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_low_precision_inputs(dtype):
    summary = assert_loss_matches(pml_ms, "multi_similarity", profile="pml", dtype=dtype, examples=EXAMPLES)
    assert summary.dtype == dtype and summary.compared == EXAMPLES


def test_the_seeded_generator_when_hypothesis_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # "import hypothesis" now raises ImportError
    summary = assert_loss_matches(pml_ms, "multi_similarity", profile="pml", examples=10)
    assert summary.source == "seeded generator" and summary.compared == 10
    with pytest.raises(LossMismatch):
        assert_loss_matches(functools.partial(official_ms, beta=50.0), "multi_similarity", profile="official", examples=EXAMPLES)


@given(batch=batches(m=(2, 8), d=(2, 4), with_ref=False))
@settings(max_examples=5)
def test_inside_a_hypothesis_test(batch):
    summary = assert_loss_matches(pml_ms, "multi_similarity", profile="pml", batches=batch)
    assert summary.source == "given batches"
    nested = assert_loss_matches(pml_ms, "multi_similarity", profile="pml", examples=3)
    assert nested.source == "seeded generator"  # hypothesis cannot nest: the seeded generator instead


def test_the_same_seed_gives_the_same_report():
    wrong = functools.partial(official_ms, beta=50.0)
    first = caught(wrong, profile="official", seed=3)
    second = caught(wrong, profile="official", seed=3)
    assert str(first) == str(second)


# ---- refusals, failures and bad arguments -----------------------------------------------------------


def test_no_comparable_batch_is_an_error_not_a_pass():
    with pytest.raises(AssertionError, match="no batch could be compared"):
        assert_loss_matches(official_ms, "multi_similarity", profile="official", batches={"one_class": True}, examples=5)


def test_a_candidate_that_raises_where_the_reference_computes():
    report = caught(official_ms, profile="paper", hyper={"beta": 40.0}, batches={"singletons": True})
    assert "ValueError" in report.candidate_error
    assert report.best is not None and report.best.changes == {"profile": "official"}


def test_a_candidate_that_returns_where_the_profile_raises():
    report = caught(pml_ms, profile="official", hyper={"beta": 50.0, "eps": 0.1}, batches={"singletons": True})
    assert report.reference_error is not None and "every anchor needs a positive" in report.reference_error
    assert any("degenerate='raise'" in note for note in report.notes)


@pytest.mark.parametrize("kwargs,argument", [
    ({"check": ("value", "hessian")}, "check"),
    ({"check": ("per_anchor",)}, "check"),
    ({"hyper": {"gamma": 1.0}}, "gamma"),
    ({"hyper": {"beta": -1.0}}, "beta"),
    ({"profile": "rdml"}, "profile"),
    ({"examples": 0}, "examples"),
    ({"batches": {"bogus": True}}, "batches"),
    ({"batches": {"ties": "yes"}}, "ties"),
    ({"batches": "all"}, "batches"),
    ({"batches": []}, "batches"),
    ({"rtol": -1.0}, "rtol"),
    ({"normalize": "yes"}, "normalize"),
    ({"dtype": "int8"}, "dtype"),
    ({"framework": "tensorflow"}, "framework"),
    ({"framework": "numpy", "dtype": "bfloat16"}, "dtype"),
])
def test_bad_arguments_name_themselves(kwargs, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        assert_loss_matches(pml_ms, "multi_similarity", **{"profile": "pml", **kwargs})
    assert info.value.argument == argument


def test_bad_candidates():
    with pytest.raises(gpwref.GpwrefError, match="candidate"):
        assert_loss_matches("not callable", "multi_similarity")
    with pytest.raises(gpwref.GpwrefError, match="could not be called"):
        assert_loss_matches(lambda X, y: 1 / 0, "multi_similarity")
    with pytest.raises(gpwref.GpwrefError, match="one number"):
        assert_loss_matches(lambda X, y: torch.stack([X.sum(), X.sum()]), "multi_similarity", examples=2)


def test_unknown_loss():
    with pytest.raises(gpwref.GpwrefError) as info:
        assert_loss_matches(pml_ms, "no_such_loss")
    assert info.value.argument == "loss"


def test_make_batch_records_are_accepted_as_a_list():
    drawn = [make_batch(np.random.default_rng(k), m=(3, 8), singletons=False, one_class=False, with_ref=False) for k in range(4)]
    summary = assert_loss_matches(pml_ms, "multi_similarity", profile="pml", batches=drawn)
    assert summary.compared == 4 and summary.source == "given batches"
