"""gpwref.testing.strategies: every edge case a named knob, validated eagerly, honoured when drawn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import gpwref
from gpwref.testing import Batch, batches, make_batch

SEEDS = range(60)


def draw(seed, **knobs) -> Batch:
    return make_batch(np.random.default_rng(seed), **knobs)


@pytest.mark.parametrize("knobs,argument", [
    ({"singletons": "yes"}, "singletons"),
    ({"ties": 1}, "ties"),
    ({"m": 0}, "m"),
    ({"m": (5, 3)}, "m"),
    ({"m": 2.5}, "m"),
    ({"d": (0, 3)}, "d"),
    ({"classes": 0}, "classes"),
    ({"dtype": np.int32}, "dtype"),
    ({"dtype": "complex128"}, "dtype"),
    ({"normalize": "yes"}, "normalize"),
    ({"one_class": True, "singletons": True}, "one_class"),
    ({"one_class": True, "classes": (2, 3)}, "one_class"),
    ({"ref_includes_batch": True, "with_ref": False}, "ref_includes_batch"),
    ({"on_boundary": True, "duplicates": False, "normalize": True, "d": (2, 6)}, "d"),
    ({"boundary_eps": 0.0}, "boundary_eps"),
    ({"boundary_eps": 1.5}, "boundary_eps"),
    ({"boundary_eps": 0.1, "normalize": True, "d": (5, 6)}, "boundary_eps"),  # not on the 1/4 grid
    ({"boundary_eps": 0.1}, "boundary_eps"),  # not on the 1/16 grid of raw dyadic rows
    ({"boundary_eps": 0.25, "normalize": True, "d": (4, 6)}, "d"),
    ({"boundary_eps": 0.25, "m": 2}, "m"),
    ({"boundary_eps": 0.25, "ties": True}, "ties"),
    ({"boundary_eps": 0.25, "on_boundary": False}, "on_boundary"),
    ({"boundary_eps": 0.25, "classes": 1}, "classes"),
])
def test_knobs_are_validated_when_the_strategy_is_built(knobs, argument):
    # the strategy is never drawn from: the error comes from building it
    with pytest.raises(gpwref.GpwrefError) as info:
        batches(**knobs)
    assert info.value.argument == argument
    with pytest.raises(gpwref.GpwrefError):
        make_batch(np.random.default_rng(0), **knobs)


@pytest.mark.parametrize("knob", ["singletons", "one_class", "ties", "duplicates", "with_ref"])
def test_a_forced_edge_case_is_present(knob):
    for seed in SEEDS:
        batch = draw(seed, m=(2, 9), **{knob: True})
        assert knob in batch.cases
        y = batch.labels
        if knob == "singletons":
            values, counts = np.unique(y, return_counts=True)
            assert (counts == 1).any()
        elif knob == "one_class":
            assert len(np.unique(y)) == 1
        elif knob == "ties":
            assert (batch.embeddings == batch.embeddings[0]).all()
        elif knob == "duplicates":
            assert len(np.unique(batch.embeddings, axis=0)) < batch.m
        else:
            assert batch.ref is not None and batch.ref_labels.shape == (batch.ref.shape[0],)


def test_a_reference_set_that_includes_the_batch():
    for seed in SEEDS:
        batch = draw(seed, with_ref=True, ref_includes_batch=True)
        assert np.array_equal(batch.ref[batch.ref_self], batch.embeddings)
        assert np.array_equal(batch.ref_labels[batch.ref_self], batch.labels)


def test_avoided_edge_cases_are_absent():
    for seed in range(300):
        batch = draw(seed, m=(4, 12), singletons=False, one_class=False, ties=False, duplicates=False)
        values, counts = np.unique(batch.labels, return_counts=True)
        assert (counts >= 2).all() and len(values) >= 2
        assert len(np.unique(batch.embeddings, axis=0)) == batch.m
        assert not {"singletons", "one_class", "ties", "duplicates"} & set(batch.cases)
    for seed in range(100):  # dyadic boundary rows too: redrawn until distinct
        batch = draw(seed, m=(4, 12), d=(4, 6), on_boundary=True, duplicates=False, ties=False, normalize=True)
        assert len(np.unique(batch.embeddings, axis=0)) == batch.m


def test_normalize_knob():
    for seed in SEEDS:
        assert draw(seed, normalize=True).normalize is True
        assert draw(seed, normalize=False).normalize is False
        boundary = draw(seed, normalize=True, on_boundary=True)
        # unit dyadic rows: the norm is exactly 1, so L2-normalising them changes nothing
        assert (np.sqrt((boundary.embeddings ** 2).sum(axis=1)) == 1.0).all()
        legacy = draw(seed, on_boundary=True)
        assert legacy.normalize is False  # as before: raw dyadic rows used as given


@pytest.mark.parametrize("eps,normalize,d", [(0.25, True, (5, 8)), (0.5, True, (5, 6)), (1.0, True, 5), (0.0625, None, (2, 4)), (0.75, False, 3)])
def test_boundary_eps_puts_a_pair_exactly_on_the_boundary(eps, normalize, d):
    torch = pytest.importorskip("torch")
    for seed in range(30):
        batch = draw(seed, m=(3, 10), d=d, boundary_eps=eps, normalize=normalize)
        assert batch.boundary_eps == eps and "on_boundary" in batch.cases
        # recompute S the way a torch candidate would, independently of the generator's own check
        X = torch.tensor(batch.embeddings)
        R = X if batch.ref is None else torch.tensor(batch.ref)
        if batch.normalize:
            X, R = torch.nn.functional.normalize(X, dim=1), torch.nn.functional.normalize(R, dim=1)
        S = (X @ R.T).numpy()
        y, yr = batch.labels, (batch.labels if batch.ref is None else batch.ref_labels)
        hit = False
        for i in range(batch.m):
            own = i if batch.ref is None else (-1 if batch.ref_self is None else batch.ref_self[i])
            pos = (yr == y[i]) & (np.arange(len(yr)) != own)
            neg = yr != y[i]
            if pos.any() and neg.any():
                min_pos, max_neg = S[i, pos].min(), S[i, neg].max()
                hit |= bool(np.any(S[i, neg] + eps == min_pos) or np.any(S[i, pos] - eps == max_neg))
        assert hit


@given(batch=batches(m=(2, 7), d=3, dtype=np.float32, with_ref=False, duplicates=True))
@settings(max_examples=10)
def test_drawn_batches_respect_sizes_dtype_and_knobs(batch):
    assert "duplicates" in batch.cases and len(np.unique(batch.embeddings, axis=0)) < batch.m
    assert 2 <= batch.m <= 7 and batch.embeddings.shape[1] == 3
    assert batch.embeddings.dtype == np.float32 and batch.ref is None
    assert batch.labels.dtype == np.int64 and batch.labels.shape == (batch.m,)
    assert batch.compute_kwargs() == {"normalize": batch.normalize}


def test_compute_kwargs_of_a_batch_with_a_reference_set():
    batch = draw(1, with_ref=True, ref_includes_batch=True)
    kwargs = batch.compute_kwargs()
    assert kwargs["ref"] is batch.ref and kwargs["ref_self"] is batch.ref_self
    result = gpwref.compute("multi_similarity", batch.embeddings, batch.labels, **kwargs)
    assert np.isfinite(result.loss)
