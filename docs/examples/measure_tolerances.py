"""Measure how far a correct low-precision candidate lands from gpwref's float64 reference.

    python docs/examples/measure_tolerances.py [--batches 150]

The candidate is pytorch-metric-learning's MultiSimilarityLoss (alone, and with
MultiSimilarityMiner(epsilon=0.1)), fed embeddings in each dtype; the reference runs in float64 on
the same rounded numbers, so only the candidate's own arithmetic is measured. Printed: the worst
relative value error (over batches whose loss is at least 1e-6), the worst absolute value error,
the worst normwise gradient error (over batches whose largest gradient entry is at least 1e-6), and
the worst ratio of error to the oracle's default allowance (<= 1 passes). These are the numbers
behind ``gpwref.testing.tolerances.TOLERANCES``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from pytorch_metric_learning.losses import MultiSimilarityLoss
from pytorch_metric_learning.miners import MultiSimilarityMiner

import gpwref
from gpwref.testing import make_batch
from gpwref.testing.candidates import Candidate, round_to
from gpwref.testing.tolerances import tolerance_for


def candidate(eps, beta):
    def loss(X, y):
        ms = MultiSimilarityLoss(alpha=2.0, beta=beta, base=0.5)
        return ms(X, y) if eps is None else ms(X, y, MultiSimilarityMiner(epsilon=eps)(X, y))

    return loss


def measure(dtype: str, eps, beta: float, count: int, large: bool) -> tuple[float, float, float, float]:
    run = Candidate(candidate(eps, beta), dtype=dtype)
    tol = tolerance_for(dtype, scale=beta)
    worst_rel = worst_abs = worst_grad = worst_ratio = 0.0
    for seed in range(count):
        rng = np.random.default_rng(seed)
        if large:
            batch = make_batch(rng, m=(16, 48), d=(64, 256), classes=(4, 8), singletons=False, one_class=False,
                               ties=False, duplicates=False, on_boundary=False, with_ref=False)
        else:
            batch = make_batch(rng, ties=False, duplicates=False, on_boundary=False, with_ref=False)
        X = round_to(batch.embeddings, dtype)
        want = gpwref.compute("multi_similarity", X, batch.labels, profile="pml", eps=eps, beta=beta)
        got = run.evaluate(X, batch.labels)
        error = abs(got.value - want.loss)
        worst_abs = max(worst_abs, error)
        if abs(want.loss) >= 1e-6:
            worst_rel = max(worst_rel, error / abs(want.loss))
        scale = np.abs(want.grad_emb).max()
        if scale >= 1e-6:
            worst_grad = max(worst_grad, float(np.abs(got.grad_emb - want.grad_emb).max() / scale))
        worst_ratio = max(worst_ratio, tol.value_ratio(got.value, want.loss), tol.grad_ratio(got.grad_emb, want.grad_emb))
    return worst_rel, worst_abs, worst_grad, worst_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("dtype     eps   beta  batches  value rel   value abs   gradient    ratio to default tolerance")
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        for eps, beta, large in ((None, 50.0, False), (0.1, 50.0, False), (0.1, 200.0, False), (0.1, 50.0, True)):
            if large and dtype in ("float16", "bfloat16"):
                continue
            rel, absolute, grad, ratio = measure(dtype, eps, beta, args.batches if not large else max(1, args.batches // 5), large)
            size = "large" if large else "small"
            print(f"{dtype:9s} {str(eps):5s} {beta:5.0f} {size:7s}  {rel:.2e}    {absolute:.2e}    {grad:.2e}    {ratio:.2f}")


if __name__ == "__main__":
    main()
