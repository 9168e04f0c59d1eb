"""Numba CUDA kernels (backend="cuda") against the float64 NumPy reference.

Without a GPU these tests run the very same kernels in Numba's CUDA simulator: the module turns
``NUMBA_ENABLE_CUDASIM`` on before ``numba.cuda`` is first imported (or run pytest with
``NUMBA_ENABLE_CUDASIM=1``). The simulator runs one Python thread per CUDA thread, so batches stay
tiny (m <= 8, d <= 5) and example counts small; ``kernels.cuda`` launches at most two blocks of
eight threads there, which exercises the grid-stride loops and the shared-memory tree reductions.
Tests marked ``gpu`` need a real GPU (larger sizes, torch CUDA tensors) and are skipped without one.
"""

from __future__ import annotations

import os
import sys

_GPU_DEVICE = os.path.exists("/dev/nvidiactl")
if not _GPU_DEVICE and "numba.cuda" not in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import numba

    numba.core.config.reload_config()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from numba import cuda  # noqa: E402

import gpwref  # noqa: E402
from gpwref.kernels.tolerance import agreement  # noqa: E402
from gpwref.testing import batches  # noqa: E402
from verification.common import rel_err  # noqa: E402

if not cuda.is_available():  # pragma: no cover - numba.cuda was imported (without the simulator) before us
    pytest.skip("no GPU, and numba.cuda was imported before the simulator could be enabled: "
                "run with NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from gpwref.kernels import cuda as gcuda  # noqa: E402

LOSS = "multi_similarity"
ON_GPU = not gcuda.SIMULATOR
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a real NVIDIA GPU (the simulator cannot time or run large sizes)")
TINY = dict(m=(1, 8), d=(2, 5))
SIM_SETTINGS = settings(max_examples=4 if gcuda.SIMULATOR else 50, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])
CASES = [(LOSS, "paper", {}), (LOSS, "paper", {"eps": None}), (LOSS, "official", {}), (LOSS, "pml", {"eps": 0.1}),
         ("binomial_deviance", "paper", {}), ("contrastive", "paper", {}), ("contrastive", "pml", {})]


def _kwargs(batch, profile, variant, loss=LOSS):
    kwargs = dict(profile=profile, **batch.compute_kwargs(), **variant)
    if loss == LOSS and batch.boundary_eps is not None and "eps" not in variant:
        kwargs["eps"] = batch.boundary_eps
    return kwargs


def _run(batch, kwargs, loss=LOSS, **extra):
    try:
        return gpwref.compute(loss, batch.embeddings, batch.labels, **kwargs, **extra)
    except gpwref.GpwrefError as error:
        return error


def _agree(batch, want, got, kwargs, loss=LOSS):
    return agreement(got, want, loss=loss, profile=gpwref.get_profile(kwargs["profile"]), params=dict(got.hyper),
                     labels=batch.labels, ref_labels=batch.ref_labels, ref_self=batch.ref_self, ref=batch.ref,
                     embeddings=batch.embeddings, normalize=batch.normalize)


@pytest.mark.parametrize("loss,profile,variant", CASES)
@SIM_SETTINGS
@given(batch=batches(**TINY))
def test_cuda_float64_matches_reference(loss, profile, variant, batch):
    kwargs = _kwargs(batch, profile, variant, loss)
    want, got = _run(batch, kwargs, loss), _run(batch, kwargs, loss, backend="cuda")
    if isinstance(want, Exception):
        assert isinstance(got, gpwref.GpwrefError) and str(got) == str(want)
        return
    assert isinstance(got.grad_sim, np.ndarray)  # host inputs give host outputs
    assert np.array_equal(got.pos_used, want.pos_used) and np.array_equal(got.neg_used, want.neg_used)
    assert got.extras == want.extras
    if not (loss == "contrastive" and got.hyper["distance"] == "euclidean"):  # 1/d: see test_kernels_cpu
        assert rel_err(got.loss, want.loss) <= 1e-12
        assert rel_err(got.grad_sim, want.grad_sim) <= 1e-12
    report = _agree(batch, want, got, kwargs, loss)
    assert not report.failures(), (report.errors, report.limits)


@pytest.mark.parametrize("loss,profile,variant", CASES)
@SIM_SETTINGS
@given(batch=batches(**TINY))
def test_cuda_float32_within_policy(loss, profile, variant, batch):
    kwargs = _kwargs(batch, profile, variant, loss)
    want, got = _run(batch, kwargs, loss), _run(batch, kwargs, loss, backend="cuda", dtype="float32")
    if isinstance(want, Exception):
        assert isinstance(got, gpwref.GpwrefError) and str(got) == str(want)
        return
    assert got.grad_sim.dtype == np.float32
    report = _agree(batch, want, got, kwargs, loss)
    assert not report.failures(), (report.masks_equal, report.errors, report.limits)


def _clustered(m, d, k, sigma, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(m // k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(m // k), k)
    return (centres[labels] + sigma * rng.normal(size=(m, d)) / np.sqrt(d)).astype(dtype), labels


def test_cuda_edge_cases_by_hand():
    """The named edge cases once each, deterministically (hypothesis draws them only sometimes)."""
    from gpwref.testing import make_batch

    knobs = [dict(singletons=True), dict(one_class=True), dict(ties=True), dict(duplicates=True),
             dict(on_boundary=True), dict(m=1), dict(with_ref=True, ref_includes_batch=True),
             dict(with_ref=True, ref_includes_batch=False)]
    for seed, knob in enumerate(knobs):
        kw = dict(TINY, **knob)
        batch = make_batch(np.random.default_rng(100 + seed), **kw)
        for profile, variant in (("paper", {}), ("pml", {"eps": 0.1})):
            kwargs = _kwargs(batch, profile, variant)
            want, got = _run(batch, kwargs), _run(batch, kwargs, backend="cuda")
            if isinstance(want, Exception):
                assert isinstance(got, gpwref.GpwrefError) and str(got) == str(want)
                continue
            report = _agree(batch, want, got, kwargs)
            assert report.masks_equal and not report.failures(), (knob, profile, report.errors)


def test_cuda_device_arrays_in_device_arrays_out():
    X, y = _clustered(8, 4, 2, 2.0, seed=1, dtype=np.float32)
    R, yr = _clustered(6, 4, 2, 2.0, seed=2, dtype=np.float32)
    d_X, d_y, d_R = cuda.to_device(X), cuda.to_device(y), cuda.to_device(R)
    got = gpwref.compute(LOSS, d_X, d_y, profile="pml", eps=0.1, ref=d_R, ref_labels=yr, backend="cuda")
    for name in ("grad_sim", "grad_emb", "grad_ref", "sim", "per_anchor", "pos_used", "neg_used"):
        assert getattr(getattr(got, name), "__cuda_ndarray__", False), name
    assert got.grad_sim.dtype == np.float32  # dtype=None keeps the device arrays' own dtype
    host = gpwref.compute(LOSS, X, y, profile="pml", eps=0.1, ref=R, ref_labels=yr, backend="cuda", dtype="float32")
    assert got.loss == host.loss
    assert np.array_equal(got.grad_emb.copy_to_host(), host.grad_emb)
    assert np.array_equal(got.grad_ref.copy_to_host(), host.grad_ref)
    want = gpwref.compute(LOSS, X.astype(np.float64), y, profile="pml", eps=0.1, ref=R.astype(np.float64), ref_labels=yr)
    assert abs(got.loss - want.loss) <= 1e-5 * abs(want.loss)


def test_cuda_device_inputs_are_validated_on_the_device():
    X, y = _clustered(6, 3, 2, 1.0, seed=0)
    bad = X.copy()
    bad[4, 1] = np.inf
    with pytest.raises(gpwref.GpwrefError, match=r"embeddings: must be finite .*row 4"):
        gpwref.compute(LOSS, cuda.to_device(bad), y, backend="cuda")
    zero = X.copy()
    zero[2] = 0.0
    with pytest.raises(gpwref.GpwrefError, match="row 2 is all zeros"):
        gpwref.compute(LOSS, cuda.to_device(zero), y, backend="cuda")
    with pytest.raises(gpwref.GpwrefError, match="float32 or float64"):
        gpwref.compute(LOSS, cuda.to_device(np.ones((6, 3), dtype=np.int32)), y, backend="cuda")
    with pytest.raises(gpwref.GpwrefError, match="labels: must have one label per row"):
        gpwref.compute(LOSS, cuda.to_device(X), y[:5], backend="cuda")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_bitwise_deterministic(dtype):
    X, y = _clustered(8, 4, 2, 2.0, seed=3)
    runs = [gpwref.compute(LOSS, X, y, profile="pml", eps=0.1, backend="cuda", dtype=dtype) for _ in range(2)]
    assert runs[0].loss == runs[1].loss
    for name in ("per_anchor", "grad_sim", "grad_emb", "pos_used", "neg_used", "sim"):
        assert np.array_equal(getattr(runs[0], name), getattr(runs[1], name)), name


def test_cuda_launch_geometry_does_not_change_the_answer():
    """Other block sizes / tile edges / grid caps reduce in other orders: same masks, 1e-12 values."""
    X, y = _clustered(8, 5, 2, 2.0, seed=4)
    want = gpwref.compute(LOSS, X, y, profile="paper")
    kernels = gcuda.kernels
    try:
        gcuda.kernels = lambda name, threads=2, tile=2, max_blocks=3: kernels(name, threads, tile, max_blocks)
        got = gpwref.compute(LOSS, X, y, profile="paper", backend="cuda")
    finally:
        gcuda.kernels = kernels
    assert np.array_equal(got.neg_used, want.neg_used) and np.array_equal(got.pos_used, want.pos_used)
    assert rel_err(got.grad_sim, want.grad_sim) <= 1e-12 and rel_err(got.grad_emb, want.grad_emb) <= 1e-12


# --------------------------------------------------------------------------------------------
# Real GPU only


@gpu
@needs_gpu
@pytest.mark.parametrize("m,d,dtype", [(80, 512, "float32"), (1000, 128, "float32"), (600, 64, "float64")])
def test_gpu_sizes_against_reference(m, d, dtype):
    X, y = _clustered(m, d, 5 if m == 80 else 4, 2.0, seed=m)
    for profile, extra in (("paper", {}), ("pml", {"eps": 0.1}), ("official", {})):
        want = gpwref.compute(LOSS, X, y, profile=profile, **extra)
        got = gpwref.compute(LOSS, X, y, profile=profile, backend="cuda", dtype=dtype, **extra)
        report = agreement(got, want, loss=LOSS, profile=gpwref.get_profile(profile), params=dict(got.hyper),
                           labels=y, embeddings=X)
        assert not report.failures(), (profile, report.errors, report.limits)


@gpu
@needs_gpu
def test_gpu_torch_tensors_zero_copy_and_bridge():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA build here")
    from gpwref.torch import MultiSimilarityLoss

    X, y = _clustered(256, 64, 4, 2.0, seed=9, dtype=np.float32)
    t = torch.tensor(X, device="cuda")
    ty = torch.tensor(y, device="cuda")
    got = gpwref.compute(LOSS, t, ty, profile="pml", eps=0.1, backend="cuda")
    grad = torch.as_tensor(got.grad_emb, device="cuda")
    want = gpwref.compute(LOSS, X.astype(np.float64), y, profile="pml", eps=0.1)
    assert rel_err(grad.cpu().numpy(), want.grad_emb) <= 1e-5
    leaf = t.clone().requires_grad_(True)
    value = MultiSimilarityLoss(profile="pml", eps=0.1)(leaf, ty)
    value.backward()
    assert abs(value.item() - want.loss) <= 1e-5 * abs(want.loss)
    assert rel_err(leaf.grad.cpu().numpy(), want.grad_emb) <= 1e-5
