"""Numba CPU kernels (backend="numba") against the float64 NumPy reference.

Expected values come from the reference (``backend="numpy"``, float64), which ``verification/``
proves against torch autograd, finite differences, loops and the real implementations. The
tolerance policy (``gpwref.testing.kernel_agreement``) derives every bound from the measured difference
of the similarity matrices; float64 kernels must in addition match to 1e-12 with identical masks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import gpwref
from gpwref.kernels import backends
from gpwref.testing.kernel_agreement import agreement
from gpwref.testing import batches
from gpwref_verification.common import rel_err

LOSS = "multi_similarity"
# every kernel loss x every profile it is defined under x every catalog variant
CASES = [(name, profile, variant) for name in backends.KERNEL_LOSSES
         for profile in gpwref.get_entry(name).defaults for variant in gpwref.get_entry(name).variants]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _kwargs(batch, profile, variant, loss=LOSS):
    kwargs = dict(profile=profile, **batch.compute_kwargs(), **variant)
    boundary = gpwref.get_entry(loss).boundary_param
    if boundary is not None and batch.boundary_eps is not None and boundary not in variant:
        kwargs[boundary] = batch.boundary_eps  # puts a pair exactly on a mining boundary
    return kwargs


def _both(batch, kwargs, loss=LOSS, **kernel):
    """(reference result or its error, kernel result or its error)."""
    out = []
    for extra in ({}, kernel):
        try:
            out.append(gpwref.compute(loss, batch.embeddings, batch.labels, **kwargs, **extra))
        except gpwref.GpwrefError as error:
            out.append(error)
    return out


def _check_agreement(batch, want, got, kwargs, loss=LOSS):
    params = dict(got.hyper)
    return agreement(got, want, loss=loss, profile=gpwref.get_profile(kwargs["profile"]), params=params,
                     labels=batch.labels, ref_labels=batch.ref_labels, ref_self=batch.ref_self, ref=batch.ref,
                     embeddings=batch.embeddings, normalize=batch.normalize)


@pytest.mark.parametrize("loss,profile,variant", CASES)
@SETTINGS
@given(batch=batches(m=(1, 12)))
def test_numba_float64_matches_reference(loss, profile, variant, batch):
    kwargs = _kwargs(batch, profile, variant, loss)
    want, got = _both(batch, kwargs, loss, backend="numba")
    if isinstance(want, Exception):  # a profile whose code raises: the kernel raises the same error
        assert isinstance(got, gpwref.GpwrefError) and str(got) == str(want)
        return
    assert np.array_equal(got.pos_used, want.pos_used) and np.array_equal(got.neg_used, want.neg_used)
    assert got.grad_sim.dtype == np.float64
    assert got.extras == want.extras
    if _lipschitz_weights(loss, got.hyper):
        # weights that are smooth functions of S: two float64 evaluations differ by round-off only
        assert rel_err(got.loss, want.loss) <= 1e-12
        assert rel_err(got.per_anchor, want.per_anchor) <= 1e-12
        assert rel_err(got.grad_sim, want.grad_sim) <= 1e-12
    assert np.all(got.grad_sim[~(want.pos_used | want.neg_used)] == 0.0)
    report = _check_agreement(batch, want, got, kwargs, loss)
    assert not report.failures(), (report.errors, report.limits)


def _lipschitz_weights(loss, hyper):
    """False for euclidean contrastive and lifted: their weight 1/d magnifies S's last-bit differences
    by 1/d^2 near duplicates (the policy's conditioning bound covers it; tests/kernels/test_kernels_lifted.py
    checks the lifted kernels to 1e-12 on the reference's own S)."""
    if loss == "lifted_structure":
        from gpwref.losses.lifted_structure import for_form

        return for_form(hyper["distance"], hyper["form"]) != "euclidean"
    return not (loss == "contrastive" and hyper["distance"] == "euclidean")


@pytest.mark.parametrize("loss,profile,variant", CASES)
@SETTINGS
@given(batch=batches(m=(1, 12)))
def test_numba_float32_within_policy(loss, profile, variant, batch):
    kwargs = _kwargs(batch, profile, variant, loss)
    want, got = _both(batch, kwargs, loss, backend="numba", dtype="float32")
    if isinstance(want, Exception):
        # float32 may see a same-label pair on the other side of the official 1 - 1e-5 self threshold
        # only when it is within float32 round-off of it; these batches are far from it
        assert isinstance(got, gpwref.GpwrefError) and str(got) == str(want)
        return
    assert got.grad_sim.dtype == np.float32 and got.grad_emb.dtype == np.float32
    report = _check_agreement(batch, want, got, kwargs, loss)
    assert not report.failures(), (report.masks_equal, report.errors, report.limits)


MS_CASES = [(profile, variant) for name, profile, variant in CASES if name == LOSS]


@pytest.mark.parametrize("profile,variant", MS_CASES)
@settings(max_examples=25, deadline=None)
@given(batch=batches(m=(1, 12), on_boundary=True))
def test_numba_float32_exact_boundary_ties(profile, variant, batch):
    """Dyadic embeddings (multiples of 1/4, d <= 6, normalize=False): S, S +- eps and every mining
    comparison are exact in float32 too, so the mined sets must equal the reference's even for
    the pair that sits exactly on the boundary (the strict inequality drops it on both sides)."""
    kwargs = _kwargs(batch, profile, variant)
    if kwargs.get("eps") is not None and float(np.float32(kwargs["eps"])) != kwargs["eps"]:
        kwargs["eps"] = float(np.float32(kwargs["eps"]))  # the profile default 0.1 is not a float32
    want, got = _both(batch, kwargs, backend="numba", dtype="float32")
    if isinstance(want, Exception):
        assert isinstance(got, gpwref.GpwrefError) and str(got) == str(want)
        return
    assert np.array_equal(got.sim, want.sim)
    assert np.array_equal(got.pos_used, want.pos_used) and np.array_equal(got.neg_used, want.neg_used)


def _clustered(m, d, k, sigma, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(m // k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(m // k), k)
    return centres[labels] + sigma * rng.normal(size=(m, d)) / np.sqrt(d), labels


@pytest.mark.parametrize("profile", ["paper", "official", "pml"])
def test_numba_float32_well_conditioned_1e5(profile):
    """docs/tolerances.md#float32-kernels: float32 kernels within relative 1e-5 of the float64 reference on values and weights
    for well-conditioned inputs (unit rows, d = 128, beta <= 50), with the same mined pairs."""
    X, y = _clustered(256, 128, 4, 2.0, seed=3)
    eps = {} if profile != "pml" else {"eps": 0.1}
    want = gpwref.compute(LOSS, X, y, profile=profile, **eps)
    got = gpwref.compute(LOSS, X, y, profile=profile, backend="numba", dtype="float32", **eps)
    assert np.array_equal(got.pos_used, want.pos_used) and np.array_equal(got.neg_used, want.neg_used)
    assert 0.0 < want.neg_used.sum() < (y[:, None] != y[None, :]).sum()  # mining kept some, not all
    assert abs(got.loss - want.loss) <= 1e-5 * abs(want.loss)
    assert rel_err(got.grad_sim, want.grad_sim) <= 1e-5
    assert rel_err(got.grad_emb, want.grad_emb) <= 1e-5


@pytest.mark.parametrize("loss", backends.KERNEL_LOSSES)
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_numba_bitwise_deterministic(dtype, loss):
    """Two runs give identical bits, on a batch big enough (m n >= PARALLEL_MIN_PAIRS) to run threaded."""
    X, y = _clustered(256, 16, 4, 2.0, seed=5)
    R, yr = _clustered(160, 16, 4, 2.0, seed=6)
    assert X.shape[0] * R.shape[0] >= backends.PARALLEL_MIN_PAIRS
    profile = "pml" if "pml" in gpwref.get_entry(loss).defaults else "paper"
    with_ref = ({"ref": R, "ref_labels": yr},) if gpwref.get_entry(loss).supports_ref else ()  # lifted: batch only
    for kwargs in ({}, *with_ref):
        runs = [gpwref.compute(loss, X, y, profile=profile, backend="numba", dtype=dtype, **kwargs) for _ in range(3)]
        for other in runs[1:]:
            assert other.loss == runs[0].loss
            for name in ("per_anchor", "grad_sim", "grad_emb", "pos_used", "neg_used", "sim"):
                assert np.array_equal(getattr(other, name), getattr(runs[0], name)), name
            if "ref" in kwargs:
                assert np.array_equal(other.grad_ref, runs[0].grad_ref)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_numba_pool_works_in_a_forked_child():
    """A child forked after the pool started (a DataLoader worker, say) gets its own pool: the same
    result, not a hang on a queue that no inherited thread serves."""
    import os

    from gpwref.kernels import cpu

    X, y = _clustered(256, 16, 4, 2.0, seed=8)
    want = gpwref.compute("multi_similarity", X, y, backend="numba")  # starts the parent's pool
    assert cpu._executor() is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, report, leave without running the parent's cleanup
        try:
            got = gpwref.compute("multi_similarity", X, y, backend="numba")
            ok = got.loss == want.loss and np.array_equal(got.grad_emb, want.grad_emb)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    import select
    import signal

    ready, _, _ = select.select([read], [], [], 120)  # a child stuck on the inherited pool never writes
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish in 120 s (its kernels waited on the parent's pool)")
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and status == 0


@pytest.mark.parametrize("m", [1, 2, 31, 32, 33, 65, 100, 255, 256, 257, 600])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_is_exactly_symmetric_and_matches_the_product(m, dtype):
    """cpu.gram (lower triangle in 256-row BLAS blocks + tiled mirror): C-ordered, S == S^T bit for
    bit, and U U^T in float64 within the dtype's accumulated round-off (d eps |u_i| |u_j|), at sizes
    on and across the 32-row tiles and the row blocks; the same bits on one thread or two."""
    from gpwref.kernels import cpu

    U = np.random.default_rng(m).normal(size=(m, 9)).astype(dtype)
    S = cpu.gram(U)
    with cpu.threads(1):
        assert np.array_equal(cpu.gram(U), S)
    assert S.dtype == dtype and S.flags.c_contiguous and S.shape == (m, m)
    assert np.array_equal(S, S.T)
    U64 = U.astype(np.float64)
    want = U64 @ U64.T
    bound = 9 * np.finfo(dtype).eps * np.outer(np.linalg.norm(U64, axis=1), np.linalg.norm(U64, axis=1))
    assert np.all(np.abs(S - want) <= bound)


@pytest.mark.parametrize("loss", backends.KERNEL_LOSSES)
def test_numba_bits_do_not_depend_on_threads_or_chunks(loss, monkeypatch):
    """The row kernels run in chunks on gpwref's thread pool: one thread, the pool, and another
    chunking (7 chunks per thread, so chunk edges fall elsewhere) give identical bits."""
    from gpwref.kernels import cpu

    X, y = _clustered(256, 16, 4, 2.0, seed=7)
    monkeypatch.setattr(cpu, "BLAS_BLOCK_ROWS", 48)  # several GEMM blocks (fixed: part of the bits)
    monkeypatch.setattr(backends, "SYMMETRIC_BLOCK_BYTES", 40 * 256 * 4)  # several H blocks
    profile = "pml" if "pml" in gpwref.get_entry(loss).defaults else "paper"
    run = lambda: gpwref.compute(loss, X, y, profile=profile, backend="numba", dtype="float32")  # noqa: E731
    with cpu.threads(1):
        want = run()
    monkeypatch.setattr(cpu, "CHUNKS_PER_THREAD", 7)
    calls = []
    real_submit = cpu._executor().submit
    monkeypatch.setattr(cpu._executor(), "submit", lambda *a, **k: calls.append(1) or real_submit(*a, **k))
    for got in (run(), run()):
        for name in ("per_anchor", "grad_sim", "grad_emb", "pos_used", "neg_used"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
    if cpu.max_threads() > 1:
        assert calls, "the pool was never used: the test would not see a chunking difference"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("profile", ["paper", "official", "pml"])
def test_numba_symmetric_path_forms_g_plus_gt_exactly(dtype, profile):
    """On the batch, the MS kernels build H = G + G^T from S's symmetry instead of transposing G:
    S from NumPy's U @ U.T must be exactly symmetric, H must equal G + G.T bit for bit, and G must
    equal the general (any reference set) kernel's."""
    from gpwref.kernels import cpu

    X, y = _clustered(300, 16, 4, 2.0, seed=8)
    U, _ = backends._unit_rows(cpu, X.astype(dtype), "embeddings")
    S = U @ U.T
    assert np.array_equal(S, S.T)
    entry = gpwref.get_entry(LOSS)
    prof = gpwref.get_profile(profile)
    params = gpwref.catalog.resolve_hyper(entry, profile, {"eps": 0.1})
    sym = backends._numba_pairs(cpu, entry, prof, params, S, y, y, True, None, np.dtype(dtype), unit=U)
    general = backends._numba_pairs(cpu, entry, prof, params, S, y, y, True, None, np.dtype(dtype))
    for name in ("grad_sim", "pos_used", "neg_used", "per_anchor"):
        assert np.array_equal(sym[name], general[name]), name
    assert sym["neg_used"].sum() > 0
    # the whole H at once (the backend forms it in blocks of rows): exactly G + G^T
    G = sym["grad_sim"]
    H = np.zeros_like(G)
    again = {k: np.zeros_like(sym[k]) for k in ("grad_sim", "pos_used", "neg_used")}
    hp = backends.ms_scalars(params, np.dtype(dtype))
    rules = backends.ms_rules(prof, np.dtype(dtype))
    m = len(y)
    extremes, kept, sums = np.empty((m, 2), dtype), np.empty((m, 2), bool), np.empty((m, 5))
    cpu.ms_row_stats(S, y, y, np.arange(m), *backends.same_label_columns(y, y), rules["value_rule"], rules["self_threshold"],
                     hp["mine"], hp["eps"], rules["compare"], rules["skip_empty"], hp["alpha"], hp["beta"], hp["lam"],
                     np.dtype(dtype).type(np.inf), extremes, kept, sums, np.empty(m), np.empty((m, 4), np.int64))
    cpu.ms_rows_symmetric(S, y, rules["value_rule"], rules["self_threshold"], hp["mine"], hp["eps"], rules["compare"],
                          hp["alpha"], hp["beta"], hp["lam"], extremes, kept, sums, 0, again["grad_sim"], H,
                          again["pos_used"], again["neg_used"])
    assert np.array_equal(again["grad_sim"], G)
    assert np.array_equal(H, G + G.T)
    assert rel_err(sym["grad_unit"], (G + G.T) @ U) <= (1e-5 if dtype == np.float32 else 1e-13)


def test_binomial_hand_case():
    """Same four points; binomial deviance, alpha = 2, beta = 10, lam = 1/2. Anchor 0 has one positive
    (S = 1/2: softplus(alpha (lam - S)) = softplus(0) = log 2, weight alpha sigma(0) / 1 = 1) and two
    negatives (S = 0, -1: softplus(beta (S - lam)) = softplus(-5), softplus(-15), each over |N| = 2)."""
    angles = np.radians([0.0, 60.0, 90.0, 180.0])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 0, 1, 1])
    got = gpwref.compute("binomial_deviance", X, y, backend="numba", alpha=2.0, beta=10.0, lam=0.5)
    softplus = lambda z: np.log1p(np.exp(z))  # noqa: E731 - small arguments here
    anchor0 = np.log(2.0) + (softplus(-5.0) + softplus(-15.0)) / 2
    assert got.per_anchor[0] * 4 == pytest.approx(anchor0, rel=1e-14)
    assert got.grad_sim[0, 1] == pytest.approx(-2.0 * 0.5 / 4, rel=1e-14)
    assert got.grad_sim[0, 3] == pytest.approx(10.0 / (1 + np.exp(15.0)) / 2 / 4, rel=1e-12)


def test_contrastive_hand_case():
    """Same four points; contrastive, paper profile (cosine, positive term 1 - S, negative
    [S - 1/2]_+, sum over anchors / m). Anchor 1 (60 deg): positive S_10 = 1/2 (term 1/2, weight
    -1/m), negatives S_12 = cos 30 = sqrt(3)/2 (term sqrt(3)/2 - 1/2, weight +1/m) and
    S_13 = cos 120 = -1/2 (below the margin: no term, weight 0)."""
    angles = np.radians([0.0, 60.0, 90.0, 180.0])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 0, 1, 1])
    got = gpwref.compute("contrastive", X, y, backend="numba", profile="paper")
    assert got.per_anchor[1] * 4 == pytest.approx(0.5 + np.sqrt(3) / 2 - 0.5, rel=1e-14)
    assert got.grad_sim[1, 0] == -0.25 and got.grad_sim[1, 2] == 0.25 and got.grad_sim[1, 3] == 0.0
    assert got.extras == {"active_pos_pairs": 4, "active_neg_pairs": 2}  # S_12 = S_21 > 1/2; S_02 = 0


def test_hand_case_matches_closed_form():
    """Four unit vectors on a circle, two classes, paper profile, eps = None (no mining).

    Angles 0, 60 deg (class 0) and 90, 180 deg (class 1): S_01 = cos 60 = 1/2, S_23 = cos 90 = 0,
    S_02 = 0, S_03 = -1, S_12 = cos 30 = sqrt(3)/2, S_13 = cos 120 = -1/2. Anchor 0: one positive
    (S = 1/2, logit -alpha (1/2 - lam) = 0 with lam = 1/2, so its term is log(1 + 1)/alpha and its
    weight (1/m) * 1/2) and negatives S = 0, -1.
    """
    angles = np.radians([0.0, 60.0, 90.0, 180.0])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 0, 1, 1])
    alpha, beta, lam, m = 2.0, 10.0, 0.5, 4
    got = gpwref.compute(LOSS, X, y, backend="numba", alpha=alpha, beta=beta, lam=lam, eps=None)
    neg0 = np.exp(beta * (np.array([0.0, -1.0]) - lam))
    anchor0 = np.log(2.0) / alpha + np.log1p(neg0.sum()) / beta
    assert got.per_anchor[0] * m == pytest.approx(anchor0, rel=1e-14)
    assert got.grad_sim[0, 1] == pytest.approx(-0.5 / m, rel=1e-14)
    assert got.grad_sim[0, 2] == pytest.approx(neg0[0] / (1 + neg0.sum()) / m, rel=1e-14)
    assert got.grad_sim[0, 0] == 0.0


def test_numpy_float32_path_is_the_reference_code():
    X, y = _clustered(64, 8, 4, 2.0, seed=1)
    got = gpwref.compute(LOSS, X, y, dtype="float32")
    want = gpwref.compute(LOSS, X, y)
    assert got.grad_sim.dtype == np.float32 and got.sim.dtype == np.float32
    assert rel_err(got.grad_sim, want.grad_sim) <= 1e-5 and abs(got.loss - want.loss) <= 1e-5 * abs(want.loss)


def test_bad_backend_and_dtype_are_refused():
    X, y = _clustered(8, 4, 2, 1.0, seed=0)
    with pytest.raises(gpwref.GpwrefError, match=r"backend: must be one of \['numpy', 'numba', 'cuda'\]"):
        gpwref.compute(LOSS, X, y, backend="jax")
    with pytest.raises(gpwref.GpwrefError, match="dtype: must be None"):
        gpwref.compute(LOSS, X, y, backend="numba", dtype="float16")
    with pytest.raises(gpwref.GpwrefError, match="backend: 'numba' has kernels for"):
        backends.select("numba", None, "a_loss_without_kernels")


def test_kernel_backend_refuses_what_the_reference_refuses():
    X, y = _clustered(8, 4, 2, 1.0, seed=0)
    X[3] = 0.0
    for backend in ("numpy", "numba"):
        with pytest.raises(gpwref.GpwrefError, match="row 3 is all zeros"):
            gpwref.compute(LOSS, X, y, backend=backend)
    X[3] = np.nan
    with pytest.raises(gpwref.GpwrefError, match="must be finite"):
        gpwref.compute(LOSS, X, y, backend="numba")


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="a GPU is present: the cuda backend is available")
def test_unavailable_cuda_backend_is_an_error_not_a_fallback():
    code = textwrap.dedent("""
        import numpy as np, gpwref
        try:
            gpwref.compute("multi_similarity", np.eye(4), np.array([0, 0, 1, 1]), backend="cuda")
        except gpwref.GpwrefError as error:
            print("ERROR", error)
        else:
            print("NO ERROR")
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ERROR backend: 'cuda' is unavailable on this machine" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_rows_matches_the_product_and_not_the_thread_count(dtype, transposed, monkeypatch):
    """cpu.matmul_rows (single-threaded BLAS on blocks of A's rows, on the pool): C-ordered, A B in
    float64 within the dtype's accumulated round-off (k eps |a_i| |b_j|), the last block partial,
    A given transposed (G^T in the reference-set path), and the same bits on one thread or two."""
    from gpwref.kernels import cpu

    monkeypatch.setattr(cpu, "BLAS_BLOCK_ROWS", 64)
    rng = np.random.default_rng(5)
    A = rng.normal(size=(37, 300)).astype(dtype).T if transposed else rng.normal(size=(300, 37)).astype(dtype)
    B = rng.normal(size=(37, 11)).astype(dtype)
    got = cpu.matmul_rows(A, B)
    assert got.dtype == dtype and got.flags.c_contiguous and got.shape == (300, 11)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    bound = 37 * np.finfo(dtype).eps * np.outer(np.abs(A64).sum(axis=1), np.abs(B64).max(axis=0))
    assert np.all(np.abs(got - A64 @ B64) <= bound)
    with cpu.threads(1):
        assert np.array_equal(cpu.matmul_rows(A, B), got)


def test_blas_single_limits_blas_to_one_thread_and_restores_it():
    """Inside cpu.blas_single every BLAS library threadpoolctl sees runs one thread; after it, each
    has its own count back (the kernels must not leave the user's BLAS single-threaded)."""
    from threadpoolctl import threadpool_info

    from gpwref.kernels import cpu

    def counts():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = counts()
    assert before, "no BLAS library found: the test would check nothing"
    with cpu.blas_single():
        assert counts() == [1] * len(before)
        with cpu.blas_single():  # nested (gram inside the pipeline): still one, then still one
            pass
        assert counts() == [1] * len(before)
    assert counts() == before
    # overlapping, as from two Python threads: A enters, B enters, A leaves, B leaves. BLAS stays
    # single-threaded until B leaves, and B must restore the counts A found (not A's limit of 1)
    a, b = cpu.blas_single(), cpu.blas_single()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert counts() == [1] * len(before)
    b.__exit__(None, None, None)
    assert counts() == before
