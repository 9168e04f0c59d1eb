"""GlobalBatchLoss under DDP equals single-process training (every catalog loss, world sizes 2 and 3,
uneven splits), and the oracle names the cause on real and hand-written distributed losses.

One spawn of W gloo processes on 127.0.0.1 per world size runs every case (process start with torch
costs seconds); the reports are shared by the tests below. The reference is gpwref's float64 NumPy
loss on the concatenated batch, with the probe model's parameter gradients derived by hand
(``gpwref/testing/distributed.py``: X = Z W^T + b at W = I, b = 0, so dW = G^T Z, db = sum of G's rows).
"""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("torch")
import torch.distributed  # noqa: E402

import gpwref  # noqa: E402
import numpy as np  # noqa: E402
from gpwref.testing import DistributedCase, DistributedMismatch, assert_distributed_loss_matches, check_distributed_losses  # noqa: E402
from gpwref.torch import GlobalBatchLoss  # noqa: E402

from . import clients  # noqa: E402

if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is unavailable", allow_module_level=True)



def _needs_a_second_view(entry) -> bool:
    """A loss (not sample-to-proxy) that refuses a batch without ``ref``: two views, the second as ref
    (m3g, ...). Its reference set is each rank's own second view: GlobalBatchLoss gathers it with
    ``ref_sharding="sharded"`` (TWO_VIEWS) and refuses it by default (PerRankRef)."""
    if entry.family == "proxy":
        return False
    X, y = np.random.default_rng(0).standard_normal((8, 4)), np.repeat(np.arange(4), 2)
    try:
        gpwref.compute(entry.name, X, y, profile=next(iter(entry.defaults)))
    except gpwref.GpwrefError as error:
        return error.argument == "ref"
    return False


SECOND_VIEW = [entry.name for entry in gpwref.CATALOG if _needs_a_second_view(entry)]
CATALOG_LOSSES = [entry for entry in gpwref.CATALOG if entry.name not in SECOND_VIEW]


def _catalog_case(entry) -> DistributedCase:
    profile = next(iter(entry.defaults))
    proxies = (2 if entry.name == "soft_triple" else 1) if entry.family == "proxy" else None
    return DistributedCase(functools.partial(GlobalBatchLoss, entry.name, profile=profile), entry.name, profile,
                           label=f"GlobalBatchLoss {entry.name}", proxies=proxies)


# the two-view losses with each rank's second view gathered like its batch
TWO_VIEWS = [
    DistributedCase(functools.partial(GlobalBatchLoss, name, ref_sharding="sharded"), name, label=f"GlobalBatchLoss {name} sharded views", views=True)
    for name in SECOND_VIEW
]

# the kernel losses also on the float64 NumPy reference (the catalog cases above run their Numba kernels)
REFERENCE_BACKEND = [
    DistributedCase(functools.partial(GlobalBatchLoss, name, backend="numpy"), name, label=f"GlobalBatchLoss {name} numpy")
    for name in ("multi_similarity", "contrastive")
]

CLIENTS = [
    DistributedCase(functools.partial(clients.pml_wrapper, "multi_similarity", False), "multi_similarity", "pml", label="pml MS efficient=False", splits="even"),
    DistributedCase(functools.partial(clients.pml_wrapper, "multi_similarity", True), "multi_similarity", "pml", label="pml MS efficient=True", splits="even"),
    DistributedCase(functools.partial(clients.pml_wrapper, "contrastive", False), "contrastive", "pml", label="pml contrastive efficient=False", splits="even"),
    DistributedCase(functools.partial(clients.pml_wrapper, "contrastive", True), "contrastive", "pml", label="pml contrastive efficient=True", splits="even"),
    DistributedCase(functools.partial(clients.NoGradGather, "multi_similarity"), "multi_similarity", label="no-grad gather"),
    DistributedCase(functools.partial(clients.KeepLocalGather, "multi_similarity"), "multi_similarity", label="keep-local gather"),
    DistributedCase(functools.partial(clients.OpenClipGather, "multi_similarity"), "multi_similarity", label="open_clip gather"),
    DistributedCase(functools.partial(clients.OpenClipGather, "multi_similarity", times_world=True), "multi_similarity", label="open_clip gather x W"),
    DistributedCase(functools.partial(clients.CountedTwice, "multi_similarity"), "multi_similarity", label="counted twice"),
    DistributedCase(functools.partial(clients.RankFirstOrder, "multi_similarity"), "multi_similarity", label="rank-first order"),
    DistributedCase(functools.partial(GlobalBatchLoss, "multi_similarity", grad_reduction="sum"), "multi_similarity", label="GlobalBatchLoss sum"),
    *(DistributedCase(functools.partial(clients.PerRankRef, name), name, label=f"per-rank ref {name}") for name in SECOND_VIEW),
]


@functools.lru_cache(maxsize=None)
def _reports(world: int) -> dict:
    cases = [_catalog_case(entry) for entry in CATALOG_LOSSES] + TWO_VIEWS + REFERENCE_BACKEND + CLIENTS
    by_case: dict = {}
    for report in check_distributed_losses(cases, world, timeout=180):
        by_case.setdefault(report.case, []).append(report)
    return by_case


@pytest.fixture(scope="module", params=[2, 3], ids=["W2", "W3"])
def reports(request):
    return request.param, _reports(request.param)


def test_global_batch_loss_equals_single_process_for_every_catalog_loss(reports):
    world, by_case = reports
    names = [f"GlobalBatchLoss {entry.name}" for entry in CATALOG_LOSSES] + [case.label for case in TWO_VIEWS + REFERENCE_BACKEND]
    failed = [r.describe() for name in names for r in by_case[name] if not r.ok]
    assert not failed, "\n".join(failed)
    splits = {r.split for entry in CATALOG_LOSSES for r in by_case[f"GlobalBatchLoss {entry.name}"]}
    assert splits == {"classes spread over ranks, uneven sizes", "rank 0 holds one class", "a rank with a single row"}
    assert all(1 in r.sizes and len(set(r.sizes)) > 1 for r in by_case["GlobalBatchLoss multi_similarity"] if "single" in r.split)


def _causes(reports) -> str:
    return "\n".join(c for r in reports for c in r.causes)


def test_pml_efficient_false_gradients_right_value_times_world(reports):
    world, by_case = reports
    for name in ("pml MS efficient=False", "pml contrastive efficient=False"):
        got = by_case[name]
        assert all(r.grad_ok for r in got), "\n".join(r.describe() for r in got)
        assert not any(r.value_ok for r in got)
        assert all(f"value factor W: every rank returns W x the global loss (W = {world})" in "\n".join(r.causes) for r in got)


def test_pml_efficient_true_differentiates_only_own_anchors(reports):
    """Gradients differ wherever a rank holds several rows; with one row per rank (one pair per two
    ranks) every pair's two sides are on different ranks, and they happen to add up."""
    world, by_case = reports
    for name in ("pml MS efficient=True", "pml contrastive efficient=True"):
        several = [r for r in by_case[name] if max(r.sizes) > 1]
        assert several and not any(r.grad_ok for r in several), "\n".join(r.describe() for r in several)
        assert all("differentiates only its own anchors' terms" in "\n".join(r.causes) for r in several), "\n".join(r.describe() for r in several)


def test_gather_without_gradient_is_named(reports):
    _, by_case = reports
    got = by_case["no-grad gather"]
    assert all(not r.grad_ok and "no gradient through the gather" in "\n".join(r.causes) for r in got), "\n".join(r.describe() for r in got)


def test_local_only_gradient_is_named(reports):
    world, by_case = reports
    for name in ("keep-local gather", "GlobalBatchLoss sum"):
        got = by_case[name]
        assert all(r.value_ok and not r.grad_ok for r in got)
        assert all(abs(r.grad_factor - 1 / world) < 1e-9 for r in got)
        assert all("local-only gradient without reduction" in "\n".join(r.causes) for r in got), "\n".join(r.describe() for r in got)


def test_open_clip_gather_with_gradient_passes_and_extra_factor_is_named(reports):
    world, by_case = reports
    assert all(r.ok for r in by_case["open_clip gather"]), "\n".join(r.describe() for r in by_case["open_clip gather"])
    got = by_case["open_clip gather x W"]
    assert all(abs(r.grad_factor - world) < 1e-9 for r in got)
    assert all("world-size factor applied twice" in "\n".join(r.causes) for r in got), "\n".join(r.describe() for r in got)


def test_order_mismatch_is_named(reports):
    _, by_case = reports
    got = by_case["rank-first order"]
    assert not any(r.grad_ok for r in got)
    assert "order mismatch across ranks" in _causes(got), "\n".join(r.describe() for r in got)


def test_pairs_counted_twice_are_named(reports):
    _, by_case = reports
    got = by_case["counted twice"]
    assert not any(r.value_ok or r.grad_ok for r in got)
    for report in got:
        causes = "\n".join(report.causes)
        assert "pairs counted twice: each rank returns W x the loss" in causes and "pairs counted twice on rank" in causes, report.describe()


def test_per_rank_reference_set_is_refused_with_the_reason(reports):
    _, by_case = reports
    assert "m3g" in SECOND_VIEW
    for report in (r for name in SECOND_VIEW for r in by_case[f"per-rank ref {name}"]):
        assert report.errors and all("GpwrefError: ref:" in e and "are not gathered unless ref_sharding='sharded'" in e for e in report.errors), report.describe()
