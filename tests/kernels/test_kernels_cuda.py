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
from gpwref.testing.kernel_agreement import agreement  # noqa: E402
from gpwref.testing import batches  # noqa: E402
from gpwref_verification.common import rel_err  # noqa: E402

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
CASES += [("lifted_structure", profile, {"form": form}) for profile in ("paper", "pml") for form in ("song", "generalized")]


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
    if not _euclidean(loss, got.hyper):  # 1/d: see test_kernels_cpu
        assert rel_err(got.loss, want.loss) <= 1e-12
        assert rel_err(got.grad_sim, want.grad_sim) <= 1e-12
    report = _agree(batch, want, got, kwargs, loss)
    assert not report.failures(), (report.errors, report.limits)


def _euclidean(loss, hyper):
    """Euclidean contrastive and lifted weights 1/d magnify S's last-bit differences near duplicates."""
    if loss == "lifted_structure":
        from gpwref.losses.lifted_structure import for_form

        return for_form(hyper["distance"], hyper["form"]) == "euclidean"
    return loss == "contrastive" and hyper["distance"] == "euclidean"


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


LIFTED = "lifted_structure"
LIFTED_KNOBS = [dict(singletons=True), dict(one_class=True), dict(ties=True), dict(duplicates=True),
                dict(on_boundary=True), dict(m=1), dict(m=2)]


def _lifted_same_s(got, labels, profile, form):
    """The CUDA result against the float64 reference on the kernel's own S: equal masks, 1e-12."""
    want = gpwref.from_similarity(LIFTED, got.sim.astype(np.float64), labels, profile=profile, form=form)
    assert np.array_equal(got.pos_used, want.pos_used) and np.array_equal(got.neg_used, want.neg_used)
    assert rel_err(got.per_anchor, want.per_anchor) <= 1e-12
    tol = 1e-12 if got.grad_sim.dtype == np.float64 else 2.0**-23  # float32: G's own rounding only
    assert rel_err(got.grad_sim.astype(np.float64), want.grad_sim) <= tol


def test_cuda_lifted_edge_cases_on_their_own_similarities():
    """Each edge case once, both forms and profiles: float64 and float32 kernels equal the reference
    evaluated on the kernel's own S (euclidean included, which 1/D makes too ill-conditioned to
    compare across two different S), and float32 is within the policy of the float64 reference."""
    from gpwref.testing import make_batch

    for seed, knob in enumerate(LIFTED_KNOBS):
        batch = make_batch(np.random.default_rng(300 + seed), **dict(TINY, with_ref=False, **knob))
        for profile in ("paper", "pml"):
            for form in ("song", "generalized"):
                kwargs = dict(profile=profile, form=form, **batch.compute_kwargs())
                _lifted_same_s(_run(batch, kwargs, LIFTED, backend="cuda"), batch.labels, profile, form)
                got32 = _run(batch, kwargs, LIFTED, backend="cuda", dtype="float32")
                _lifted_same_s(got32, batch.labels, profile, form)
                report = _agree(batch, _run(batch, kwargs, LIFTED), got32, kwargs, LIFTED)
                assert not report.failures(), (knob, profile, form, report.errors, report.limits)


def test_cuda_lifted_song_hand_case():
    """test_kernels_lifted.py's hand case: 0, 60 (class 0), 90, 180 degrees (class 1), paper Song form
    (euclidean, margins 0 / 1). A negative of row 0 is weighted by (0,1) and (1,0):
    G02 = (1/D02) e^(1 - D02) (J01/4 + J10/4) / (E0 + E1)."""
    angles = np.radians([0.0, 60.0, 90.0, 180.0])
    X, y = np.stack([np.cos(angles), np.sin(angles)], axis=1), np.array([0, 0, 1, 1])
    D12, r2, r3 = np.sqrt(2 - np.sqrt(3)), np.sqrt(2), np.sqrt(3)
    E0, E1 = np.exp(1 - r2) + np.exp(1 - 2), np.exp(1 - D12) + np.exp(1 - r3)
    E2, E3 = np.exp(1 - r2) + np.exp(1 - D12), np.exp(1 - 2) + np.exp(1 - r3)
    J01, J23 = np.log(E0 + E1) + 1.0, np.log(E2 + E3) + r2
    got = gpwref.compute(LIFTED, X, y, profile="paper", form="song", backend="cuda")
    assert got.loss == pytest.approx((J01**2 + J23**2) / 4, rel=1e-13)
    assert got.grad_sim[0, 1] == pytest.approx(-J01 / 4, rel=1e-13)
    assert got.grad_sim[0, 2] == pytest.approx(np.exp(1 - r2) / r2 * (J01 / 2) / (E0 + E1), rel=1e-13)
    assert got.grad_sim[2, 0] == pytest.approx(np.exp(1 - r2) / r2 * (J23 / 2) / (E2 + E3), rel=1e-13)
    assert got.pos_used.sum() == 4 and got.neg_used.sum() == 8


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_lifted_bitwise_deterministic(dtype):
    X, y = _clustered(8, 4, 2, 2.0, seed=3)
    for form in ("song", "generalized"):
        runs = [gpwref.compute(LIFTED, X, y, profile="paper", form=form, backend="cuda", dtype=dtype) for _ in range(2)]
        assert runs[0].loss == runs[1].loss
        for name in ("per_anchor", "grad_sim", "grad_emb", "pos_used", "neg_used", "sim"):
            assert np.array_equal(getattr(runs[0], name), getattr(runs[1], name)), (form, name)


def test_cuda_lifted_launch_geometry_does_not_change_the_answer():
    """Two threads per block and three blocks over 9 rows: the trees and the grid-stride loops
    reduce in other orders; the result still equals the reference on the same S to 1e-12."""
    X, y = _clustered(9, 5, 3, 2.0, seed=4)
    kernels = gcuda.kernels
    try:
        gcuda.kernels = lambda name, threads=2, tile=2, max_blocks=3: kernels(name, threads, tile, max_blocks)
        for form in ("song", "generalized"):
            _lifted_same_s(gpwref.compute(LIFTED, X, y, profile="pml", form=form, backend="cuda"), y, "pml", form)
    finally:
        gcuda.kernels = kernels


def _count_launches(monkeypatch):
    """A list that records the name of every kernel launched from now on, counted where a launch
    happens rather than where ``cuda.py`` keeps its kernels: the simulator's kernel call
    (``FakeCUDAKernel.__call__``; a device function called inside a kernel runs with a kernel
    context and is not a launch) or, on a GPU, the launch configuration's call (``kernel[grid,
    block](...)``). A kernel launched from anywhere (a cast, a fill, a kernel another module
    compiled) is counted. The GPU branch has not been run yet (no GPU in the session that wrote it)."""
    launched = []
    if gcuda.SIMULATOR:
        from numba.cuda.simulator import kernel as simulator

        original = simulator.FakeCUDAKernel.__call__

        def counting(self, *args):
            if not self._device and simulator._kernel_context is None:
                launched.append(self.fn.__name__)
            return original(self, *args)

        monkeypatch.setattr(simulator.FakeCUDAKernel, "__call__", counting)
    else:  # pragma: no cover - real GPU
        from numba.cuda import dispatcher

        original = dispatcher._LaunchConfiguration.__call__

        def counting(self, *args):
            launched.append(self.dispatcher.py_func.__name__)
            return original(self, *args)

        monkeypatch.setattr(dispatcher._LaunchConfiguration, "__call__", counting)
    return launched


def test_cuda_ms_forward_backward_in_three_launches(monkeypatch):
    """Issue 3's GPU goal: the MS forward + backward on the batch (normalize=True, the training
    case) at m = 80 launches at most 3 kernels: S with the normalisation fused, the MS rows, the
    embedding gradient with the normalisation's backward fused. The counted run must also be
    right (the same masks, value and dL/dX as the float64 reference), so the count is of a run
    that did all the work. The simulator runs one Python thread per CUDA thread, so d = 8 and,
    under it, 8 x 8 GEMM tiles (half the time of the default 4 x 4; the launch count does not
    depend on the geometry, which is each launch's own parameter)."""
    X, y = _clustered(80, 8, 5, 2.0, seed=80)
    want = gpwref.compute(LOSS, X, y, profile="pml", eps=0.1)
    if gcuda.SIMULATOR:
        kernels = gcuda.kernels
        monkeypatch.setattr(gcuda, "kernels", lambda name, threads=8, tile=8, max_blocks=2: kernels(name, threads, tile, max_blocks))
    launched = _count_launches(monkeypatch)
    got = gpwref.compute(LOSS, X, y, profile="pml", eps=0.1, backend="cuda")
    assert launched == ["similarity", "ms_rows", "embedding_grad"]
    assert np.array_equal(got.pos_used, want.pos_used) and np.array_equal(got.neg_used, want.neg_used)
    assert 0 < want.neg_used.sum() < 80 * 75  # the mining kept some of the 6000 negative pairs, not all
    assert rel_err(got.loss, want.loss) <= 1e-12
    assert rel_err(got.grad_sim, want.grad_sim) <= 1e-12 and rel_err(got.grad_emb, want.grad_emb) <= 1e-12


def test_cuda_launch_counts_of_the_other_paths(monkeypatch):
    """The launch count of every other path, on tiny batches (the count does not depend on m):
    the separate-reference MS path is 3 launches too (one kernel does both gradients); a device
    input in another dtype adds its cast; contrastive adds the batch-wide rescaling; PML's 'at
    most one kept pair' zero rule adds four fills (which also shows the counter sees launches
    off the main path). Each counted result is checked against the float64 reference."""
    launched = _count_launches(monkeypatch)
    X, y = _clustered(8, 4, 2, 2.0, seed=5)
    R, yr = _clustered(6, 4, 2, 2.0, seed=6)

    def run(loss, want_launches, X=X, y=y, ref_kwargs=None, host=None, **kwargs):
        ref_kwargs = ref_kwargs or {}
        launched.clear()
        got = gpwref.compute(loss, X if host is None else host, y, backend="cuda", **ref_kwargs, **kwargs)
        assert launched == want_launches, (loss, kwargs, launched)
        tolerance = 1e-5 if kwargs.pop("dtype", None) == "float32" else 1e-12
        want = gpwref.compute(loss, X, y, **ref_kwargs, **kwargs)
        assert rel_err(got.loss, want.loss) <= tolerance
        for name in ("grad_emb", "grad_ref"):
            if getattr(want, name) is not None:
                assert rel_err(np.asarray(_host(getattr(got, name)), dtype=np.float64), getattr(want, name)) <= tolerance, name

    three = ["similarity", "ms_rows", "embedding_grad"]
    run(LOSS, three, profile="paper")
    run(LOSS, three, profile="pml", eps=0.1, ref_kwargs=dict(ref=R, ref_labels=yr))
    run(LOSS, three, profile="paper", normalize=False)
    run(LOSS, three, profile="pml", eps=0.1, dtype="float32")
    run(LOSS, ["cast"] + three, profile="pml", eps=0.1, dtype="float32", host=cuda.to_device(X))  # float64 on the device
    run("binomial_deviance", ["similarity", "binomial_rows", "embedding_grad"], profile="paper")
    run("contrastive", ["similarity", "contrastive_rows", "scale_rows", "embedding_grad"], profile="pml")
    X2, y2 = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), np.array([0, 0, 1])  # eps = 0.1 mines no pair at all
    run(LOSS, ["similarity", "ms_rows", "fill_zero", "fill_zero", "fill_zero", "fill_zero_1d", "embedding_grad"],
        X=X2, y=y2, profile="pml", eps=0.1)


def _host(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else array


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
