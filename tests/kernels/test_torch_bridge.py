"""gpwref.torch: the kernel losses as autograd functions, checked against the float64 reference,
against torch autograd on the independent torch formulation (verification/refs), and by training."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import gpwref
from gpwref.torch import KernelLoss, MultiSimilarityLoss, loss
from gpwref_verification.common import rel_err
from gpwref_verification.torch_pairs import masks, similarity

LOSS = "multi_similarity"


def _clustered(m, d, k, sigma, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(m // k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(m // k), k)
    return centres[labels] + sigma * rng.normal(size=(m, d)) / np.sqrt(d), labels


def _autograd_reference(X, y, profile, R=None, yr=None, loss_name=LOSS, **hyper):
    """Value and gradients from torch autograd on verification/refs' independent formulation."""
    refs = importlib.import_module(f"gpwref_verification.refs.{loss_name}")
    params = gpwref.catalog.resolve_hyper(gpwref.get_entry(loss_name), profile, hyper)
    Xt = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    Rt = None if R is None else torch.tensor(R, dtype=torch.float64, requires_grad=True)
    S = similarity(Xt, Rt, True)
    pos, neg = masks(S, y, yr, R is None, profile, None)
    value = refs.torch_loss(S, pos, neg, profile, **params)
    value.backward()
    return value.item(), Xt.grad.numpy(), None if Rt is None else Rt.grad.numpy()


@pytest.mark.parametrize("name,profile,hyper", [(LOSS, "paper", {}), (LOSS, "pml", {"eps": 0.1}), (LOSS, "pml", {}),
                                               (LOSS, "official", {}), ("binomial_deviance", "paper", {}),
                                               ("contrastive", "paper", {}), ("contrastive", "pml", {}),
                                               ("lifted_structure", "paper", {"form": "song"}),
                                               ("lifted_structure", "paper", {"form": "generalized"}),
                                               ("lifted_structure", "pml", {"form": "song"}),
                                               ("lifted_structure", "pml", {"form": "generalized"})])
def test_float64_bridge_matches_autograd_and_reference(name, profile, hyper):
    X, y = _clustered(24, 6, 4, 2.0, seed=1)
    leaf = torch.tensor(X, requires_grad=True)
    value = loss(name, leaf, torch.tensor(y), profile=profile, **hyper)
    value.backward()
    want_value, want_grad, _ = _autograd_reference(X, y, profile, loss_name=name, **hyper)
    assert value.dtype == torch.float64
    assert rel_err(value.item(), want_value) <= 1e-12
    assert rel_err(leaf.grad.numpy(), want_grad) <= 1e-11
    reference = gpwref.compute(name, X, y, profile=profile, **hyper)
    assert rel_err(leaf.grad.numpy(), reference.grad_emb) <= 1e-12


def test_float32_bridge_within_1e5_of_reference():
    X, y = _clustered(128, 32, 4, 2.0, seed=2)
    leaf = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    value = MultiSimilarityLoss(profile="pml", eps=0.1)(leaf, torch.tensor(y))
    value.backward()
    want = gpwref.compute(LOSS, X, y, profile="pml", eps=0.1)
    assert value.dtype == torch.float32 and leaf.grad.dtype == torch.float32
    assert abs(value.item() - want.loss) <= 1e-5 * abs(want.loss)
    assert rel_err(leaf.grad.numpy(), want.grad_emb) <= 1e-5


def test_memory_bank_gradients_to_both():
    X, y = _clustered(12, 5, 3, 2.0, seed=3)
    R, yr = _clustered(18, 5, 3, 2.0, seed=4)
    leaf = torch.tensor(X, requires_grad=True)
    bank = torch.tensor(R, requires_grad=True)
    value = loss(LOSS, leaf, torch.tensor(y), ref=bank, ref_labels=torch.tensor(yr), profile="pml", eps=0.1)
    value.backward()
    want_value, want_grad, want_ref = _autograd_reference(X, y, "pml", R, yr, eps=0.1)
    assert rel_err(value.item(), want_value) <= 1e-12
    assert rel_err(leaf.grad.numpy(), want_grad) <= 1e-11
    assert rel_err(bank.grad.numpy(), want_ref) <= 1e-11
    frozen = torch.tensor(R)  # a bank without requires_grad gets no gradient and costs nothing extra
    leaf.grad = None
    loss(LOSS, leaf, torch.tensor(y), ref=frozen, ref_labels=torch.tensor(yr), profile="pml", eps=0.1).backward()
    assert frozen.grad is None and rel_err(leaf.grad.numpy(), want_grad) <= 1e-11


def test_gradcheck_float64():
    """Finite differences of the bridge's own forward against its backward (no mining kink nearby:
    eps=None, so the only selection is the fixed label structure)."""
    X, y = _clustered(10, 4, 2, 2.0, seed=5)
    leaf = torch.tensor(X, requires_grad=True)
    labels = torch.tensor(y)
    assert torch.autograd.gradcheck(lambda x: loss(LOSS, x, labels, eps=None), (leaf,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_incoming_gradient_scales_the_result():
    X, y = _clustered(12, 4, 3, 2.0, seed=6)
    grads = []
    for factor in (1.0, -2.5):
        leaf = torch.tensor(X, requires_grad=True)
        (factor * loss(LOSS, leaf, torch.tensor(y))).backward()
        grads.append(leaf.grad.numpy())
    assert np.allclose(grads[1], -2.5 * grads[0], rtol=1e-14, atol=0)


def test_trains_a_network():
    """A linear embedding trained with the MS loss separates clusters it did not separate before."""
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    classes, per_class, d_in = 8, 6, 16
    centres = rng.normal(size=(classes, d_in))
    y = np.repeat(np.arange(classes), per_class)
    inputs = torch.tensor(centres[y] + 0.6 * rng.normal(size=(len(y), d_in)), dtype=torch.float32)
    labels = torch.tensor(y)
    model = torch.nn.Linear(d_in, 8)
    criterion = MultiSimilarityLoss(profile="pml", eps=0.1)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        value = criterion(model(inputs), labels)
        value.backward()
        optimiser.step()
        losses.append(value.item())
    assert losses[-1] < 0.3 * losses[0]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(inputs), dim=1)
        sim = emb @ emb.T
        sim.fill_diagonal_(-2.0)
        nearest = sim.argmax(dim=1)
    assert (labels[nearest] == labels).float().mean().item() == 1.0


def test_bad_inputs_are_refused():
    X = torch.randn(6, 3)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(gpwref.GpwrefError, match="float32 or float64"):
        loss(LOSS, X.half(), y)
    with pytest.raises(gpwref.GpwrefError, match="backend='cuda' needs CUDA tensors"):
        loss(LOSS, X, y, backend="cuda")
    with pytest.raises(gpwref.GpwrefError, match="alpha"):
        MultiSimilarityLoss(alpha=-1.0)
    with pytest.raises(gpwref.GpwrefError, match="loss"):
        KernelLoss("no_such_loss")


def test_lifted_module_trains_and_refuses_a_reference_set():
    """LiftedStructureLoss (batch only): float32 forward + backward within 1e-5 of the float64
    reference, and a memory bank is refused as the reference refuses it."""
    from gpwref.torch import LiftedStructureLoss

    X, y = _clustered(64, 16, 4, 2.0, seed=8)
    for form in ("song", "generalized"):
        leaf = torch.tensor(X, dtype=torch.float32, requires_grad=True)
        value = LiftedStructureLoss(form=form)(leaf, torch.tensor(y))
        value.backward()
        want = gpwref.compute("lifted_structure", X, y, form=form)
        assert abs(value.item() - want.loss) <= 1e-5 * abs(want.loss)
        assert rel_err(leaf.grad.numpy(), want.grad_emb) <= 1e-5
    with pytest.raises(gpwref.GpwrefError, match="defined on the batch only"):
        LiftedStructureLoss()(torch.tensor(X), torch.tensor(y), ref=torch.tensor(X), ref_labels=torch.tensor(y))
