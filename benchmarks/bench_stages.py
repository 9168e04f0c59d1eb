"""Each stage of the MS forward + backward alone, for the NumPy float32 reference path, the Numba
CPU kernels and (with a GPU) the Numba CUDA kernels, on the inputs of ``bench_ms.py``.

Stages: ``similarity`` (normalise rows + S = U U^T), ``mining+weighting`` (S -> G, masks, value;
for Numba also H = G + G^T, which its kernels form while weighting), ``embedding gradient``
(G -> dL/dX through the normalisation). For Numba the two GEMMs are also timed apart (``gemm S``,
``gemm grad``), which is what the goal "mining + weighting costs at most half the two GEMMs" is
read from, and the tiled transpose ``symmetrize`` the other kernel losses use.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpwref
from benchlib import HYPER, clustered, gpu_available, mined_fraction, rounds_for

PROFILE = gpwref.get_profile("pml")
ENTRY = gpwref.get_entry("multi_similarity")


def _numpy_stages(X, y):
    from gpwref.losses import multi_similarity
    from gpwref.pairs import build_pairs, grad_embeddings, unit_rows

    X = X.astype(np.float32)
    U, norms = unit_rows(X, "embeddings")
    S = U @ U.T
    pairs = build_pairs(S, y, y, True, PROFILE)
    result = multi_similarity.value_and_grad(S, pairs, PROFILE, **HYPER)
    G = result.grad_sim

    def similarity():
        U_, _ = unit_rows(X, "embeddings")
        return U_ @ U_.T

    def mining_weighting():
        return multi_similarity.value_and_grad(S, build_pairs(S, y, y, True, PROFILE), PROFILE, **HYPER)

    def embedding_gradient():
        return grad_embeddings(G, U, norms, U, norms, True)

    return {"similarity": similarity, "mining+weighting": mining_weighting, "embedding gradient": embedding_gradient}


def _numba_stages(X, y):
    """The Numba pipeline's own stages on the batch: the row statistics and the symmetric weights
    pass (G, masks, value and H = G + G^T, here into one whole H) are "mining+weighting"; the
    backend interleaves the weights pass with the gradient GEMM in blocks of rows
    (``cpu.ms_symmetric_gradient``)."""
    from gpwref.kernels import backends, cpu

    dtype = np.dtype(np.float32)
    X = X.astype(np.float32)
    m = X.shape[0]
    U, norms = backends._unit_rows(cpu, X, "embeddings")
    S = cpu.gram(U)
    hp = backends.ms_scalars(HYPER, dtype)
    rules = backends.ms_rules(PROFILE, dtype)
    common = (rules["value_rule"], rules["self_threshold"], hp["mine"], hp["eps"], rules["compare"])
    columns = backends.same_label_columns(y, y)

    def mining_weighting():
        extremes, kept = np.empty((m, 2), dtype), np.empty((m, 2), np.bool_)
        sums, per_anchor, counts = np.empty((m, 5)), np.empty(m), np.empty((m, 4), np.int64)
        cpu.ms_row_stats(S, y, y, np.arange(m), *columns, *common, rules["skip_empty"], hp["alpha"], hp["beta"],
                         hp["lam"], dtype.type(np.inf), extremes, kept, sums, per_anchor, counts)
        G, H = np.zeros((m, m), dtype), np.zeros((m, m), dtype)
        pos_used, neg_used = np.zeros((m, m), bool), np.zeros((m, m), bool)
        cpu.ms_rows_symmetric(S, y, *common, hp["alpha"], hp["beta"], hp["lam"], extremes, kept, sums, 0,
                              G, H, pos_used, neg_used)
        return H

    H = mining_weighting()

    def similarity():
        U_, _ = backends._unit_rows(cpu, X, "embeddings")
        return cpu.gram(U_)

    def embedding_gradient():
        return backends._through(cpu, cpu.matmul_rows(H, U), U, norms)

    def gemm_s():  # the lower triangle in row blocks + the tiled mirror, as the pipeline forms S on the batch
        return cpu.gram(U)

    def gemm_grad():  # single-threaded BLAS on blocks of rows on the pool, as the pipeline runs it
        return cpu.matmul_rows(H, U)

    def symmetrize():  # the tiled G + G^T the other kernel losses use (not the MS path)
        H_ = np.empty_like(H)
        cpu.symmetrize(H, H_)
        return H_

    return {"similarity": similarity, "mining+weighting": mining_weighting, "embedding gradient": embedding_gradient,
            "gemm S": gemm_s, "gemm grad": gemm_grad, "symmetrize": symmetrize}


def _cuda_stages(X, y):
    """The three launches of the CUDA pipeline (``gpwref.kernels.cuda.CudaStages``) on the batch, one
    per stage: ``similarity`` (norms fused into S = U U^T), ``ms_rows``, ``embedding_grad`` (G + G^T,
    the GEMM and the normalisation's backward fused)."""
    from numba import cuda

    from gpwref.kernels import backends
    from gpwref.kernels import cuda as gcuda

    dtype = np.dtype(np.float32)
    k = gcuda.kernels("float32")
    m, d = X.shape
    d_X = cuda.to_device(X.astype(np.float32))
    d_norms = cuda.device_array(m, dtype=np.float64)
    d_flags = cuda.device_array(m, dtype=np.int64)
    d_S = cuda.device_array((m, m), dtype=dtype)
    d_G = cuda.device_array((m, m), dtype=dtype)
    d_pos = cuda.device_array((m, m), dtype=np.bool_)
    d_neg = cuda.device_array((m, m), dtype=np.bool_)
    d_per = cuda.device_array(m, dtype=np.float64)
    d_counts = cuda.device_array((m, 4), dtype=np.int64)
    d_y = cuda.to_device(np.asarray(y))
    d_self = cuda.to_device(np.arange(m, dtype=np.int64))
    d_gu = cuda.device_array((m, d), dtype=dtype)
    hp = backends.ms_scalars(HYPER, dtype)
    rules = backends.ms_rules(PROFILE, dtype)

    def similarity():
        grid, block = k.tiles(m, m)
        k.similarity[grid, block](d_X, d_X, d_S, d_norms, d_norms, d_flags, d_flags, True, True)
        cuda.synchronize()

    def mining_weighting():
        grid, block = k.rows(m)
        k.ms_rows[grid, block](d_S, d_y, d_y, d_self, rules["value_rule"], rules["self_threshold"], hp["mine"], hp["eps"],
                               rules["compare"], rules["skip_empty"], hp["alpha"], hp["beta"], hp["lam"],
                               dtype.type(np.inf), d_G, d_pos, d_neg, d_per, d_counts)
        cuda.synchronize()

    def embedding_gradient():
        jobs = -(-m // k.tile) * -(-d // k.tile)
        k.embedding_grad[min(jobs, k.max_blocks), (k.tile, k.tile)](d_G, d_S, d_X, d_norms, d_X, d_norms, d_gu, d_gu, True, True)
        cuda.synchronize()

    similarity()
    mining_weighting()
    return {"similarity": similarity, "mining+weighting": mining_weighting, "embedding gradient": embedding_gradient}


STAGE_IMPLS = {"numpy-f32": (_numpy_stages, "cpu"), "numba-f32": (_numba_stages, "cpu"), "numba-cuda-f32": (_cuda_stages, "cuda")}
STAGES = ("similarity", "mining+weighting", "embedding gradient", "gemm S", "gemm grad", "symmetrize")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("impl", list(STAGE_IMPLS))
def test_ms_stage(benchmark, impl, stage, m, d):
    build, device = STAGE_IMPLS[impl]
    if device == "cuda":
        ok, why = gpu_available()
        if not ok:
            pytest.skip(f"GPU benchmark, no GPU here: {why}; GPU figures are pending")
    elif m > 8192:
        pytest.skip("CPU sizes stop at m = 8192")
    X, y = clustered(m, d)
    stages = build(X, y)
    if stage not in stages:
        pytest.skip(f"{impl} has no separate '{stage}' stage")
    fn = stages[stage]
    import time

    fn()
    started = time.perf_counter()
    fn()
    warm = time.perf_counter() - started
    benchmark.group = f"ms stages m={m} d={d}"
    benchmark.extra_info.update({"impl": impl, "device": device, "precision": "float32", "profile": "pml",
                                 "stage": stage, "m": m, "d": d, **mined_fraction(m, d, "pml"),
                                 "load_average": __import__("os").getloadavg()[0]})
    benchmark.pedantic(fn, rounds=rounds_for(warm), iterations=1, warmup_rounds=1)
