"""Reports whose suggested change applies as printed, custom profiles by ``gpwref.profiles.derive``,
and candidates returning NaN reported as such."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpwref  # noqa: E402
from gpwref import GpwrefError  # noqa: E402
from gpwref.profiles import derive  # noqa: E402
from gpwref.testing import Batch, LossMismatch, assert_loss_matches, explain_mismatch  # noqa: E402
from tests.oracle.test_testing_clients import DUPLICATE_X, DUPLICATE_Y, official_ms  # noqa: E402

EXAMPLES = 25


@pytest.fixture(autouse=True)
def _forget_derived_profiles():
    """derive() registers process-wide: each test's profiles are removed after it (other tests count profiles)."""
    profiles, derived = dict(gpwref.profiles.PROFILES), dict(gpwref.profiles.DERIVED_FROM)
    yield
    for table, saved in ((gpwref.profiles.PROFILES, profiles), (gpwref.profiles.DERIVED_FROM, derived)):
        table.clear()
        table.update(saved)


def _report(candidate, **kwargs):
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(candidate, "multi_similarity", examples=EXAMPLES, **kwargs)
    return info.value.report


def _apply(fix: str) -> dict:
    """The printed fix as the keyword arguments it spells."""
    return eval(f"dict({fix})", {"gpwref": gpwref})  # noqa: S307 - the report's own text, by design


def test_a_derived_profile_is_accepted_everywhere_under_its_own_name():
    profile = derive("official-index-self", base="official", self_rule="index", self_threshold=None)
    assert profile.name == "official-index-self" and profile.degenerate == "raise"
    assert "official-index-self" in gpwref.PROFILES
    # the official rules with the index self rule: an independent torch transcription of exactly that
    summary = assert_loss_matches(functools.partial(official_ms, self_by_value=False), "multi_similarity",
                                  profile="official-index-self", batches={"duplicates": True}, examples=EXAMPLES)
    assert summary.profile == "official-index-self" and summary.hyper["beta"] == 40.0  # the base's defaults
    result = gpwref.compute("multi_similarity", DUPLICATE_X, DUPLICATE_Y, profile="official-index-self")
    assert result.profile == "official-index-self"
    # deriving the same profile again is harmless; other rules under a taken name are refused
    assert derive("official-index-self", base="official", self_rule="index", self_threshold=None) is profile
    with pytest.raises(GpwrefError, match="already a profile"):
        derive("official-index-self", base="official", empty_mined="keep")


@pytest.mark.parametrize("kwargs,argument", [
    ({"name": "x", "base": "paper", "no_such_rule": 1}, "rules"),
    ({"name": "x2", "base": "paper", "self_rule": "value"}, "self_threshold"),
    ({"name": "x3", "base": "paper", "degenerate": "maybe"}, "degenerate"),
    ({"name": "1bad", "base": "paper"}, "name"),
    ({"name": "paper", "base": "pml"}, "name"),
])
def test_derive_refuses_bad_rules_by_name(kwargs, argument):
    with pytest.raises(GpwrefError) as info:
        derive(**kwargs)
    assert info.value.argument == argument


def test_a_rule_change_is_printed_as_a_derive_call_that_works():
    candidate = functools.partial(official_ms, self_by_value=False)
    report = _report(candidate, profile="official", batches={"duplicates": True})
    assert report.best is not None and "gpwref.profiles.derive(" in report.best.fix
    assert "apply: profile=gpwref.profiles.derive(" in str(report)
    summary = assert_loss_matches(candidate, "multi_similarity", batches={"duplicates": True}, examples=EXAMPLES,
                                  **_apply(report.best.fix))
    assert summary.compared > 0


def test_a_default_change_is_printed_as_a_hyper_value_that_works():
    candidate = functools.partial(official_ms, beta=50.0)
    report = _report(candidate, profile="official")
    assert report.best.fix == "hyper={'beta': 50.0}"
    assert_loss_matches(candidate, "multi_similarity", profile="official", examples=EXAMPLES, **_apply(report.best.fix))


def test_a_nan_candidate_is_reported_as_nan_with_its_rows():
    def candidate(X, y):
        U = torch.nn.functional.normalize(X, dim=1)
        S = U @ U.T
        return torch.sqrt(S[0, 1] - 2.0) + S.sum() * 0  # nan, and nan gradients on the rows it touches

    batch = Batch(DUPLICATE_X, DUPLICATE_Y)
    report = explain_mismatch(candidate, "multi_similarity", batch, profile="paper")
    text = str(report)
    assert not report.agree
    assert "the candidate's value is nan" in text
    assert "differ by nan" not in text
    assert "dL/dX holds nan at rows [0, 1]" in text  # only S[0, 1] is nan: the rows 0 and 1 it is formed from


def test_the_page_examples_run():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "oracle.md").read_text()
    marker = "<!-- runs: tests/oracle/test_fixes.py::test_the_page_examples_run -->"
    blocks = re.findall(re.escape(marker) + r"\n```python\n(.*?)\n```", page, re.S)
    assert len(blocks) == 2
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "docs/oracle.md", "exec"), namespace)  # noqa: S102 - the page's own example
        if "summary" in namespace:
            assert namespace["summary"].accepted  # the tie example passed through an admissible reference
        if "result" in namespace:
            assert namespace["result"].profile == "my_official"


# ---- documented discrepancies are named (candidates built from gpwref itself plus the one documented
# change: these tests check the explainer's naming, not gpwref's values) -----------------------------


def _numpy_candidate(loss, profile, grad_factor=None, **hyper):
    def value(X, y):
        return gpwref.compute(loss, X, y, profile=profile, **hyper).loss

    def grad(X, y):
        result = gpwref.compute(loss, X, y, profile=profile, **hyper)
        factor = 1.0 if grad_factor is None else grad_factor(result)
        return result.grad_emb * factor

    return value, grad


def test_the_official_fast_ap_backward_scale_is_named():
    if "fast_ap" not in gpwref.LOSSES:
        pytest.skip("no fast_ap entry")
    value, grad = _numpy_candidate("fast_ap", "paper", grad_factor=lambda r: r.extras["official_backward_scale"])
    with pytest.raises(LossMismatch) as info:
        assert_loss_matches(value, "fast_ap", profile="paper", candidate_grad=grad, framework="numpy",
                            batches={"singletons": False, "one_class": False, "m": (4, 10)}, examples=10)
    report = info.value.report
    assert report.best is not None and report.best.kind == "documented"
    assert "N'/2" in report.best.label and "official_backward_scale" in report.best.fix


def test_a_self_threshold_of_one_is_named_and_printed_as_a_derive_call():
    value, grad = _numpy_candidate("multi_similarity", gpwref.profiles.derive(
        "paper-below-one", base="paper", self_rule="value", self_threshold=1.0))
    # rows 0 and 1 duplicate (S = 1); row 2 at S = 1 - 5e-7 (a self pair under threshold 0.99999 only);
    # row 5 a negative at S = 0.95, so MS mining keeps (0, 1)
    X = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.001, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8], [0.95, 0.0, 0.3122499]]
    report = explain_mismatch(value, "multi_similarity", Batch(np.array(X), np.array([0, 0, 0, 1, 1, 1])), profile="paper",
                              candidate_grad=grad, framework="numpy")
    assert not report.agree and report.best is not None
    assert report.best.changes == {"self_rule": "value", "self_threshold": 1.0}
    assert "self_threshold=1.0" in report.best.fix
