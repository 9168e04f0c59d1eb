"""The pipeline's safety net (gpwref/pipeline.py ``check_finite_result``): a result whose loss,
per_anchor or gradients are not finite is never returned; the error names the first non-finite
quantity (with its index) and the input rule that would have kept it finite."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import gpwref
from gpwref import pipeline

X = np.random.default_rng(3).normal(size=(8, 4))
Y = np.arange(8) // 2


def _corrupt(monkeypatch, **changes):
    """Make the NumPy stages' pair result carry the given (non-finite) fields."""
    original = pipeline.NumpyStages.pair_weights

    def pair_weights(self, entry, profile, params, S):
        pair = original(self, entry, profile, params, S)
        fields = {}
        for name, (index, bad) in changes.items():
            value = np.array(getattr(pair, name), dtype=np.float64, copy=True) if name != "loss" else bad
            if name != "loss":
                value[index] = bad
            fields[name] = value
        return replace(pair, **fields)

    monkeypatch.setattr(pipeline.NumpyStages, "pair_weights", pair_weights)


def test_infinite_loss_is_refused(monkeypatch):
    _corrupt(monkeypatch, loss=(None, np.inf))
    with pytest.raises(gpwref.GpwrefError, match=r"non-finite loss .*\(got loss = inf\)") as info:
        gpwref.compute("multi_similarity", X, Y)
    assert info.value.argument == "hyper-parameters"


def test_nan_weight_is_named_with_its_pair(monkeypatch):
    """A NaN in G alone (finite loss) reaches dL/dX; the error names the pair of G it came from."""
    _corrupt(monkeypatch, grad_sim=((2, 5), np.nan))
    with pytest.raises(gpwref.GpwrefError, match=r"non-finite grad_sim .*grad_sim\[2, 5\] = nan"):
        gpwref.compute("contrastive", X, Y)


def test_per_anchor_checked_before_gradients(monkeypatch):
    _corrupt(monkeypatch, per_anchor=((3,), -np.inf), grad_sim=((0, 1), np.inf))
    with pytest.raises(gpwref.GpwrefError, match=r"per_anchor\[3\] = -inf"):
        gpwref.compute("binomial_deviance", X, Y)


@pytest.mark.parametrize("kwargs,argument,rule", [
    ({"normalize": False}, "embeddings", "normalize=True"),
    ({"dtype": "float32"}, "dtype", "dtype=None"),
])
def test_the_rule_named_fits_the_inputs(monkeypatch, kwargs, argument, rule):
    _corrupt(monkeypatch, loss=(None, np.nan))
    with pytest.raises(gpwref.GpwrefError, match=rule) as info:
        gpwref.compute("multi_similarity", X, Y, **kwargs)
    assert info.value.argument == argument


def test_loss_outside_the_pipeline_stages_is_checked_too(monkeypatch):
    """A loss with its own embeddings function (snr_contrastive) goes through the same net."""
    entry = gpwref.get_entry("snr_contrastive")
    original = entry.embeddings_function

    def broken(inputs, profile, params):
        result = original(inputs, profile, params)
        grad = np.array(result.grad_emb, copy=True)
        grad[1, 0] = np.inf
        return replace(result, grad_emb=grad)

    monkeypatch.setattr(pipeline, "_run", lambda e, p, h, i, b: broken(i, p, h) if e.name == "snr_contrastive" else None)
    with pytest.raises(gpwref.GpwrefError, match=r"non-finite grad_emb .*grad_emb\[1, 0\] = inf"):
        gpwref.compute("snr_contrastive", X, Y, profile="pml")


def test_finite_results_pass_unchanged():
    want = gpwref.compute("multi_similarity", X, Y)
    assert np.isfinite(want.loss) and np.all(np.isfinite(want.grad_emb))
