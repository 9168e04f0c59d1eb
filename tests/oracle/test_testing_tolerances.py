"""gpwref.testing.tolerances: one table per dtype, scaled as documented, and neither vacuous nor flaky."""

from __future__ import annotations

import numpy as np
import pytest

import gpwref
from gpwref.testing import TOLERANCES, tolerance_for
from gpwref.testing.candidates import UNIT_ROUNDOFF, dtype_name
from gpwref.testing.tolerances import REFERENCE_SCALE, exponent_scale


def test_one_entry_per_dtype_ordered_by_precision():
    assert list(TOLERANCES) == ["float64", "float32", "float16", "bfloat16"]
    for fine, coarse in zip(list(TOLERANCES)[:-1], list(TOLERANCES)[1:]):
        assert UNIT_ROUNDOFF[fine] < UNIT_ROUNDOFF[coarse]
        for field in ("value_rtol", "value_atol", "grad_rtol", "grad_atol"):
            assert getattr(TOLERANCES[fine], field) <= getattr(TOLERANCES[coarse], field)
    for name, tol in TOLERANCES.items():
        # never tighter than the dtype can deliver: at least 10 unit round-offs (float64: far more)
        assert tol.value_rtol >= 10 * UNIT_ROUNDOFF[name] and tol.grad_rtol >= 10 * UNIT_ROUNDOFF[name]


def test_unit_roundoffs_are_the_dtypes_own():
    torch = pytest.importorskip("torch")
    for name in ("float64", "float32", "float16", "bfloat16"):
        assert UNIT_ROUNDOFF[name] == torch.finfo(getattr(torch, name)).eps / 2


def test_scale_multiplies_the_gradient_tolerance_above_the_reference_scale():
    base = tolerance_for("float32")
    assert tolerance_for("float32", scale=REFERENCE_SCALE) == base
    assert tolerance_for("float32", scale=10.0) == base  # never tighter below the reference scale
    scaled = tolerance_for("float32", scale=4 * REFERENCE_SCALE)
    assert scaled.grad_rtol == pytest.approx(4 * base.grad_rtol) and scaled.value_rtol == base.value_rtol


def test_finite_differences_widen_the_gradient_tolerance_as_stated():
    u = UNIT_ROUNDOFF["float64"]
    fd = tolerance_for("float64", scale=50.0, finite_differences=True)
    assert fd.grad_rtol == pytest.approx(10 * u ** (2 / 3) * 50.0**2)
    assert 1e-7 < fd.grad_rtol < 1e-6  # the harness's finite-difference tolerance, 1e-6
    assert tolerance_for("float32", scale=50.0, finite_differences=True).grad_rtol > 0.1


def test_overrides_replace_both_checks():
    tol = tolerance_for("float16", rtol=1e-3, atol=0.0)
    assert (tol.value_rtol, tol.grad_rtol, tol.value_atol, tol.grad_atol) == (1e-3, 1e-3, 0.0, 0.0)


@pytest.mark.parametrize("kwargs,argument", [({"dtype": "float8"}, "dtype"), ({"rtol": -1.0}, "rtol"), ({"atol": float("inf")}, "atol"),
                                             ({"scale": float("nan")}, "scale"), ({"rtol": True}, "rtol")])
def test_bad_arguments(kwargs, argument):
    with pytest.raises(gpwref.GpwrefError) as info:
        tolerance_for(**kwargs)
    assert info.value.argument == argument


def test_ratio_semantics():
    tol = tolerance_for("float64")
    assert tol.value_ratio(1.0 + 5e-10, 1.0) == pytest.approx(5e-10 / (1e-12 + 1e-9))
    assert tol.grad_ratio(np.array([1.0, 0.0]), np.array([1.0, 1e-10])) < 1  # normwise: small entries ride on the large
    assert tol.grad_ratio(np.array([np.nan]), np.array([1.0])) == float("inf")
    assert tol.grad_ratio(np.zeros(2), np.zeros(3)) == float("inf")


def test_exponent_scale_is_the_largest_numeric_hyper_parameter():
    assert exponent_scale({"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": None}) == 50.0
    assert exponent_scale({"distance": "cosine", "neg_margin": 0.5, "flag": True}) == 1.0
    assert exponent_scale(gpwref.get_entry("multi_similarity").defaults["official"]) == 40.0


def test_dtype_names():
    torch = pytest.importorskip("torch")
    assert dtype_name(torch.float32) == "float32" and dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name(np.float16) == "float16" and dtype_name("double") == "float64"
    assert dtype_name(np.dtype("float64")) == "float64"


def test_the_float32_default_is_neither_vacuous_nor_flaky():
    # PML in float32 passes at the default, and fails when the allowance is 1000x smaller: the
    # default sits within three orders of magnitude of what float32 arithmetic really does here.
    # (At 100x smaller the outcome depended on float32 summation order, e.g. torch's thread count
    # set by earlier tests, so that bound was flaky.)
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    from gpwref.testing import LossMismatch, assert_loss_matches

    def candidate(X, y):
        return MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(X, y)

    knobs = {"m": (6, 12), "singletons": False, "one_class": False, "ties": False, "duplicates": False, "on_boundary": False}
    assert_loss_matches(candidate, "multi_similarity", profile="pml", dtype="float32", batches=knobs, examples=20)
    base = TOLERANCES["float32"]
    with pytest.raises(LossMismatch):
        assert_loss_matches(candidate, "multi_similarity", profile="pml", dtype="float32", batches=knobs, examples=20,
                            rtol=base.grad_rtol / 1000, atol=base.grad_atol / 1000)
    assert torch.get_default_dtype() == torch.float32  # nothing here changed torch's global state
