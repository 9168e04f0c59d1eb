"""GlobalBatchLoss without a process group (the plain loss), its refusals, and the oracle on a
candidate whose gather crashes a rank (pytorch-metric-learning's wrapper on uneven local batches)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpwref  # noqa: E402
from gpwref.testing import DistributedMismatch, assert_distributed_loss_matches  # noqa: E402
from gpwref.torch import GlobalBatchLoss  # noqa: E402

from . import clients  # noqa: E402


@pytest.mark.parametrize("loss,backend", [("multi_similarity", None), ("multi_similarity", "numpy"), ("supcon", None), ("snr_contrastive", None)])
def test_without_a_process_group_it_is_the_plain_loss(loss, backend):
    rng = np.random.default_rng(3)
    X = torch.from_numpy(rng.standard_normal((9, 4))).requires_grad_()
    y = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])
    profile = next(iter(gpwref.get_entry(loss).defaults))
    value = GlobalBatchLoss(loss, profile=profile, backend=backend)(X, torch.from_numpy(y))
    value.backward()
    want = gpwref.compute(loss, X.detach().numpy(), y, profile=profile)
    assert float(value.detach()) == pytest.approx(want.loss, rel=1e-12)
    np.testing.assert_allclose(X.grad.numpy(), want.grad_emb, rtol=1e-10, atol=1e-14)


def test_proxies_get_their_gradient_without_a_world_factor():
    rng = np.random.default_rng(4)
    X = torch.from_numpy(rng.standard_normal((6, 3))).requires_grad_()
    P = torch.from_numpy(rng.standard_normal((3, 3))).requires_grad_()
    y, yp = np.array([0, 0, 1, 1, 2, 2]), np.arange(3)
    GlobalBatchLoss("proxy_anchor")(X, y, ref=P, ref_labels=yp).backward()
    want = gpwref.compute("proxy_anchor", X.detach().numpy(), y, ref=P.detach().numpy(), ref_labels=yp)
    np.testing.assert_allclose(P.grad.numpy(), want.grad_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(loss="supcon", backend="numba"), "backend"),
    (dict(loss="multi_similarity", backend="tpu"), "backend"),
    (dict(loss="multi_similarity", grad_reduction="max"), "grad_reduction"),
    (dict(loss="m3g", ref_sharding="split"), "ref_sharding"),
    (dict(loss="multi_similarity", alpha=-1.0), "alpha"),
    (dict(loss="binomial_deviance", profile="pml"), "profile"),
])
def test_bad_settings_are_refused_when_built(kwargs, argument):
    with pytest.raises(gpwref.GpwrefError) as error:
        GlobalBatchLoss(**kwargs)
    assert error.value.argument == argument


def test_bad_calls_are_refused():
    loss_fn = GlobalBatchLoss("multi_similarity")
    with pytest.raises(gpwref.GpwrefError, match="embeddings"):
        loss_fn(np.ones((4, 2)), [0, 0, 1, 1])
    with pytest.raises(gpwref.GpwrefError, match="ref_labels"):
        loss_fn(torch.ones(4, 2, dtype=torch.float64), [0, 0, 1, 1], ref=torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(gpwref.GpwrefError, match="labels"):
        loss_fn(torch.ones(4, 2, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_a_rank_that_dies_in_a_collective_is_reported_not_waited_for():
    """PML's gather needs equal local sizes: on uneven ones a gloo rank aborts ("Received data size
    doesn't match expected size"); the oracle names the dead rank instead of hanging."""
    with pytest.raises(DistributedMismatch, match="died") as error:
        assert_distributed_loss_matches(functools.partial(clients.pml_wrapper, "multi_similarity", False), "multi_similarity",
                                        profile="pml", world_sizes=(2,), timeout=60)
    assert not error.value.reports[0].ok


def test_an_unpicklable_make_loss_is_refused_with_the_remedy():
    with pytest.raises(gpwref.GpwrefError, match="make_loss: must be picklable") as error:
        assert_distributed_loss_matches(lambda: GlobalBatchLoss("multi_similarity"), "multi_similarity", world_sizes=(2,))
    assert "functools.partial" in str(error.value)
