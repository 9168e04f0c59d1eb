"""The class-balanced sampler: 16 classes x 5 images per batch, passes, padding, determinism."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from gpwref import GpwrefError
from gpwref_verification.repro.sampler import ClassBalancedSampler


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_every_batch_is_16_classes_by_5_images():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), rng.integers(5, 30, size=40))  # uneven class sizes
    for batch in take(ClassBalancedSampler(labels, 16, 5, seed=1), 200):
        assert len(batch) == 80
        per_class = Counter(labels[batch].tolist())
        assert len(per_class) == 16 and set(per_class.values()) == {5}
        # the 5 images of a class in one batch are distinct (no padding needed here)
        for label in per_class:
            chunk = [i for i in batch if labels[i] == label]
            assert len(set(chunk)) == 5


def test_within_a_pass_no_image_repeats_and_leftovers_are_dropped():
    # 20 classes of 12 images: 2 chunks of 5 per class per pass (2 images per class left out)
    labels = np.repeat(np.arange(20), 12)
    sampler = ClassBalancedSampler(labels, 16, 5, seed=3)
    seen, previous_passes = set(), 0
    for batch in itertools.islice(iter(sampler), 100):
        if sampler.passes != previous_passes:  # a new pass started for this batch
            seen, previous_passes = set(), sampler.passes
        assert not seen & set(batch)
        seen |= set(batch)
        used = Counter(labels[list(seen)].tolist())
        assert max(used.values()) <= 10
    assert sampler.passes > 1


def test_a_pass_ends_when_fewer_than_16_classes_have_chunks():
    # 17 classes x 5 images: one chunk each. Batch 1 uses 16 classes, leaving 1 class available,
    # so every batch starts a new pass.
    labels = np.repeat(np.arange(17), 5)
    sampler = ClassBalancedSampler(labels, 16, 5, seed=0)
    stream = iter(sampler)
    for expected_pass in range(1, 6):
        next(stream)
        assert sampler.passes == expected_pass


def test_small_classes_are_padded_with_replacement_from_their_own_images():
    labels = np.concatenate([np.repeat(np.arange(16), 6), [16, 16, 17, 17, 17]])  # classes 16, 17 small
    small = {16: {96, 97}, 17: {98, 99, 100}}
    for batch in take(ClassBalancedSampler(labels, 16, 5, seed=2), 100):
        for label, members in small.items():
            chunk = [i for i in batch if labels[i] == label]
            if chunk:
                assert len(chunk) == 5 and set(chunk) <= members and set(chunk) == members


def test_same_seed_same_stream_other_seed_other_stream():
    labels = np.repeat(np.arange(30), 8)
    a = take(ClassBalancedSampler(labels, 16, 5, seed=7), 30)
    b = take(ClassBalancedSampler(labels, 16, 5, seed=7), 30)
    c = take(ClassBalancedSampler(labels, 16, 5, seed=8), 30)
    assert a == b and a != c


def test_refuses_too_few_classes():
    with pytest.raises(GpwrefError, match="classes_per_batch"):
        ClassBalancedSampler(np.repeat(np.arange(10), 5), 16, 5)
    with pytest.raises(GpwrefError, match="instances"):
        ClassBalancedSampler(np.repeat(np.arange(20), 5), 16, 0)
