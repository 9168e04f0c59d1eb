"""Candidates that return the wrong kind of thing are usage errors (GpwrefError) that say what to
return, not a "mismatch" against the reference, a nan, or a slow finite-difference run."""

from __future__ import annotations

import time

import numpy as np
import pytest

import gpwref
from gpwref.testing import Batch, assert_loss_matches, explain_mismatch

X = np.random.default_rng(0).normal(size=(12, 6))
Y = np.arange(12) // 3
BATCH = Batch(X, Y)


def _usage_error(candidate, match, **kwargs):
    with pytest.raises(gpwref.GpwrefError, match=match) as caught:
        assert_loss_matches(candidate, "multi_similarity", batches=BATCH, **kwargs)
    assert caught.value.argument == "candidate"
    return caught.value


def test_candidate_returning_none_is_a_usage_error():
    _usage_error(lambda embeddings, labels: None, "candidate: returned None; it must return the loss as one real number")


def test_candidate_returning_text_is_a_usage_error():
    _usage_error(lambda embeddings, labels: "0.5", "must return the loss as one real number.*not text")
    _usage_error(lambda embeddings, labels: np.array("0.5"), "not text")


def test_numpy_candidate_returning_a_python_float_still_works():
    def candidate(embeddings, labels):
        if not isinstance(embeddings, np.ndarray):
            raise TypeError("NumPy arrays only")
        return float(gpwref.compute("multi_similarity", embeddings, labels).loss)

    summary = assert_loss_matches(candidate, "multi_similarity", batches=BATCH, check=("value",))
    assert summary.framework == "numpy"


def test_torch_candidate_cut_from_the_graph_is_a_usage_error():
    torch = pytest.importorskip("torch")

    def candidate(embeddings, labels):  # the right value, rebuilt as a new tensor: no path to embeddings
        value = gpwref.compute("multi_similarity", embeddings.detach().numpy(), labels.numpy()).loss
        return torch.tensor(value, dtype=embeddings.dtype)

    error = _usage_error(candidate, "no autograd path to the embeddings")
    assert ".detach()" in str(error)
    # the value alone agrees: only the gradient check needs the graph
    assert_loss_matches(candidate, "multi_similarity", batches=BATCH, check=("value",))


def test_torch_candidate_returning_a_python_float_is_a_usage_error_up_front():
    torch = pytest.importorskip("torch")

    def candidate(embeddings, labels):  # also runs on NumPy arrays, so it used to pass as a NumPy function
        return float(gpwref.compute("multi_similarity", torch.as_tensor(embeddings).detach().numpy(),
                                    np.asarray(labels)).loss)

    start = time.perf_counter()
    _usage_error(candidate, "returned a float when called with torch tensors.*framework='numpy'")
    assert time.perf_counter() - start < 2.0  # refused at detection, before any finite difference
    # as the message says: declared a NumPy function, it is one
    assert_loss_matches(candidate, "multi_similarity", batches=BATCH, check=("value",), framework="numpy")


def test_explain_mismatch_reports_the_same_usage_errors():
    with pytest.raises(gpwref.GpwrefError, match="returned None"):
        explain_mismatch(lambda embeddings, labels: None, "multi_similarity", BATCH)
