"""The reasons docs/catalog.md gives for PML loss classes without an entry, checked on PML itself."""

from __future__ import annotations

import pytest
import torch

from gpwref_verification.docs_table import PML_WITHOUT_ENTRY

from ._helpers import _pml


def _batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, dtype=torch.float64, generator=generator, requires_grad=True), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_the_listed_classes_exist_in_pml():
    from pytorch_metric_learning import losses

    for name, reason in PML_WITHOUT_ENTRY:
        assert hasattr(losses, name) and reason


def test_dynamic_soft_margin_keeps_state_across_batches():
    # The second batch's value depends on the first (a fresh object gives another value), and the
    # histogram carries the first batch's graph, so the second backward fails.
    (X1, y), (X2, _) = _batch(0), _batch(1)
    loss = _pml("DynamicSoftMarginLoss")
    loss(X1, y).backward()
    second = loss(X2, y)
    fresh = _pml("DynamicSoftMarginLoss")(X2, y)
    assert abs(second.item() - fresh.item()) > 1e-6
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        second.backward()


def test_instance_loss_depends_on_the_order_of_the_batch():
    # Swapping samples 0 and 1 (same label) permutes S consistently; a loss of labelled pairs would not change.
    X, y = _batch(0)
    order = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])
    loss = _pml("InstanceLoss")
    assert abs(loss(X, y).item() - loss(X[order], y[order]).item()) > 1e-3


def test_manifold_loss_refuses_labels():
    X, y = _batch(0)
    with pytest.raises(ValueError, match="labels are ref_labels are not supported"):
        _pml("ManifoldLoss", l=4, K=3)(X, y)


def test_vicreg_is_not_a_function_of_the_similarities():
    # catproxy: rotating both views by one orthogonal Q keeps every inner product (S within and across
    # the views) and the invariance term, but changes the per-coordinate variance/covariance terms.
    generator = torch.Generator().manual_seed(0)
    X, X2 = (torch.randn(8, 4, dtype=torch.float64, generator=generator) for _ in range(2))
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=generator))
    loss = _pml("VICRegLoss")
    assert torch.allclose((X @ Q) @ (X2 @ Q).T, X @ X2.T)
    assert abs(loss(X, ref_emb=X2).item() - loss(X @ Q, ref_emb=X2 @ Q).item()) > 1e-3
    with pytest.raises(ValueError, match="labels"):
        loss(X, torch.arange(8), ref_emb=X2)


# Classes of pytorch_metric_learning.losses named "...Loss" that are not losses of their own: a base
# class that subclasses fill in, and a wrapper that turns another loss into a two-view loss.
PML_NOT_A_LOSS = {"GenericPairLoss": "base class", "SelfSupervisedLoss": "wrapper around another loss"}


def test_every_pml_loss_class_has_a_counterpart_or_a_stated_reason():
    import inspect
    import re

    import gpwref
    from pytorch_metric_learning import losses

    classes = {name for name, value in vars(losses).items() if inspect.isclass(value) and name.endswith("Loss")}
    # a counterpart names a class, possibly with the arguments it is verified with: "Name(arg=...)"
    counterparts = {re.match(r"\w+", part.strip()).group(0) for entry in gpwref.CATALOG
                    for part in entry.counterparts.get("pytorch-metric-learning", "").split("+") if part.strip()}
    without_entry = {name for name, _ in PML_WITHOUT_ENTRY}
    assert not counterparts & without_entry
    assert classes - counterparts - without_entry - set(PML_NOT_A_LOSS) == set()
    assert counterparts <= classes
