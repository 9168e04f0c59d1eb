"""Templates run over every catalog entry x profile x variant (docs/oracle-contract.md#the-proofs-every-loss-gets).

Each case goes through verification.harness.check_case: value, G and dL/dX against torch autograd
on an independent formulation, G against finite differences away from kinks, value and G against a
plain loop, value and dL/dX against every real implementation of the profile, the GPW sign rule,
and exact zeros outside the used pairs. Tolerances and their reasons: verification/harness.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

import gpwref
from gpwref.testing import batches
from gpwref_verification.harness import check_case

CASES = [
    pytest.param(
        entry.name, profile, dict(variant),
        id=f"{entry.name}-{profile}-{'-'.join(f'{k}={v}' for k, v in variant.items()) or 'default'}",
    )
    for entry in gpwref.CATALOG
    for profile in entry.defaults
    for variant in entry.variants
]

EDGE_CASES = ["singletons", "one_class", "ties", "duplicates", "on_boundary", "with_ref", "ref_includes_batch"]


def _hyper_for(loss: str, variant: dict, batch) -> dict:
    hyper = dict(variant)
    param = gpwref.get_entry(loss).boundary_param
    if param and batch.boundary_eps is not None and param not in hyper:
        hyper[param] = batch.boundary_eps
    return hyper


REF_EDGES = ("with_ref", "ref_includes_batch")


@pytest.fixture(autouse=True)
def _skip_reference_sets_of_batch_only_losses(request):
    """A batch-only loss has no reference-set rows: skipped here, before hypothesis starts. (A skip
    inside the test body, on the first drawn batch that happened to carry a reference set, ended the
    whole test there: its remaining examples never ran.)"""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    loss = params.get("loss")
    if loss is None or gpwref.get_entry(loss).supports_ref:
        return
    if request.node.originalname == "test_every_check_with_a_reference_set" or params.get("edge") in REF_EDGES:
        pytest.skip(f"{loss} is defined on the batch only")


def _edge_knobs(loss: str, edge: str) -> dict:
    """The edge case's knob; a batch-only loss never draws a reference set."""
    knobs = {edge: True}
    if edge == "ref_includes_batch":
        knobs["with_ref"] = True
    elif edge != "with_ref" and not gpwref.get_entry(loss).supports_ref:
        knobs["with_ref"] = False
    return knobs


def _assert_clean(report) -> None:
    assert not report.failures(), (
        f"{report.loss}/{report.profile} {report.hyper} on {report.cases}: "
        + ", ".join(f"{name}={report.errors[name]:.3g}" for name in report.failures())
        + f"; skipped: {report.skipped}"
    )


@pytest.mark.parametrize("loss,profile,variant", CASES)
@given(batch=batches(m=(1, 9), d=(2, 5), with_ref=False))
def test_every_check_on_drawn_batches(loss, profile, variant, batch):
    _assert_clean(check_case(loss, profile, _hyper_for(loss, variant, batch), batch))


@pytest.mark.parametrize("loss,profile,variant", CASES)
@given(batch=batches(m=(1, 6), d=(2, 4), with_ref=True))
@settings(max_examples=6)
def test_every_check_with_a_reference_set(loss, profile, variant, batch):
    _assert_clean(check_case(loss, profile, _hyper_for(loss, variant, batch), batch))


@pytest.mark.parametrize("edge", EDGE_CASES)
@pytest.mark.parametrize("loss,profile,variant", CASES)
@given(data=__import__("hypothesis").strategies.data())
@settings(max_examples=4)
def test_every_edge_case(loss, profile, variant, edge, data):
    batch = data.draw(batches(m=(1, 7), d=(2, 4), **_edge_knobs(loss, edge)))
    _assert_clean(check_case(loss, profile, _hyper_for(loss, variant, batch), batch, fd=False))
