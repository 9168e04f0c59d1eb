"""The loss bridge: gpwref's value and gradient inside torch autograd, and the training cross-check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpwref
from gpwref_verification.repro.loss_bridge import BRIDGE_NOTE, BRIDGE_PATH, GpwrefLoss, crosscheck, path_for

OFFICIAL_MS = {"alpha": 2.0, "beta": 40.0, "lam": 0.5, "eps": 0.1}


def batch(seed, classes=4, per_class=5, d=16):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    raw = rng.normal(size=(classes * per_class, d)) + 2.0 * rng.normal(size=(classes, d))[labels]
    return raw, labels


def test_reference_path_is_gpwref_with_the_normalisation_in_torch():
    raw, labels = batch(0)
    criterion = GpwrefLoss("multi_similarity", "official", path="reference", **OFFICIAL_MS)
    head_output = torch.tensor(raw, dtype=torch.float64, requires_grad=True)
    loss = criterion(F.normalize(head_output, dim=1), torch.as_tensor(labels))
    loss.backward()
    # gpwref's own gradient through the normalisation (normalize=True on the raw rows) is the
    # independent side: torch differentiated F.normalize, gpwref applied (I - x x^T)/r itself.
    want = gpwref.compute("multi_similarity", raw, labels, profile="official", normalize=True, **OFFICIAL_MS)
    assert loss.item() == pytest.approx(want.loss, rel=1e-12)
    np.testing.assert_allclose(head_output.grad.numpy(), want.grad_emb, rtol=1e-9, atol=1e-12)
    assert criterion.last_result.pos_used.sum() == want.pos_used.sum()


def test_reference_path_passes_gradcheck_and_keeps_dtype():
    raw, labels = batch(1, classes=3, per_class=3, d=6)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    criterion = GpwrefLoss("multi_similarity", "paper", path="reference", eps=None)  # no mining: smooth
    X = torch.tensor(unit, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: criterion(t, labels), (X,), eps=1e-6, atol=1e-7)
    X32 = torch.tensor(unit, dtype=torch.float32, requires_grad=True)
    value = criterion(X32, labels)
    value.backward()
    assert value.dtype == torch.float32 and X32.grad.dtype == torch.float32


def test_hyper_parameters_are_checked_when_built():
    with pytest.raises(gpwref.GpwrefError, match="beta"):
        GpwrefLoss("multi_similarity", "official", beta=-1.0)
    with pytest.raises(gpwref.GpwrefError, match="loss"):
        GpwrefLoss("no_such_loss")
    with pytest.raises(gpwref.GpwrefError, match="path"):
        GpwrefLoss("multi_similarity", path="elsewhere")
    assert BRIDGE_PATH in ("reference", "gpwref.torch") and BRIDGE_NOTE


def test_crosscheck_agrees_on_a_training_like_batch():
    raw, labels = batch(2, classes=16, per_class=5, d=32)
    criterion = GpwrefLoss("multi_similarity", "official", path="reference", **OFFICIAL_MS)
    X = torch.tensor(raw / np.linalg.norm(raw, axis=1, keepdims=True), dtype=torch.float32, requires_grad=True)
    loss = criterion(X, labels)
    loss.backward()
    report = crosscheck(criterion, X.detach(), labels, loss.item(), X.grad.double().numpy())
    assert report["value_rel_err"] < 1e-6 and report["grad_rel_err"] < 1e-6
    assert report["pairs_differing"] == 0
    assert report["independent_failures"] == []
    # the official code's rules (transcribed) took part in the independent checks
    assert any(name.startswith("real:") for name in report["independent_errors"])


def test_crosscheck_catches_a_wrong_gradient():
    raw, labels = batch(3)
    criterion = GpwrefLoss("multi_similarity", "official", path="reference", **OFFICIAL_MS)
    X = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    right = gpwref.compute("multi_similarity", X, labels, profile="official", normalize=False, **OFFICIAL_MS)
    report = crosscheck(criterion, torch.from_numpy(X), labels, right.loss, 1.01 * right.grad_emb, independent=False)
    assert report["grad_rel_err"] > 1e-3


@pytest.mark.skipif(path_for("multi_similarity") != "gpwref.torch", reason="gpwref.torch (kernel bridge) not available")
def test_kernel_path_matches_float64_pairs_and_weights():
    raw, labels = batch(4, classes=16, per_class=5, d=32)
    criterion = GpwrefLoss("multi_similarity", "official", **OFFICIAL_MS)
    assert criterion.path == "gpwref.torch"
    X = torch.tensor(raw / np.linalg.norm(raw, axis=1, keepdims=True), dtype=torch.float32, requires_grad=True)
    loss = criterion(X, torch.as_tensor(labels))
    loss.backward()
    report = crosscheck(criterion, X.detach(), labels, loss.item(), X.grad.double().numpy(), independent=False)
    # float32 kernels against float64: relative 1e-5 on values and weights (docs/tolerances.md#float32-kernels)
    assert report["value_rel_err"] < 1e-5 and report["grad_rel_err"] < 1e-5 and report["weights_rel_err"] < 1e-5
    assert report["pairs_differing"] == 0
