"""snr_contrastive: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpwref
from gpwref.losses import snr_contrastive

from ._helpers import HAND_S_Y as HAND_Y, angles_to_rows as _rows


def _snr_direct(X, labels, *, profile="pml", normalize=True, ref=None, ref_labels=None, **hyper):
    """snr_contrastive's own hook (``embeddings_function(inputs, profile, params)``), called directly."""
    from gpwref.inputs import validate

    entry, prof = gpwref.get_entry("snr_contrastive"), gpwref.get_profile(profile)
    inputs = validate(entry, X, np.asarray(labels), ref, ref_labels, None, normalize, np.dtype(np.float64))
    return snr_contrastive.compute(inputs, prof, gpwref.catalog.resolve_hyper(entry, prof.name, hyper))


def test_snr_contrastive_hand_derived():
    # Raw rows (normalize=False) in D = 3: u0 = (1, 0, 0), u1 = (0, 1, 0), u2 = (1, 1, 1); labels [0, 0, 1].
    # var with D - 1: var(u0) = var(u1) = ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3; var(u2) = 0 -> refused.
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 1.0]])
    with pytest.raises(gpwref.GpwrefError, match="not all equal"):
        _snr_direct(X, [0, 0, 1], normalize=False)
    # u2 = (2, 0, 1) instead: var(u2) = ((1)^2 + (1)^2 + 0) / 2 = 1 (mean 1).
    # d01 = var(u1 - u0) / var(u0) = var(-1, 1, 0) / (1/3) = 1 / (1/3) = 3; d10 = 3.
    # d02 = var(1, 0, 1) / (1/3) = (1/3) / (1/3) = 1; d12 = var(2, -1, 1) / (1/3) = (7/3) / (1/3) = 7.
    # d20 = var(-1, 0, -1) / 1 = 1/3; d21 = var(-2, 1, -1) / 1 = 7/3.
    # pos terms (margin 0): d01 = d10 = 3 -> Z_P = 2, mean 3. neg terms [1 - d]_+: only d20 = 1/3 -> 2/3.
    # L = 3 + 2/3. G_01 = -(1/2) * 2 / ((D - 1) var(u0)) = -(1/2) * 2 / (2/3) = -3/2 = G_10;
    # G_20 = +1 * 2 / ((D - 1) var(u2)) = 2 / 2 = 1.
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [2.0, 0, 1.0]])
    r = _snr_direct(X, [0, 0, 1], normalize=False)
    assert r.loss == pytest.approx(3 + 2 / 3, rel=1e-14)
    want = np.zeros((3, 3))
    want[0, 1] = want[1, 0] = -1.5
    want[2, 0] = 1.0
    np.testing.assert_allclose(r.grad_sim, want, rtol=1e-13, atol=0)
    np.testing.assert_allclose(r.extras["snr_distance"], [[0, 3, 1], [3, 0, 7], [1 / 3, 7 / 3, 0]], rtol=1e-13, atol=1e-15)


def test_snr_contrastive_is_not_a_function_of_S():
    # Same S, different coordinate means -> different SNR distances: from_similarity refuses it, and
    # gpwref.compute runs it from the embeddings (the catalog entry's embeddings_function).
    X = _rows(0, 60, 180)
    with pytest.raises(gpwref.GpwrefError, match="not a function of S"):
        gpwref.from_similarity("snr_contrastive", X @ X.T, HAND_Y, profile="pml")
    rotation = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    X3 = np.hstack([X, np.zeros((3, 1))]) + np.array([0, 0, 0.1])
    Y3 = np.hstack([X @ rotation.T, np.zeros((3, 1))]) + np.array([0, 0, 0.1])
    a = _snr_direct(X3, HAND_Y, profile="pml", normalize=False)
    b = _snr_direct(Y3, HAND_Y, profile="pml", normalize=False)
    np.testing.assert_allclose(a.sim, b.sim, atol=1e-15)
    assert abs(a.loss - b.loss) > 1e-3


def test_snr_contrastive_through_gpwref_compute():
    # The public entry point gives the module's own result, argument for argument, and refuses what
    # the loss cannot do (a kernel backend, float32) with the argument named.
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [2.0, 0, 1.0], [0.5, 2.0, -1.0]])
    y = [0, 0, 1, 1]
    direct = _snr_direct(X, y, profile="pml", normalize=False, neg_margin=2.0)
    public = gpwref.compute("snr_contrastive", X, y, profile="pml", normalize=False, neg_margin=2.0)
    assert public.loss == direct.loss
    np.testing.assert_array_equal(public.grad_sim, direct.grad_sim)
    np.testing.assert_array_equal(public.grad_emb, direct.grad_emb)
    R, yr = X[:2] + 0.25, np.array([0, 1])
    direct = _snr_direct(X, y, profile="pml", ref=R, ref_labels=yr)
    public = gpwref.compute("snr_contrastive", X, y, profile="pml", ref=R, ref_labels=yr)
    np.testing.assert_array_equal(public.grad_ref, direct.grad_ref)
    with pytest.raises(gpwref.GpwrefError, match="backend"):
        gpwref.compute("snr_contrastive", X, y, profile="pml", backend="numba")
    with pytest.raises(gpwref.GpwrefError, match="dtype"):
        gpwref.compute("snr_contrastive", X, y, profile="pml", dtype="float32")
