"""The official class-balanced batch sampler (``RandomIdentitySampler`` of research-ms-loss), reproduced.

A batch is ``classes_per_batch`` classes x ``instances`` images (16 x 5 = 80 in the MS protocol):

1. A *pass* starts by preparing, for every class, its image indices shuffled and cut into chunks of
   ``instances`` (a class with fewer images is first padded by drawing from its own images with
   replacement; a remainder shorter than a chunk is dropped for this pass). Every class is
   available.
2. Each batch draws ``classes_per_batch`` distinct available classes uniformly and takes the next
   chunk of each; a class whose chunks are used up stops being available.
3. When fewer than ``classes_per_batch`` classes are available, a new pass starts (step 1; chunks
   left over from the old pass are discarded).

The only change from the official code is where the randomness comes from: a ``random.Random`` and
a ``numpy.random.Generator`` seeded by ``seed`` instead of the global generators (the official
``RNG_SEED`` is never used), so a run can be resumed at any iteration by replaying the draws.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np

from gpwref import GpwrefError


class ClassBalancedSampler:
    def __init__(self, labels, classes_per_batch: int = 16, instances: int = 5, seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise GpwrefError("labels", "must be a non-empty 1-D array", f"shape {labels.shape}")
        for name, value in (("classes_per_batch", classes_per_batch), ("instances", instances)):
            if not (isinstance(value, int) and value >= 1):
                raise GpwrefError(name, "must be an integer >= 1", repr(value))
        self.index_of_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels.tolist()):  # classes in order of first appearance
            self.index_of_class.setdefault(label, []).append(index)
        if len(self.index_of_class) < classes_per_batch:
            raise GpwrefError("classes_per_batch", f"needs at least that many classes in the training set ({len(self.index_of_class)} there)", classes_per_batch)
        self.classes = list(self.index_of_class)
        self.classes_per_batch = classes_per_batch
        self.instances = instances
        self.seed = seed
        self.passes = 0

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.instances

    def _prepare_pass(self, py_rng: random.Random, np_rng: np.random.Generator):
        self.passes += 1
        chunks: dict[int, list[list[int]]] = {}
        for label in self.classes:
            indices = list(self.index_of_class[label])
            if len(indices) < self.instances:
                indices.extend(int(i) for i in np_rng.choice(indices, size=self.instances - len(indices), replace=True))
            py_rng.shuffle(indices)
            k = self.instances
            chunks[label] = [indices[i * k:(i + 1) * k] for i in range(len(indices) // k)]
        return chunks, list(self.classes)

    def __iter__(self) -> Iterator[list[int]]:
        """An endless stream of batches; the same seed gives the same stream."""
        py_rng = random.Random(self.seed)
        np_rng = np.random.default_rng(self.seed)
        self.passes = 0
        chunks, available = self._prepare_pass(py_rng, np_rng)
        while True:
            if len(available) < self.classes_per_batch:
                chunks, available = self._prepare_pass(py_rng, np_rng)
            batch: list[int] = []
            for label in py_rng.sample(available, self.classes_per_batch):
                batch.extend(chunks[label].pop(0))
                if not chunks[label]:
                    available.remove(label)
            yield batch
