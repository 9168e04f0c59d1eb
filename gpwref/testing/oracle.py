"""``assert_loss_matches`` and ``explain_mismatch``: gpwref as an oracle in another project's tests.

    from gpwref.testing import assert_loss_matches
    assert_loss_matches(my_ms_loss, "multi_similarity", profile="pml")

The candidate is any callable ``(embeddings, labels) -> loss`` (see ``gpwref.testing.candidates``
for torch / NumPy / JAX and reference sets). Batches are drawn with hypothesis when it is installed,
from a seeded NumPy generator otherwise; both are deterministic for a given ``seed``. A
disagreement raises ``LossMismatch`` (an AssertionError) whose message is the ``MismatchReport`` of
the failing batch (the one hypothesis settles on after its shrinking, or the first one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import GpwrefError
from .candidates import least_precise
from .compare import Setup
from .explain import MismatchReport, explain
from .strategies import _KNOBS, Batch, batches as batch_strategy, make_batch
from .tolerances import Tolerance

_STRATEGY_KEYS = (*_KNOBS, "m", "d", "classes", "normalize", "boundary_eps", "pk", "proxies")


class LossMismatch(AssertionError):
    """The candidate disagrees with the reference; ``.report`` is the ``MismatchReport``."""

    def __init__(self, report: MismatchReport):
        self.report = report
        super().__init__(str(report))


@dataclass(frozen=True)
class OracleSummary:
    """What ``assert_loss_matches`` checked (returned when everything agreed)."""

    loss: str
    profile: str
    hyper: Mapping[str, object]
    compared: int  # batches on which value and gradients were compared
    both_refused: int  # batches that the profile's code refuses and the candidate refused too
    framework: str
    dtype: str  # the dtype the comparisons were judged in (the least precise seen)
    source: str  # "hypothesis", "seeded generator" or "given batches"
    tolerance: Tolerance  # the allowance of that dtype
    # batches that agreed only with an admissible difference (a stability epsilon, a tie broken the other
    # way, round-off of S times the loss's slope): its description -> how many batches
    accepted: Mapping[str, int] = field(default_factory=dict)


class _Failed(Exception):
    def __init__(self, batch: Batch):
        self.batch = batch
        super().__init__(repr(batch))


def assert_loss_matches(
    candidate: Callable,
    loss: str,
    *,
    profile="paper",
    hyper: Mapping[str, object] | None = None,
    batches=None,
    check=("value", "grad_emb"),
    rtol: float | None = None,
    atol: float | None = None,
    dtype="float64",
    normalize: bool = True,
    framework: str | None = None,
    candidate_grad: Callable | None = None,
    candidate_per_anchor: Callable | None = None,
    examples: int = 50,
    seed: int = 0,
    confirm: int = 8,
) -> OracleSummary:
    """Assert that ``candidate`` computes ``loss`` under ``profile`` on many batches.

    * ``hyper``: hyper-parameter overrides (the profile's defaults otherwise): the values the
      candidate was built with.
    * ``batches``: ``None`` (draw ``examples`` batches with every edge case possible; under a
      profile whose code raises on an anchor without positives or negatives, half of them avoid
      singletons and one-class batches), a dict of
      ``gpwref.testing.batches`` knobs (e.g. ``{"duplicates": True, "m": (4, 16)}``), a hypothesis
      strategy of ``Batch``, one ``Batch``, or an iterable of them. Inside a hypothesis test pass the
      drawn ``Batch``; knobs and ``None`` then use the seeded generator (hypothesis cannot nest).
    * ``check``: any of "value", "grad_emb", "grad_ref" (batches with a reference set) and
      "per_anchor" (needs ``candidate_per_anchor``).
    * ``rtol``/``atol``: override the per-dtype defaults of ``gpwref.testing.tolerances``.
    * ``dtype``: the dtype the candidate receives its embeddings in ("float64", "float32",
      "float16", "bfloat16"); the reference runs in float64 on the same rounded numbers.
    * ``normalize``: whether the candidate L2-normalises its rows (True for almost every metric
      learning loss) or uses them as given.
    * ``framework``: "torch", "numpy" or "jax" (detected from the return type when None);
      ``candidate_grad``: gradient callable for NumPy/JAX candidates (finite differences otherwise);
      ``candidate_per_anchor``: optional callable giving each anchor's contribution, which sharpens
      the report.
    * ``confirm``: further batches on which a suggested explanation is re-checked.

    Returns an ``OracleSummary``; raises ``LossMismatch`` (an AssertionError carrying ``.report``)
    on the first disagreement, and AssertionError if no batch could be compared at all.
    """
    setup = Setup(candidate, loss, profile=profile, hyper=hyper, check=check, rtol=rtol, atol=atol, dtype=dtype,
                  normalize=normalize, framework=framework, candidate_grad=candidate_grad,
                  candidate_per_anchor=candidate_per_anchor)
    for name, value in (("examples", examples), ("seed", seed), ("confirm", confirm)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "examples" else 0):
            raise GpwrefError(name, "must be an int >= " + ("1" if name == "examples" else "0"), repr(value))
    source, draw = _source(setup, batches, examples, seed)
    caller_knobs = _caller_knobs(setup, batches)  # the explainer's further batches are drawn with them
    framework_name = setup.candidate.detect()
    counts = {"compared": 0, "refused": 0}
    accepted: dict[str, int] = {}
    seen_dtypes: list[str] = []  # the dtype each compared batch was judged in
    usage_error: list[GpwrefError] = []

    def one(batch: Batch) -> None:
        if usage_error:
            return
        try:
            comparison = setup.compare(batch)
        except GpwrefError as error:  # a usage error (say a candidate returning a vector): stop, do not shrink
            usage_error.append(error)
            return
        if not comparison.agree:
            raise _Failed(batch)
        if comparison.both_refuse:
            counts["refused"] += 1
        else:
            counts["compared"] += 1
            seen_dtypes.append(comparison.output.dtype)
            if comparison.accepted_as is not None:
                accepted[comparison.accepted_as] = accepted.get(comparison.accepted_as, 0) + 1

    try:
        draw(one)
    except _Failed as failure:
        raise LossMismatch(explain(setup, failure.batch, confirm=confirm, seed=seed, knobs=caller_knobs)) from None
    except BaseException as error:  # hypothesis may wrap the failure in an ExceptionGroup
        failure = _find_failure(error)
        if failure is None:
            raise
        raise LossMismatch(explain(setup, failure.batch, confirm=confirm, seed=seed, knobs=caller_knobs)) from None
    if usage_error:
        raise usage_error[0]
    if counts["compared"] == 0:
        raise AssertionError(
            f"gpwref oracle: no batch could be compared ({counts['refused']} were refused by both the reference under "
            f"profile '{setup.profile.name}' and the candidate); draw batches the profile accepts, e.g. "
            "batches={'singletons': False, 'one_class': False}")
    judged = least_precise(*seen_dtypes)
    return OracleSummary(setup.entry.name, setup.profile.name, dict(setup.params), counts["compared"], counts["refused"],
                         framework_name, judged, source, setup.tolerance(judged, setup.uses_fd()), accepted)


def explain_mismatch(
    candidate: Callable,
    loss: str,
    batch: Batch,
    *,
    profile="paper",
    hyper: Mapping[str, object] | None = None,
    check=("value", "grad_emb"),
    rtol: float | None = None,
    atol: float | None = None,
    dtype="float64",
    normalize: bool = True,
    framework: str | None = None,
    candidate_grad: Callable | None = None,
    candidate_per_anchor: Callable | None = None,
    confirm: int = 8,
    seed: int = 0,
) -> MismatchReport:
    """The report on one batch, as data (``report.agree`` is True when there is nothing to explain).

    Arguments as in ``assert_loss_matches``; ``batch`` is a ``gpwref.testing.Batch`` (build one from
    your own arrays with ``Batch(embeddings, labels)``).
    """
    setup = Setup(candidate, loss, profile=profile, hyper=hyper, check=check, rtol=rtol, atol=atol, dtype=dtype,
                  normalize=normalize, framework=framework, candidate_grad=candidate_grad,
                  candidate_per_anchor=candidate_per_anchor)
    if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 0:
        raise GpwrefError("confirm", "must be an int >= 0", repr(confirm))
    return explain(setup, batch, confirm=confirm, seed=seed)


def _find_failure(error: BaseException) -> _Failed | None:
    if isinstance(error, _Failed):
        return error
    for inner in getattr(error, "exceptions", ()) or ():
        found = _find_failure(inner)
        if found is not None:
            return found
    return None


def _default_knobs(setup: Setup) -> dict:
    """Every edge case, m = 1 included; a sample-to-proxy loss gets one proxy per class as its reference set."""
    if setup.entry.family == "proxy":
        return {"proxies": 1, "m": (1, 12), "normalize": setup.normalize}
    return {"with_ref": False, "m": (1, 12), "normalize": setup.normalize}


def _caller_knobs(setup: Setup, batches) -> dict | None:
    """The strategy knobs resolved from a ``batches`` mapping (the defaults with the caller's on top), else None."""
    if not isinstance(batches, Mapping):
        return None
    knobs = _default_knobs(setup)
    unknown = [k for k in batches if k not in _STRATEGY_KEYS]
    if unknown:
        raise GpwrefError("batches", f"knobs must be among {list(_STRATEGY_KEYS)}", repr(unknown))
    if batches.get("with_ref") is False or batches.get("ref_includes_batch") or "pk" in batches:
        knobs.pop("proxies", None)  # the caller's own reference-set choice
    if "pk" in batches:
        knobs.pop("m", None)
    knobs.update(batches)
    knobs["normalize"] = setup.normalize if knobs.get("normalize") is None else knobs["normalize"]
    return knobs


def _source(setup: Setup, batches, examples: int, seed: int):
    """(source name, draw(callback)) for the ``batches`` argument."""
    if isinstance(batches, Batch):
        return "given batches", lambda one: one(batches)
    if batches is None and setup.profile.degenerate == "raise":
        # half the draws avoid the batches this profile refuses, so that most of them compare values
        knobs = _default_knobs(setup)
        mixes = [knobs, {**knobs, "singletons": False, "one_class": False}]
        if _hypothesis_usable():
            from hypothesis import strategies as st

            return "hypothesis", _hypothesis_draw(st.one_of(*(batch_strategy(**k) for k in mixes)), examples, seed)
        return "seeded generator", _seeded_draw(mixes, examples, seed)
    if batches is None or isinstance(batches, Mapping):
        knobs = _caller_knobs(setup, batches) or _default_knobs(setup)
        make_batch(np.random.default_rng(0), **knobs)  # validates the knobs now
        if _hypothesis_usable():
            return "hypothesis", _hypothesis_draw(batch_strategy(**knobs), examples, seed)
        return "seeded generator", _seeded_draw([knobs], examples, seed)
    if _is_strategy(batches):
        if not _hypothesis_usable():
            raise GpwrefError("batches", "a hypothesis strategy cannot be drawn inside a running hypothesis test; pass the drawn Batch")
        return "hypothesis", _hypothesis_draw(batches, examples, seed)
    if isinstance(batches, Iterable) and not isinstance(batches, (str, bytes)):
        items = list(batches)
        if not items or not all(isinstance(b, Batch) for b in items):
            raise GpwrefError("batches", "an iterable must hold gpwref.testing.Batch records (and at least one)",
                              sorted({type(b).__name__ for b in items}) or "empty")

        def draw(one):
            for item in items:
                one(item)

        return "given batches", draw
    raise GpwrefError("batches", "must be None, a dict of strategy knobs, a hypothesis strategy, a Batch or an iterable of Batch",
                      type(batches).__name__)


def _hypothesis_usable() -> bool:
    try:
        import hypothesis
    except ImportError:
        return False
    return not hypothesis.currently_in_test_context()


def _is_strategy(value) -> bool:
    try:
        from hypothesis.strategies import SearchStrategy
    except ImportError:
        return False
    return isinstance(value, SearchStrategy)


def _hypothesis_draw(strategy, examples: int, seed: int):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed

    def draw(one):
        @fixed_seed(seed)
        @settings(max_examples=examples, deadline=None, database=None, derandomize=False, print_blob=False,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def run(batch):
            one(batch)

        run()

    return draw


def _seeded_draw(mixes: list[dict], examples: int, seed: int):
    def draw(one):
        for k in range(examples):
            one(make_batch(np.random.default_rng([seed, k]), **mixes[k % len(mixes)]))

    return draw
