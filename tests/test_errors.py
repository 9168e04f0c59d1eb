"""Bad input (docs/oracle-contract.md#bad-input): each case raises GpwrefError naming the argument and the rule, never a NaN."""

from __future__ import annotations

import numpy as np
import pytest

import gpwref
from gpwref import errors

X = np.random.default_rng(0).normal(size=(6, 3))
Y = np.array([0, 0, 1, 1, 2, 2])


def raises(argument: str, pattern: str):
    return pytest.raises(gpwref.GpwrefError, match=rf"^{argument}: .*{pattern}")


@pytest.mark.parametrize(
    "embeddings,argument,pattern",
    [
        (np.ones(6), "embeddings", "2-D"),
        (np.ones((6, 3, 1)), "embeddings", "2-D"),
        (np.zeros((0, 3)), "embeddings", "at least one row"),
        (np.zeros((6, 0)), "embeddings", "at least one column"),
        (np.where(np.eye(6, 3) > 0, np.nan, 1.0), "embeddings", "finite"),
        (np.where(np.eye(6, 3) > 0, np.inf, 1.0), "embeddings", "finite"),
        (np.array([["a"] * 3] * 6), "embeddings", "real numbers"),
        (np.ones((6, 3), dtype=bool), "embeddings", "real numbers"),
    ],
)
def test_bad_embeddings(embeddings, argument, pattern):
    with raises(argument, pattern):
        gpwref.compute("multi_similarity", embeddings, Y[: len(embeddings)] if np.ndim(embeddings) == 2 else Y)


def test_zero_norm_row_cannot_be_normalised():
    Z = X.copy()
    Z[2] = 0.0
    with raises("embeddings", "non-zero norm.*normalize=False"):
        gpwref.compute("multi_similarity", Z, Y)
    assert np.isfinite(gpwref.compute("multi_similarity", Z, Y, normalize=False).loss)


@pytest.mark.parametrize(
    "labels,pattern",
    [
        (Y.astype(float), "integer dtype"),
        (Y.astype(bool), "integer dtype"),
        (Y[:5], "one label per row"),
        (Y[:, None], "1-D"),
        (np.array(["a"] * 6), "integer dtype"),
    ],
)
def test_bad_labels(labels, pattern):
    with raises("labels", pattern):
        gpwref.compute("multi_similarity", X, labels)


@pytest.mark.parametrize(
    "hyper,argument,pattern",
    [
        ({"alpha": 0.0}, "alpha", "> 0"),
        ({"alpha": -1.0}, "alpha", "> 0"),
        ({"beta": float("inf")}, "beta", "finite"),
        ({"lam": float("nan")}, "lam", "finite"),
        ({"eps": -0.1}, "eps", ">= 0"),
        ({"eps": "0.1"}, "eps", ">= 0"),
        ({"gamma": 1.0}, "gamma", "not a hyper-parameter"),
    ],
)
def test_bad_hyper_parameters(hyper, argument, pattern):
    with raises(argument, pattern):
        gpwref.compute("multi_similarity", X, Y, **hyper)


def test_unknown_names():
    with raises("loss", "must be one of"):
        gpwref.compute("multisimilarity", X, Y)
    with raises("profile", "must be one of"):
        gpwref.compute("multi_similarity", X, Y, profile="papers")
    with raises("normalize", "True or False"):
        gpwref.compute("multi_similarity", X, Y, normalize="yes")


def test_loss_not_defined_under_a_profile():
    missing = [(e.name, p) for e in gpwref.CATALOG for p in gpwref.PROFILES if p not in e.defaults]
    if not missing:
        pytest.skip("every loss is defined under every profile")
    loss, profile = missing[0]
    with raises("profile", f"'{loss}' has no '{profile}' convention"):
        gpwref.get_entry(loss) and gpwref.catalog.resolve_hyper(gpwref.get_entry(loss), profile, {})


def test_bad_reference_sets():
    R = np.random.default_rng(1).normal(size=(4, 3))
    yr = np.array([0, 1, 2, 3])
    with raises("ref_labels", "together"):
        gpwref.compute("multi_similarity", X, Y, ref=R)
    with raises("ref_labels", "together"):
        gpwref.compute("multi_similarity", X, Y, ref_labels=yr)
    with raises("ref", "dimension 3"):
        gpwref.compute("multi_similarity", X, Y, ref=R[:, :2], ref_labels=yr)
    with raises("ref_labels", "one label per row of ref"):
        gpwref.compute("multi_similarity", X, Y, ref=R, ref_labels=yr[:3])
    with raises("ref_self", "length 6"):
        gpwref.compute("multi_similarity", X, Y, ref=R, ref_labels=yr, ref_self=np.zeros(5, dtype=int))
    with raises("ref_self", r"\[-1, 3\]"):
        gpwref.compute("multi_similarity", X, Y, ref=R, ref_labels=yr, ref_self=np.full(6, 4))
    with raises("ref_self", "only applies with a reference set"):
        gpwref.compute("multi_similarity", X, Y, ref_self=np.arange(6))


def test_bad_similarity_matrices():
    with raises("S", "square"):
        gpwref.multi_similarity(np.zeros((3, 4)), np.array([0, 0, 1]))
    with raises("S", "finite"):
        gpwref.multi_similarity(np.full((2, 2), np.nan), np.array([0, 1]))
    with raises("labels", "one label per row of S"):
        gpwref.multi_similarity(np.eye(3), np.array([0, 1]))


def test_memory_is_refused_up_front_with_the_figure(monkeypatch):
    monkeypatch.setattr(errors, "_available_bytes", lambda: 1000)
    with raises("embeddings", r"6 x 6 pair matrices need about .* GiB"):
        gpwref.compute("multi_similarity", X, Y)


def test_overflowing_similarities_without_normalisation_are_refused():
    with raises("embeddings", "overflow"):
        gpwref.compute("multi_similarity", np.full((3, 2), 1e200), np.array([0, 0, 1]), normalize=False)


def test_no_nan_for_any_finite_input():
    # Huge and tiny magnitudes, duplicated rows, a singleton and one class only: finite everywhere.
    rows = np.array([[1e300, 1.0], [1e300, 1.0], [-1e-300, 1e-300], [3.0, -4.0]])
    for labels in (np.array([0, 0, 1, 2]), np.zeros(4, dtype=int)):
        for profile in ("paper", "pml"):
            r = gpwref.compute("multi_similarity", rows, labels, profile=profile, alpha=200.0, beta=200.0)
            assert np.isfinite(r.loss)
            assert np.all(np.isfinite(r.grad_sim)) and np.all(np.isfinite(r.grad_emb))
