"""Default tolerances of the oracle, per dtype, with the reasoning beside each number.

A candidate passes a check when

    value:     |got - want|          <= atol + rtol * |want|
    gradient:  max_k |got_k - want_k| <= atol + rtol * max_k |want_k|      (normwise)

where ``want`` is gpwref's float64 reference evaluated on the very numbers the candidate received
(its inputs rounded to its dtype), so input rounding is never counted as error; what remains is the
candidate's own arithmetic. Gradients are compared normwise because entries of a gradient that cancel
to ~0 carry the absolute error of the large ones. Which dtype applies: the least precise of the
input dtype, the returned value's dtype and the gradient's dtype (a float64 input to a loss that
computes in float32 is judged as float32).

Where the error comes from, with u the unit round-off of the dtype:

* S = U V^T costs about d u per entry in the worst case (sqrt(d) u typically); each log-sum-exp a
  few u; the value's error is sum_ij |G_ij| |dS_ij| plus that, and sum_ij |G_ij| = O(1), so the
  value's error is O(u) *absolute* at unit scale: hence an ``atol`` of the same size as ``rtol``
  (a loss that is ~0 has no relative precision, and log(1 + x) evaluated as logsumexp([.., 0])
  has absolute error u).
* G is a softmax with an exponent scale s (MS beta, circle gamma, 1/Delta of histogram bins, ...):
  an error dS in S moves G by a relative s dS. So gradient tolerances grow with the scale; the
  table is for s <= 50 (the MS paper's beta) and ``tolerance_for(..., scale=s)`` multiplies the
  gradient ``rtol`` by s / 50 above that.
* float64 is not limited by round-off (measured <= 5e-15, see below) but by formulations other code
  legitimately uses: distances as cdist instead of sqrt(2 - 2S) (ill-conditioned near d = 0),
  log(1 + x) instead of log1p, summation orders. 1e-9 is the verification harness's tolerance for
  real implementations; a formula error (a wrong constant, sign, reduction or mask) is O(1e-3) or
  more.

Measured (``python docs/examples/measure_tolerances.py``: pytorch-metric-learning's
MultiSimilarityLoss, alone and with MultiSimilarityMiner(0.1), in each dtype on 150 drawn batches,
m <= 12, d <= 6, beta 50 and 200, plus 30 batches with m <= 48, d <= 256 in float64/float32, against
the float64 reference on the rounded inputs; relative errors over losses and gradients >= 1e-6):

    dtype     u          value rel / abs      gradient (normwise)   worst error / default allowance
    float64   1.1e-16    4.6e-16 / 6.7e-16    4.4e-15               0.00
    float32   6.0e-08    2.1e-07 / 3.5e-07    2.6e-06 (beta 200)    0.06
    float16   4.9e-04    9.3e-04 / 9.9e-04    1.3e-02               0.22
    bfloat16  3.9e-03    1.8e-02 / 1.2e-02    6.9e-02               0.13

The defaults below leave a margin of 4 to 20 over those worst cases. bfloat16 has 8 significant
bits: with an exponent scale of 50 its weights are only good to ~10%, so in bfloat16 the oracle
catches gross errors only (a sign, a missing term, a reduction off by a factor 2).

Finite differences (NumPy/JAX candidates without ``candidate_grad``) use the step h = u^(1/3)
max(1, |x|), where truncation h^2 |f'''| / 6 and round-off u |f| / h balance; their relative error
is about u^(2/3) s^2 (f''' grows with the square of the exponent scale), so the gradient tolerance
becomes max(rtol, 10 u^(2/3) max(1, s)^2): 6e-7 in float64 at s = 50 (the harness's 1e-6), but 0.4
in float32 -- give a float32 candidate its gradient (``candidate_grad=jax.grad(f)``) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from ..errors import GpwrefError
from .candidates import UNIT_ROUNDOFF, dtype_name

REFERENCE_SCALE = 50.0  # the exponent scale the table is stated for (MS paper's beta)


@dataclass(frozen=True)
class Tolerance:
    """rtol/atol for the value and for the gradients of a candidate in one dtype."""

    dtype: str
    value_rtol: float
    value_atol: float
    grad_rtol: float
    grad_atol: float

    def value_ok(self, got: float, want: float) -> bool:
        return abs(got - want) <= self.value_atol + self.value_rtol * abs(want)

    def value_ratio(self, got: float, want: float) -> float:
        """|got - want| over the allowed error: <= 1 passes."""
        return abs(got - want) / (self.value_atol + self.value_rtol * abs(want))

    def grad_ratio(self, got, want) -> float:
        import numpy as np

        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape or not np.all(np.isfinite(got)):
            return float("inf")
        if got.size == 0:
            return 0.0
        return float(np.max(np.abs(got - want)) / (self.grad_atol + self.grad_rtol * np.max(np.abs(want))))


TOLERANCES: Mapping[str, Tolerance] = {
    # not round-off but other formulations (see the module docstring); measured <= 7e-15
    "float64": Tolerance("float64", value_rtol=1e-9, value_atol=1e-12, grad_rtol=1e-9, grad_atol=1e-12),
    # value: 33u, 6x the measured 3.5e-7; gradient: 830u, 19x the measured 2.6e-6
    "float32": Tolerance("float32", value_rtol=2e-6, value_atol=2e-6, grad_rtol=5e-5, grad_atol=1e-6),
    # value: 20u, 10x the measured 9.9e-4; gradient: 4x the measured 1.3e-2
    "float16": Tolerance("float16", value_rtol=1e-2, value_atol=1e-2, grad_rtol=5e-2, grad_atol=1e-3),
    # value: 26u, 5.5x the measured 1.8e-2; gradient: 7x the measured 6.9e-2 (gross errors only)
    "bfloat16": Tolerance("bfloat16", value_rtol=1e-1, value_atol=1e-1, grad_rtol=5e-1, grad_atol=1e-2),
}


def tolerance_for(dtype="float64", *, scale: float = 1.0, finite_differences: bool = False,
                  rtol: float | None = None, atol: float | None = None) -> Tolerance:
    """The default tolerance for ``dtype`` at exponent scale ``scale``; ``rtol``/``atol`` override both checks."""
    name = dtype_name(dtype)
    for arg, value in (("scale", scale), ("rtol", rtol), ("atol", atol)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf")):
            raise GpwrefError(arg, "must be a finite number >= 0" + (" or None" if arg != "scale" else ""), repr(value))
    tol = TOLERANCES[name]
    factor = max(1.0, float(scale) / REFERENCE_SCALE)
    tol = replace(tol, grad_rtol=tol.grad_rtol * factor)
    if finite_differences:
        u = UNIT_ROUNDOFF[name]
        tol = replace(tol, grad_rtol=max(tol.grad_rtol, 10.0 * u ** (2.0 / 3.0) * max(1.0, float(scale)) ** 2))
    if rtol is not None:
        tol = replace(tol, value_rtol=float(rtol), grad_rtol=float(rtol))
    if atol is not None:
        tol = replace(tol, value_atol=float(atol), grad_atol=float(atol))
    return tol


def exponent_scale(hyper: Mapping[str, object]) -> float:
    """A conservative proxy for how much an error in S is amplified in G: the largest numeric hyper-parameter.

    It is the exponent scale for exponential losses (MS alpha/beta, circle gamma, proxy-anchor
    alpha), and n_bins ~ 2/Delta for the histogram loss; losses whose hyper-parameters are margins
    below 1 get 1. Pass ``rtol`` explicitly where this guess is wrong for a loss.
    """
    numbers = [abs(float(v)) for v in hyper.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max([1.0, *numbers])
