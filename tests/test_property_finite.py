"""Property: finite input never gives a silent non-finite or wrong number.

Over every catalog loss x profile x backend where it runs (numpy; numba and cuda for the kernel
losses, ``kernels.backends.KERNEL_LOSSES``) x dtype (float64, float32), on finite inputs drawn with
extreme scales (global and per row), exact duplicates, tiny and huge rows, normalize False/True:

* every call either raises ``GpwrefError`` naming an argument, or returns a finite loss,
  per_anchor, grad_sim, grad_emb and grad_ref;
* where float64 and float32 both return, float32 stays within the documented policy of the float64
  reference: the kernel policy (``gpwref.testing.kernel_agreement.agreement``) for the numba/cuda
  kernels; for the NumPy float32 path (float32 throughout, logits included, which that policy does
  not describe) a stated bound, 1e-3 normwise relative against the float64 reference on the
  float32-rounded inputs (``NUMPY_FLOAT32_RTOL``, reasoned below), on well-conditioned inputs:
  normalised, no pair closer than 0.1 unless an exact copy, both sides using the same pairs (a
  flipped pair moves a whole weight: no numeric bound applies).

Bounded for CI (the ``ci`` hypothesis profile; small m; the simulator's CUDA runs tiny batches).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gpwref
from gpwref.kernels.backends import KERNEL_LOSSES
from gpwref.plots import draw_inputs
from gpwref.testing.kernel_agreement import agreement

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
CASES = [(entry.name, profile) for entry in gpwref.CATALOG for profile in entry.defaults]
KERNEL_CASES = [(name, profile) for name, profile in CASES if name in KERNEL_LOSSES]
# the ci profile (15 examples) gets 8 per case (~15 s in all for numpy and numba); dev gets its own count
EXAMPLES = 8 if settings.default.max_examples <= 15 else settings.default.max_examples
FIELDS = ("loss", "per_anchor", "grad_sim", "grad_emb", "grad_ref")

# the extreme shapes of the numbers (each applied to a drawn normal batch)
EXTREMES = ("plain", "global_scale", "row_scales", "duplicates", "tiny_row", "huge_row")
EXPONENTS = (-300, -160, -45, -40, -20, -6, 6, 20, 38, 40, 150, 300)


def _kind(loss: str, profile: str) -> str:
    """How the loss takes its reference set: "batch", "proxies" or "paired" (a second view)."""
    return draw_inputs(loss, profile, m=8, classes=4, d=4).kind


KINDS = {case: _kind(*case) for case in CASES}


@st.composite
def extreme_inputs(draw, kind: str, max_m: int = 8, max_d: int = 5):
    """(X, labels, kwargs) of the given kind with one extreme shape of numbers."""
    m = draw(st.integers(2, max_m))
    d = draw(st.integers(2, max_d))
    classes = draw(st.integers(2, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = np.arange(m) % classes
    X = rng.normal(size=(m, d))
    extreme = draw(st.sampled_from(EXTREMES))
    exponent = draw(st.sampled_from(EXPONENTS))
    if extreme == "global_scale":
        X = X * 10.0**exponent
    elif extreme == "row_scales":
        X = X * 10.0 ** rng.integers(-40, 41, size=(m, 1))
    elif extreme == "duplicates":
        copies = rng.integers(0, m, size=m)
        keep = rng.random(m) < 0.5
        X = np.where(keep[:, None], X, X[copies])
    elif extreme == "tiny_row":
        X[rng.integers(m)] *= 10.0 ** min(exponent, -exponent)
    elif extreme == "huge_row":
        X[rng.integers(m)] *= 10.0 ** max(exponent, -exponent)
    normalize = draw(st.booleans())
    kwargs = {"normalize": normalize}
    if kind == "proxies":
        kwargs.update(ref=rng.normal(size=(classes, d)), ref_labels=np.arange(classes))
    elif kind == "paired":
        labels = np.arange(m)
        kwargs.update(ref=X + 0.3 * np.abs(X).max(axis=1, keepdims=True) * rng.normal(size=X.shape), ref_labels=np.arange(m))
    return X, labels, kwargs


def _run(loss, profile, X, labels, kwargs, **extra):
    """The result, or the GpwrefError (which must name an argument)."""
    try:
        return gpwref.compute(loss, X, labels, profile=profile, **kwargs, **extra)
    except gpwref.GpwrefError as error:
        assert isinstance(error.argument, str) and error.argument, error
        return error


def _host(value):
    if value is None:
        return None
    if hasattr(value, "copy_to_host"):
        return value.copy_to_host()
    return np.asarray(value)


def _assert_finite(result, where):
    if isinstance(result, Exception):
        return
    for name in FIELDS:
        value = _host(getattr(result, name))
        assert value is None or np.all(np.isfinite(value)), (where, name, value)


# The NumPy float32 path's stated bound (normwise, relative): round-off moves S by dS ~ d u (1e-6
# here) and a weight by about s dS / gap_min (s: the loss's largest exponent scale, 256 for circle;
# gap_min >= 0.01 below), at most ~3e-4; a rule or formula error (the float64 duplicate cut-off on
# float32 S gave 1e-1 to 1e13) is far above.
NUMPY_FLOAT32_RTOL = 1e-3
# Weights that jump inside a pair's range (histogram bins), not at a mask change: no bound applies.
BINNED = ("fast_ap", "histogram")
# Pairs at 2 - 2S below this (distance < 0.1) but not exact copies are ill-conditioned in float32
# (gpwref/testing/kernel_agreement.py: "well-conditioned": no pair closer than about 0.1).
WELL_SEPARATED_GAP = 1e-2


def _within_float32_bound(loss, profile, X, labels, kwargs, got):
    """The NumPy float32 result against the float64 reference on the float32-rounded inputs, on
    well-conditioned inputs (normalised, pairs well separated or exact copies, same pairs used)."""
    rounded = {key: (value.astype(np.float32).astype(np.float64) if key == "ref" else value) for key, value in kwargs.items()}
    want = _run(loss, profile, X.astype(np.float32).astype(np.float64), labels, rounded)
    if isinstance(want, Exception) or not _same_pairs(got, want) or loss in BINNED:
        return
    if np.any((np.asarray(got.per_anchor) == 0) != (want.per_anchor == 0)):
        return  # an anchor's term within float32 round-off of 0: PML's count of non-zero terms flips
    gap = 2.0 - 2.0 * np.abs(want.sim)  # both ends: S near -1 is as ill-conditioned for angular losses
    if np.any((gap > 1e-12) & (gap < WELL_SEPARATED_GAP)):
        return
    # values are O(1) at unit scale, so their round-off is absolute: atol = rtol (docs/tolerances.md)
    assert abs(got.loss - want.loss) <= NUMPY_FLOAT32_RTOL * (abs(want.loss) + 1.0), (got.loss, want.loss)
    G = np.abs(want.grad_sim)
    norms = np.linalg.norm(X.astype(np.float32).astype(np.float64), axis=1)
    # the gradients' natural scale (they may cancel to ~0): a weight is the slope of a mean over m
    # anchors of O(1)-slope terms (1/m), dL/dx_i is sum_j |H_ij| / |x_i| with H = G (+ G^T)
    m = G.shape[0]
    H_rows = G.sum(axis=1) + (G.sum(axis=0) if want.grad_ref is None else 0.0)
    natural = {"grad_sim": 1.0 / m,
               "grad_emb": float(np.max((H_rows + 1.0 / m) / norms)),
               "grad_ref": float(G.sum(axis=0).max(initial=0.0) + 1.0 / m) / float(np.min(np.linalg.norm(kwargs.get("ref", X), axis=1)))}
    # an intermediate below float32's smallest normal (1/|x| of a row beyond 1e38) has no relative
    # accuracy: up to that much error per unit of summed weight
    subnormal = float(np.finfo(np.float32).tiny) * (1.0 + float(H_rows.max(initial=0.0)))
    for name in ("grad_sim", "grad_emb", "grad_ref"):
        g, w = _host(getattr(got, name)), getattr(want, name)
        if w is None:
            continue
        err = float(np.max(np.abs(g.astype(np.float64) - w), initial=0.0))
        limit = NUMPY_FLOAT32_RTOL * (float(np.max(np.abs(w), initial=0.0)) + natural[name]) + subnormal
        assert err <= limit, (name, err, limit)


def _same_pairs(got, want) -> bool:
    return bool(np.array_equal(_host(got.pos_used), want.pos_used) and np.array_equal(_host(got.neg_used), want.neg_used))


def _check(loss, profile, backend, X, labels, kwargs):
    want = _run(loss, profile, X, labels, kwargs)
    _assert_finite(want, "numpy float64")
    results = {}
    for dtype in (None, "float32"):
        if backend == "numpy" and dtype is None:
            results[dtype] = want
            continue
        results[dtype] = _run(loss, profile, X, labels, kwargs, backend=backend, dtype=dtype)
        _assert_finite(results[dtype], f"{backend} {dtype}")
    got = results["float32"]
    if isinstance(want, Exception) or isinstance(got, Exception):
        return
    if backend != "numpy":
        report = agreement(got, want, loss=loss, profile=gpwref.get_profile(profile), params=dict(got.hyper),
                           labels=labels, ref_labels=kwargs.get("ref_labels"), ref=kwargs.get("ref"),
                           embeddings=X, normalize=kwargs["normalize"])
        assert not report.failures(), (report.failures(), report.errors, report.limits)
    elif kwargs["normalize"]:
        _within_float32_bound(loss, profile, X, labels, kwargs, got)


@pytest.mark.parametrize("loss,profile", CASES)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numpy_never_silently_wrong(loss, profile, data):
    X, labels, kwargs = data.draw(extreme_inputs(KINDS[(loss, profile)]))
    _check(loss, profile, "numpy", X, labels, kwargs)


@pytest.mark.parametrize("loss,profile", KERNEL_CASES)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numba_never_silently_wrong(loss, profile, data):
    pytest.importorskip("numba")
    X, labels, kwargs = data.draw(extreme_inputs(KINDS[(loss, profile)]))
    _check(loss, profile, "numba", X, labels, kwargs)


@pytest.mark.parametrize("loss,profile", KERNEL_CASES)
@settings(max_examples=2 if SIMULATOR else EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cuda_never_silently_wrong(loss, profile, data):
    from gpwref.kernels.backends import cuda_unavailable_reason

    if cuda_unavailable_reason() is not None:
        pytest.skip("no CUDA device and no simulator")
    small = dict(max_m=4, max_d=3) if SIMULATOR else {}
    X, labels, kwargs = data.draw(extreme_inputs(KINDS[(loss, profile)], **small))
    _check(loss, profile, "cuda", X, labels, kwargs)


def test_m3g_refuses_costs_beyond_float64s_reach():
    """Found by the property above: rows of norm ~1e40 with normalize=False crashed m3g's Newton step
    inside NumPy's least squares (LinAlgError) on the drawn rows; on these (the draw printed to 9
    digits) it stopped with a misleading "raise max_iter". |cost| / eps ~ 1e81 leaves exp(f/eps -
    C/eps) no correct digit: the rule names the real cause."""
    X = np.array([[1.25730221e39, -1.32104863e39], [6.40422650e39, 1.04900117e39], [-5.35669373e39, 3.61595055e39],
                  [1.30400005e40, 9.47080963e39], [-7.03735236e39, -1.26542147e40], [-6.23274463e39, 4.13259793e38]])
    ref = np.array([[3.35858593e38, -1.40775896e39], [4.01049773e39, -3.57880629e38], [-6.23132234e39, 3.10765363e39],
                    [1.46502992e40, 1.35491221e40], [-7.52530392e39, -7.46675807e39], [-7.47654118e39, 1.07052154e39]])
    with pytest.raises(gpwref.GpwrefError, match=r"^embeddings: m3g's transport needs \|cost\| / eps"):
        gpwref.compute("m3g", X, np.arange(6), profile="paper", normalize=False, ref=ref, ref_labels=np.arange(6))
