"""Why a candidate disagrees with the reference: the report as data (``MismatchReport``).

``explain_mismatch`` compares once, then:

1. tries every *alternative* gpwref knows for the loss on the same inputs against the candidate's
   outputs: each other profile (with its defaults), each single profile rule switched to a value
   another profile uses, each hyper-parameter set to a value some profile or catalog variant uses,
   and three reductions (mean over the anchors with a used pair, mean over the anchors with a
   non-zero term, plain sum over anchors); pairs of these when no single one is confirmed. An
   alternative that agrees is re-checked on ``confirm`` further batches (half with the failing
   batch's edge cases and size, half general); the simplest fully confirmed one is ``report.best``;
2. finds the worst anchor: largest difference of per-anchor contributions when they are known (the
   candidate's own ``candidate_per_anchor``, or the per-anchor values of a fully confirmed
   alternative, which then models the candidate), otherwise the largest row of the embedding-gradient
   difference;
3. finds the worst pair: the largest difference of dL/dS, taken from the confirmed alternative, or
   else *inferred* from the candidate's embedding gradients: the batch is lifted to full rank by
   giving every row its own extra coordinate of size delta = u^(1/4) (S changes by a factor
   1/(1 + delta^2), so ties, duplicates and most mining decisions are kept; when a used pair
   changes, a note says so instead), where dL/dX = (G + G^T) U
   can be solved for the off-diagonal of G + G^T (with a separate reference set, for G by least
   squares);
4. classifies the anchor and the pair: positive / negative / self pair (by index or by value),
   used or not, the MS mining margin and whether the pair sits on the boundary, and which of the
   alternatives of step 1 change that anchor's contribution or that pair's weight (the rules that
   decide it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from ..catalog import resolve_hyper
from ..errors import GpwrefError
from ..pairs import build_pairs, unit_rows
from ..profiles import PROFILES, Profile, get_profile
from .candidates import UNIT_ROUNDOFF
from .compare import Comparison, Inputs, Setup
from .strategies import _KNOBS, Batch, make_batch

REDUCTIONS = {
    "active_anchors": "mean over the anchors with a used pair instead of all m",
    "nonzero_anchors": "mean over the anchors with a non-zero term instead of all m",
    "sum": "sum over anchors instead of the mean (no 1/m)",
}
_KIND_ORDER = {"profile": 0, "rule": 1, "hyper": 2, "reduction": 3, "combination": 4}
_SHOWN = 6  # alternatives printed by str(report); all are in report.alternatives
_PAIR_INFERENCE_LIMIT = 2500  # m x n unknowns for the least-squares inference (reference-set batches)


# -------------------------------------------------------------------------------------------------
# The report records


@dataclass(frozen=True)
class Check:
    name: str
    ratio: float  # error / allowed: <= 1 passes
    reference: float  # the reference's value, or its largest |entry| for an array
    difference: float  # |candidate - reference| (largest entry for an array)

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0


@dataclass(frozen=True)
class Alternative:
    """A known convention (or a change of one rule, default or reduction) tried against the candidate."""

    label: str
    kind: str  # "profile", "rule", "hyper", "reduction" or "combination"
    changes: Mapping[str, object]  # e.g. {"self_rule": "index"}, {"beta": 50.0}, {"profile": "pml"}, {"reduction": "sum"}
    confirmed: int = 0  # further batches on which it also agrees
    confirm_tried: int = 0
    fix: str = ""  # the change as arguments that work as printed (gpwref.compute / assert_loss_matches)

    @property
    def fully_confirmed(self) -> bool:
        return self.confirmed == self.confirm_tried

    def __str__(self) -> str:
        extra = f" (also agrees on {self.confirmed} of {self.confirm_tried} further batches)" if self.confirm_tried else ""
        fix = f"\n      apply: {self.fix}" if self.fix else ""
        return f"{self.label}{extra}{fix}"


@dataclass(frozen=True)
class AnchorFacts:
    index: int
    label: int
    positives: int  # before mining
    negatives: int
    used_positives: int
    used_negatives: int
    status: str
    reference: float | None  # the anchor's contribution to the reference loss (None: the loss sums per proxy)
    candidate: float | None
    candidate_source: str  # "candidate_per_anchor", "modelled by <alternative>", or "unknown"
    rules: tuple[str, ...]  # alternatives that change this anchor's contribution, with the change


@dataclass(frozen=True)
class ProxyFacts:
    """A proxy loss that sums per proxy (``per_anchor`` is per proxy): the proxy (a row of ``ref``)
    whose contribution differs most. Kept apart from ``AnchorFacts``, whose rows are samples."""

    index: int  # row of ref
    label: int
    reference: float
    candidate: float
    candidate_source: str  # "candidate_per_anchor" or "modelled by <alternative>"


@dataclass(frozen=True)
class PairFacts:
    anchor: int
    item: int  # column of S: a batch row, or a reference-set row
    relation: str  # "positive", "negative", "self pair (same sample)", "self pair by value (...)"
    similarity: float
    used: bool  # used by the reference (mined / active)
    observable: str  # "G_ij" or "G_ij + G_ji" (what can be told from embedding gradients)
    reference: float
    candidate: float | None
    candidate_source: str
    mining: str | None  # the MS mining margin of this pair, when the loss mines by eps
    rules: tuple[str, ...]


@dataclass(frozen=True)
class MismatchReport:
    """Where and why a candidate disagrees with gpwref on one batch (``str()`` is the readable form)."""

    loss: str
    profile: str
    hyper: Mapping[str, object]
    batch: Batch
    agree: bool
    checks: tuple[Check, ...]
    dtype: str
    framework: str
    grad_source: str
    reference_value: float | None
    candidate_value: float | None
    reference_per_anchor: np.ndarray | None
    candidate_per_anchor: np.ndarray | None
    reference_error: str | None
    candidate_error: str | None
    worst_anchor: AnchorFacts | None
    worst_pair: PairFacts | None
    alternatives: tuple[Alternative, ...]  # those that agree on this batch, best first
    tried: int  # alternatives tried
    notes: tuple[str, ...] = field(default_factory=tuple)
    worst_proxy: ProxyFacts | None = None  # losses whose per_anchor is per proxy only

    @property
    def best(self) -> Alternative | None:
        """The simplest alternative that agrees here and on every further batch, if any."""
        for alternative in self.alternatives:
            if alternative.fully_confirmed:
                return alternative
        return None

    def rule_names(self) -> set[str]:
        """Names of the rules, hyper-parameters and reductions that the fully confirmed alternatives change."""
        names = set()
        for alternative in self.alternatives:
            if alternative.fully_confirmed:
                names.update(k for k in alternative.changes if k != "self_threshold")
        return names

    def __str__(self) -> str:
        return _format(self)


# -------------------------------------------------------------------------------------------------
# Alternatives


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: used as dict keys
class _Variant:
    label: str
    kind: str
    changes: Mapping[str, object]
    profile: Profile
    hyper: Mapping[str, object]  # overrides passed to compute
    reduction: str | None = None
    parts: tuple = ()  # the single variants a combination is made of


def _variants(setup: Setup) -> list[_Variant]:
    """Single alternatives: other profiles, one rule switched, one default switched, one reduction."""
    entry, current = setup.entry, setup.profile
    singles: list[_Variant] = []
    for name in entry.defaults:
        if name == current.name:
            continue
        singles.append(_Variant(f"profile '{name}'", "profile", {"profile": name}, get_profile(name), {}))
        if setup.overrides:
            try:
                resolve_hyper(entry, name, setup.overrides)
            except GpwrefError:
                continue
            text = ", ".join(f"{k}={v!r}" for k, v in setup.overrides.items())
            singles.append(_Variant(f"profile '{name}' with {text}", "profile", {"profile": name, **setup.overrides},
                                    get_profile(name), dict(setup.overrides)))
    seen = set()
    for other in PROFILES.values():
        for key, value in other.rules().items():
            if key == "self_threshold" or value == getattr(current, key) or (key, value) in seen:
                continue
            seen.add((key, value))
            changes = {key: value}
            if key == "self_rule":
                changes["self_threshold"] = other.self_threshold
            singles.append(_Variant(f"'{current.name}' with {key}={value!r}", "rule", changes,
                                    replace(current, **changes), dict(setup.overrides)))
    if (current.self_rule, current.self_threshold) != ("value", 1.0):  # code that keeps only pairs with S < 1 as positives
        changes = {"self_rule": "value", "self_threshold": 1.0}
        singles.append(_Variant(f"'{current.name}' with self_rule='value', self_threshold=1.0 (same-label pairs with S >= 1 "
                                "are self pairs)", "rule", changes, replace(current, **changes), dict(setup.overrides)))
    values: dict[str, dict[str, tuple[object, list[str]]]] = {}  # key -> repr(value) -> (value, where seen)
    for profile_name, defaults in entry.defaults.items():
        for key, value in defaults.items():
            values.setdefault(key, {}).setdefault(_value_key(value), (value, []))[1].append(f"'{profile_name}'")
    for variant in entry.variants:
        for key, value in variant.items():
            values.setdefault(key, {}).setdefault(_value_key(value), (value, []))[1].append("a catalog variant")
    for key, options in values.items():
        for value, where in options.values():  # the current value too: it matters under another profile
            hyper = {**setup.overrides, key: value}
            try:
                resolve_hyper(entry, current.name, hyper)
            except GpwrefError:
                continue
            where_text = ", ".join(dict.fromkeys(where))
            singles.append(_Variant(f"{key}={value!r} (as under {where_text})", "hyper", {key: value}, current, hyper))
    for name, text in REDUCTIONS.items():
        singles.append(_Variant(f"reduction: {text}", "reduction", {"reduction": name}, current, dict(setup.overrides), name))
    return singles


def _combinations(setup: Setup, singles: list[_Variant]) -> list[_Variant]:
    combos = []
    for a_index, a in enumerate(singles):
        for b in singles[a_index + 1:]:
            merged = _merge(setup, a, b)
            if merged is not None:
                combos.append(merged)
    return combos


def _merge(setup: Setup, a: _Variant, b: _Variant) -> _Variant | None:
    """Two single alternatives applied together (a: the lower kind in profile < rule < hyper < reduction)."""
    if _KIND_ORDER[a.kind] > _KIND_ORDER[b.kind]:
        a, b = b, a
    kinds = (a.kind, b.kind)
    if a.kind == b.kind and (a.kind in ("profile", "reduction") or set(a.changes) & set(b.changes)):
        return None  # two profiles, two reductions, or the same rule / default twice
    if kinds == ("profile", "rule"):
        return None  # a rule switched on top of another profile: too far from anything named
    if b.kind == "reduction":
        profile, hyper, reduction = a.profile, dict(a.hyper), b.reduction
    elif kinds == ("rule", "rule"):
        profile, hyper, reduction = replace(setup.profile, **a.changes, **b.changes), dict(setup.overrides), None
    elif kinds in (("profile", "hyper"), ("rule", "hyper"), ("hyper", "hyper")):
        profile, hyper, reduction = a.profile, {**a.hyper, **b.changes}, None
    else:  # pragma: no cover - every pair of kinds is handled above
        return None
    try:
        resolve_hyper(setup.entry, profile.name, hyper)
    except GpwrefError:
        return None
    return _Variant(f"{a.label} + {b.label}", "combination", {**a.changes, **b.changes}, profile, hyper, reduction, (a, b))


def _documented(setup: Setup, comparison: Comparison) -> list[Alternative]:
    """Discrepancies a loss's docstring documents that no profile or hyper-parameter models (see docs/losses.md)."""
    reference, output = comparison.reference, comparison.output
    if reference is None or output is None or output.grad_emb is None or comparison.tolerance is None:
        return []
    found = []
    scale = (reference.extras or {}).get("official_backward_scale")
    if scale and np.isfinite(output.value):
        tol = comparison.tolerance
        if tol.value_ratio(output.value, reference.loss) <= 1.0 and tol.grad_ratio(output.grad_emb, scale * reference.grad_emb) <= 1.0:
            found.append(Alternative(
                f"the official backward's extra factor N'/2 = {scale:g} on the gradient (the value unchanged)", "documented",
                {"official_backward_scale": scale},
                fix="no gpwref setting (gpwref's G is the true dL/dS): compare check=('value',), or divide the candidate's "
                    "gradient by result.extras['official_backward_scale']"))
    params = setup.params
    if (setup.entry.name == "triplet" and params.get("mining") == "batch_hard" and params.get("reduction") == "mean"
            and comparison.inputs.ref is None and np.isfinite(output.value)):
        found.extend(_singleton_takes_itself(setup, comparison))
    return found


def _singleton_takes_itself(setup: Setup, comparison: Comparison) -> list[Alternative]:
    """Batch-hard code that takes the anchor itself as a singleton's hardest positive (max over the
    same-label row, self included) and averages over all m anchors (open-reid's TripletLoss)."""
    from ..losses.triplet import pair_distance
    from .admissible import _stages, _Weights

    reference, output, inputs, tol = comparison.reference, comparison.output, comparison.inputs, comparison.tolerance
    y = inputs.labels
    m = len(y)
    same = y[:, None] == y[None, :]
    pos, neg = same & ~np.eye(m, dtype=bool), ~same
    single = ~pos.any(axis=1) & neg.any(axis=1)
    if not single.any() or not neg.any(axis=1).all():
        return []
    stages, S = _stages(setup, inputs)
    D, slope = pair_distance(S, setup.params["distance"])
    triplets = reference.extras.get("triplets", 0)
    self_distances = (-1.0,) if setup.params["distance"] == "cosine" else (0.0, 1e-6)  # 1e-6: a floor of 1e-12 under the root
    for d_self in self_distances:
        value = reference.loss * triplets / m
        G = reference.grad_sim * (triplets / m)
        for i in np.flatnonzero(single):
            n = np.flatnonzero(neg[i])[np.argmin(D[i, neg[i]])]
            term = d_self - D[i, n] + setup.params["margin"]
            if term > 0:
                value += term / m
                G[i, n] -= slope[i, n] / m
        grad_emb, _ = stages.gradients(_Weights(G))
        if tol.value_ratio(output.value, value) <= 1.0 and tol.grad_ratio(output.grad_emb, grad_emb) <= 1.0:
            return [Alternative(
                f"a singleton takes itself as its hardest positive (D = {d_self:g}) and the mean runs over all {m} anchors "
                f"(singletons {np.flatnonzero(single).tolist()})", "documented", {"singleton_rule": "self_as_positive"},
                fix="no gpwref setting: draw batches without singletons (batches={'singletons': False}) to compare the rest")]
    return []


def _fix(setup: Setup, variant: _Variant) -> str:
    """The variant as arguments that apply as printed: profile=, hyper=, or a profile made by gpwref.profiles.derive."""
    if variant.reduction is not None and variant.kind == "reduction":
        return (f"no gpwref setting: the candidate's reduction is the {REDUCTIONS[variant.reduction]}; "
                "if that is what it should do, compare candidate value * factor (see the note on the factor)")
    parts = []
    profile = variant.profile
    if profile.name in PROFILES and PROFILES[profile.name] == profile:
        if profile.name != setup.profile.name:
            parts.append(f"profile={profile.name!r}")
    else:  # a rule changed: a named profile derived from the current one
        changed = {k: v for k, v in profile.rules().items() if v != getattr(setup.profile, k)}
        rules = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        name = f"{setup.profile.name}-" + "-".join(f"{k}-{v}" for k, v in changed.items())
        parts.append(f"profile=gpwref.profiles.derive({name!r}, base={setup.profile.name!r}, {rules})")
    if variant.hyper:
        parts.append(f"hyper={dict(variant.hyper)!r}")
    text = ", ".join(parts)
    if variant.reduction is not None:
        text += f" (and the candidate's reduction is the {REDUCTIONS[variant.reduction]}: no gpwref setting)"
    return text


def _value_key(value) -> str:
    """Equal hyper-parameter values share a key (2 and 2.0 too); mappings are keyed by their repr."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return repr(value)


@dataclass(frozen=True)
class _PairWeights:
    """The candidate's dL/dS (or G + G^T) beside the reference's, and where the candidate's came from."""

    candidate: np.ndarray
    reference: np.ndarray
    observable: str  # "G_ij" or "G_ij + G_ji"
    source: str


@dataclass
class _Outcome:
    agrees: bool
    result: object = None  # the variant's Result (None when it refuses the batch)
    factor: float = 1.0


def _reduction_factor(reduction: str | None, result) -> float:
    """The factor turning the reference's mean over all m anchors into ``reduction`` on this batch."""
    if reduction is None:
        return 1.0
    m = result.per_anchor.shape[0]
    if reduction == "sum":
        return float(m)
    if reduction == "active_anchors":
        k = int(np.count_nonzero((result.pos_used | result.neg_used).any(axis=1)))
    else:
        k = int(np.count_nonzero(result.per_anchor))
    return m / k if k else 1.0  # no anchor counts: the loss is 0 under every reduction


def _evaluate(setup: Setup, variant: _Variant, comparison: Comparison) -> _Outcome:
    """Does the candidate (as already run in ``comparison``) agree with the reference under ``variant``?"""
    inputs, output, candidate_error = comparison.inputs, comparison.output, comparison.candidate_error
    try:
        result = setup.reference(inputs, variant.profile, variant.hyper)
    except GpwrefError:
        return _Outcome(candidate_error is not None)
    if candidate_error is not None:
        return _Outcome(False, result)
    factor = _reduction_factor(variant.reduction, result)
    tol = setup.tolerance(output.dtype, output.grad_source == "finite differences")
    ratios = setup.ratios(result, output, tol, comparison.fd_kinks, scale=factor)
    return _Outcome(all(r <= 1.0 for r in ratios.values()), result, factor)


# -------------------------------------------------------------------------------------------------
# Pair inference from embedding gradients


def _lifted(inputs: Inputs, normalize: bool, delta: float) -> Inputs:
    """Every row gets its own extra coordinate delta |row|: off-diagonal S scales by 1/(1 + delta^2)."""
    m = inputs.m
    n = 0 if inputs.ref is None else inputs.ref.shape[0]
    width = m + n
    scale_x = np.linalg.norm(inputs.X, axis=1) if normalize else np.ones(m)
    X = np.concatenate([inputs.X, np.zeros((m, width))], axis=1)
    X[np.arange(m), inputs.X.shape[1] + np.arange(m)] = delta * scale_x
    R = None
    if inputs.ref is not None:
        scale_r = np.linalg.norm(inputs.ref, axis=1) if normalize else np.ones(n)
        R = np.concatenate([inputs.ref, np.zeros((n, width))], axis=1)
        R[np.arange(n), inputs.X.shape[1] + m + np.arange(n)] = delta * scale_r
    return Inputs(X, inputs.labels, R, inputs.ref_labels, inputs.ref_self)


_INFERRED = "inferred from the candidate's embedding gradients on the batch lifted to full rank"


def _infer_pair_gradient(setup: Setup, comparison: Comparison) -> "_PairWeights | str":
    """The candidate's G (or G + G^T) from its embedding gradients on the lifted batch, or why not."""
    if comparison.output is None or comparison.output.grad_emb is None:
        return "the candidate's embedding gradient is not checked, so its pair weights cannot be inferred"
    inputs = comparison.inputs
    if inputs.ref is None and inputs.m < 2:
        return "a batch of one row has no pair"
    u = UNIT_ROUNDOFF[comparison.output.dtype]
    delta = u ** 0.25
    lifted = _lifted(inputs, setup.normalize, delta)
    try:
        reference = setup.reference(lifted)
    except GpwrefError as error:
        return f"the reference refuses the lifted batch ({error})"
    base = comparison.reference
    if not (np.array_equal(reference.pos_used, base.pos_used) and np.array_equal(reference.neg_used, base.neg_used)):
        return "lifting the batch to full rank changed the reference's used pairs (a pair within delta^2 of a kink)"
    try:
        output = setup.candidate.evaluate(lifted.X, lifted.labels, lifted.ref, lifted.ref_labels, lifted.ref_self,
                                          grad_emb=True, grad_ref=lifted.ref is not None)
    except Exception as error:  # noqa: BLE001
        return f"the candidate failed on the lifted batch ({error!r})"
    if inputs.ref is None:
        return _solve_batch(setup, lifted, output.grad_emb, reference)
    if output.grad_ref is None:
        return "the candidate gives no gradient for the reference set, so G cannot be separated"
    return _solve_ref(setup, lifted, output, reference)


def _solve_batch(setup: Setup, lifted: Inputs, grad, reference) -> _PairWeights:
    """Batch as its own reference: dL/dU = (G + G^T) U, radial part removed by the normalisation."""
    if setup.normalize:
        U, norms = unit_rows(lifted.X, "embeddings")
        tangential = grad * norms[:, None]  # = A U - diag(r) U with A = G + G^T, r unknown
        A = tangential @ np.linalg.pinv(U)  # = A - diag(r): the off-diagonal is A's
        A_ref = reference.grad_sim + reference.grad_sim.T
        np.fill_diagonal(A, 0.0)
        np.fill_diagonal(A_ref, 0.0)
    else:
        A = grad @ np.linalg.pinv(lifted.X)
        A_ref = reference.grad_sim + reference.grad_sim.T
    return _PairWeights(A, A_ref, "G_ij + G_ji", _INFERRED)


def _solve_ref(setup: Setup, lifted: Inputs, output, reference) -> "_PairWeights | str":
    """Separate reference set: G by least squares on the linear map G -> (dL/dX, dL/dR)."""
    from ..pairs import grad_embeddings

    m, n = lifted.m, lifted.ref.shape[0]
    if m * n > _PAIR_INFERENCE_LIMIT:
        return f"the batch is too large to infer pair weights (m x n = {m * n} > {_PAIR_INFERENCE_LIMIT})"
    if setup.normalize:
        U, norms = unit_rows(lifted.X, "embeddings")
        V, ref_norms = unit_rows(lifted.ref, "ref")
    else:
        U, norms, V, ref_norms = lifted.X, None, lifted.ref, None
    columns = []
    for k in range(m * n):
        E = np.zeros(m * n)
        E[k] = 1.0
        gx, gr = grad_embeddings(E.reshape(m, n), U, norms, V, ref_norms, False)
        columns.append(np.concatenate([gx.ravel(), gr.ravel()]))
    M = np.stack(columns, axis=1)
    observed = np.concatenate([output.grad_emb.ravel(), output.grad_ref.ravel()])
    grad_sim = np.linalg.lstsq(M, observed, rcond=None)[0].reshape(m, n)
    # the reference projected on what embedding gradients can show (the identifiable part)
    reference_grad_sim = np.linalg.lstsq(M, M @ reference.grad_sim.ravel(), rcond=None)[0].reshape(m, n)
    return _PairWeights(grad_sim, reference_grad_sim, "G_ij", _INFERRED)


# -------------------------------------------------------------------------------------------------
# The report


def explain(setup: Setup, batch: Batch, *, confirm: int = 8, seed: int = 0, comparison: Comparison | None = None,
            knobs: dict | None = None) -> MismatchReport:
    """``knobs``: the caller's strategy knobs (``make_batch`` arguments); the further batches are then drawn with them."""
    comparison = comparison or setup.compare(batch)
    output = comparison.output
    checks = _checks(comparison)
    framework = setup.candidate.detect()
    base = dict(loss=setup.entry.name, profile=setup.profile.name, hyper=dict(setup.params), batch=batch,
                dtype=output.dtype if output is not None else setup.dtype, framework=framework,
                grad_source=output.grad_source if output is not None else "none",
                reference_value=None if comparison.reference is None else comparison.reference.loss,
                candidate_value=None if output is None else output.value,
                reference_per_anchor=None if comparison.reference is None else comparison.reference.per_anchor,
                reference_error=None if comparison.reference_error is None else str(comparison.reference_error),
                candidate_error=None if comparison.candidate_error is None else repr(comparison.candidate_error))
    if comparison.agree:
        return MismatchReport(**base, agree=True, checks=checks, candidate_per_anchor=None if output is None else output.per_anchor,
                              worst_anchor=None, worst_pair=None, alternatives=(), tried=0)

    all_singles = _variants(setup)
    singles = _dedupe(setup, all_singles, [])
    outcomes = {v: _evaluate(setup, v, comparison) for v in singles}
    agreeing = [v for v in singles if outcomes[v].agrees]
    further: list[Comparison] = []  # drawn once, only when some alternative needs confirming

    def tally(variants):
        if variants and not further:
            further.extend(_further_batches(setup, batch, confirm, seed, knobs))
        return _tally(setup, variants, further)

    confirmed = tally(agreeing)
    tried = len(singles)
    if not any(confirmed[v][0] == confirmed[v][1] for v in agreeing):
        combos = _dedupe(setup, _combinations(setup, all_singles), singles)
        tried += len(combos)
        for v in combos:
            outcomes[v] = _evaluate(setup, v, comparison)
        agreeing_combos = [v for v in combos if outcomes[v].agrees]
        confirmed.update(tally(agreeing_combos))
        agreeing += agreeing_combos

    def rank(v):
        done, total = confirmed[v]
        parts = tuple(_KIND_ORDER[p.kind] for p in v.parts)
        return (-(done / total if total else 1.0), _KIND_ORDER[v.kind], parts, v.label)

    agreeing.sort(key=rank)
    alternatives = [Alternative(v.label, v.kind, dict(v.changes), *confirmed[v], _fix(setup, v)) for v in agreeing]
    documented = _documented(setup, comparison)
    tried += 1
    alternatives = documented + alternatives  # a documented discrepancy of this very loss comes first
    best = next((v for v in agreeing if confirmed[v][0] == confirmed[v][1]), None)
    notes = list(_notes(setup, comparison, checks))
    if comparison.reference is None or output is None:
        return MismatchReport(**base, agree=False, checks=checks, candidate_per_anchor=None, worst_anchor=None,
                              worst_pair=None, alternatives=tuple(alternatives), tried=tried, notes=tuple(notes))

    reference = comparison.reference
    # the candidate's per-anchor values and dL/dS: its own, a confirmed model, or inferred
    cand_per_anchor, per_anchor_source = None, "unknown"
    if output.per_anchor is not None:
        cand_per_anchor, per_anchor_source = output.per_anchor, "candidate_per_anchor"
    elif best is not None and outcomes[best].result is not None:
        cand_per_anchor = outcomes[best].factor * outcomes[best].result.per_anchor
        per_anchor_source = f"modelled by {best.label}"
    weights = None
    if best is not None and outcomes[best].result is not None:
        weights = _PairWeights(outcomes[best].factor * outcomes[best].result.grad_sim, reference.grad_sim, "G_ij",
                               f"modelled by {best.label}")
    elif "grad_emb" in setup.check:
        inferred = _infer_pair_gradient(setup, comparison)
        if isinstance(inferred, str):
            notes.append(f"pair weights: {inferred}")
        else:
            weights = inferred

    per_proxy = per_anchor_is_per_proxy(setup, comparison)
    proxy_facts = None
    if per_proxy and cand_per_anchor is not None:  # the proxies' contributions, apart from the sample rows
        diff = np.abs(cand_per_anchor - reference.per_anchor)
        if diff.max(initial=0.0) > 0:
            k = int(np.argmax(diff))
            proxy_facts = ProxyFacts(k, int(comparison.inputs.ref_labels[k]), float(reference.per_anchor[k]),
                                     float(cand_per_anchor[k]), per_anchor_source)
    anchor = _worst_anchor(reference, None if per_proxy else cand_per_anchor, output, weights)
    pair = _worst_pair(anchor, weights)
    singles_for_rules = [v for v in singles if v.kind != "reduction"]
    anchor_facts = None if anchor is None else _anchor_facts(setup, comparison, anchor, None if per_proxy else cand_per_anchor,
                                                              per_anchor_source, singles_for_rules, outcomes, per_proxy)
    pair_facts = None if pair is None else _pair_facts(setup, comparison, pair, weights, singles_for_rules, outcomes)
    if best is not None and best.reduction is not None:
        notes.append(_reduction_note(reference))
    return MismatchReport(**base, agree=False, checks=checks, candidate_per_anchor=cand_per_anchor,
                          worst_anchor=anchor_facts, worst_pair=pair_facts, alternatives=tuple(alternatives),
                          tried=tried, notes=tuple(notes), worst_proxy=proxy_facts)


def _checks(comparison: Comparison) -> tuple[Check, ...]:
    if comparison.reference is None or comparison.output is None:
        return ()
    out, ref = comparison.output, comparison.reference
    rows = []
    for name, ratio in comparison.ratios.items():
        if name == "value":
            rows.append(Check(name, ratio, ref.loss, abs(out.value - ref.loss)))
        else:
            got = {"grad_emb": out.grad_emb, "grad_ref": out.grad_ref, "per_anchor": out.per_anchor}[name]
            want = {"grad_emb": ref.grad_emb, "grad_ref": ref.grad_ref, "per_anchor": ref.per_anchor}[name]
            diff = float(np.max(np.abs(got - want), initial=0.0)) if np.all(np.isfinite(got)) else float("inf")
            rows.append(Check(name, ratio, float(np.max(np.abs(want), initial=0.0)), diff))
    return tuple(rows)


def _further_batches(setup: Setup, batch: Batch, count: int, seed: int, caller_knobs: dict | None = None) -> list[Comparison]:
    """``count`` further comparisons: half with the failing batch's edge cases and size, half general;
    with the caller's knobs, half those knobs plus the failing batch's edge cases, half those knobs alone
    (a candidate that only accepts, say, equal class groups is never judged on other batches)."""
    if caller_knobs is not None:
        return _further_batches_with(setup, batch, count, seed, caller_knobs)
    knobs = {case: True for case in batch.cases if case in _KNOBS}
    knobs["with_ref"] = batch.ref is not None
    if batch.ref is None:
        knobs.pop("ref_includes_batch", None)
    m, d = batch.m, batch.embeddings.shape[1]
    general = {"with_ref": batch.ref is not None}
    if "proxies" in batch.cases:  # a proxy set again: as many proxies per class
        per_class = len(batch.ref_labels) // len(np.unique(batch.ref_labels))
        for chosen in (knobs, general):
            chosen.pop("with_ref", None)
            chosen.pop("ref_includes_batch", None)
            chosen["proxies"] = per_class
    comparisons = []
    for k in range(count):
        rng = np.random.default_rng([seed, 7919, k])
        try:
            if k % 2 == 0:
                extra = make_batch(rng, m=(max(1, m - 2), m + 2), d=(d, d), normalize=setup.normalize, **knobs)
            else:
                extra = make_batch(rng, m=(4, 12), d=(2, 6), normalize=setup.normalize, **general)
        except GpwrefError:
            continue
        if extra.ref is not None and not setup.entry.supports_ref:
            continue
        comparisons.append(setup.compare(extra))
    return comparisons


def _further_batches_with(setup: Setup, batch: Batch, count: int, seed: int, caller_knobs: dict) -> list[Comparison]:
    edge = {case: True for case in batch.cases if case in _KNOBS and case not in caller_knobs}
    comparisons = []
    for k in range(count):
        rng = np.random.default_rng([seed, 7919, k])
        extra = None
        for knobs in ([{**caller_knobs, **edge}] if k % 2 == 0 and edge else []) + [caller_knobs]:
            try:
                extra = make_batch(rng, **knobs)
                break
            except GpwrefError:  # the edge cases cannot be combined with the caller's knobs
                continue
        if extra is None or (extra.ref is not None and not setup.entry.supports_ref):
            continue
        comparisons.append(setup.compare(extra))
    return comparisons


def _tally(setup: Setup, variants: list[_Variant], comparisons: list[Comparison]) -> dict:
    """For each variant: (further batches on which it agrees too, further batches)."""
    return {v: (sum(_evaluate(setup, v, c).agrees for c in comparisons), len(comparisons)) for v in variants}


def _dedupe(setup: Setup, variants: list[_Variant], existing: list[_Variant]) -> list[_Variant]:
    """Drop variants that compute the same thing as an earlier one (same rules, resolved defaults, reduction)."""
    def key(v):
        params = resolve_hyper(setup.entry, v.profile.name, v.hyper)
        return (v.profile.name, tuple(v.profile.rules().items()), tuple(sorted((k, repr(x)) for k, x in params.items())), v.reduction)

    current = (setup.profile.name, tuple(setup.profile.rules().items()),
               tuple(sorted((k, repr(x)) for k, x in setup.params.items())), None)
    seen = {key(v) for v in existing} | {current}
    kept = []
    for v in variants:
        k = key(v)
        if k not in seen:
            seen.add(k)
            kept.append(v)
    return kept


def _worst_anchor(reference, cand_per_anchor, output, weights: _PairWeights | None) -> int | None:
    if cand_per_anchor is not None:
        diff = np.abs(cand_per_anchor - reference.per_anchor)
        if diff.max(initial=0.0) > 0:
            return int(np.argmax(diff))
    if output.grad_emb is not None and reference.grad_emb is not None:
        rows = np.linalg.norm(output.grad_emb - reference.grad_emb, axis=1)
        if rows.max(initial=0.0) > 0:
            return int(np.argmax(rows))
    if weights is not None:
        delta = np.abs(weights.candidate - weights.reference)
        if delta.max(initial=0.0) > 0:
            return int(np.unravel_index(np.argmax(delta), delta.shape)[0])
    return None


def _worst_pair(anchor: int | None, weights: _PairWeights | None) -> tuple[int, int] | None:
    if weights is None:
        return None
    delta = np.abs(weights.candidate - weights.reference)
    if delta.max(initial=0.0) == 0:
        return None
    if anchor is not None and anchor < delta.shape[0] and delta[anchor].max(initial=0.0) > 0:
        return anchor, int(np.argmax(delta[anchor]))
    i, j = np.unravel_index(np.argmax(delta), delta.shape)
    return int(i), int(j)


def _pairs_of(setup: Setup, comparison: Comparison, profile: Profile):
    inputs, reference = comparison.inputs, comparison.reference
    ref_is_batch = inputs.ref is None
    ref_labels = inputs.labels if ref_is_batch else inputs.ref_labels
    return build_pairs(reference.sim, inputs.labels, ref_labels, ref_is_batch, profile, inputs.ref_self)


def per_anchor_is_per_proxy(setup, comparison: Comparison) -> bool:
    """Whether the loss's per_anchor holds one value per proxy (a row of ref), not per sample: so
    its catalog entry says ("per_anchor is per proxy"), or its length is not the batch's."""
    reference = comparison.reference
    if reference is None or comparison.inputs.ref is None:
        return False
    return setup.per_proxy or reference.per_anchor.shape[0] != comparison.inputs.m


def _anchor_facts(setup, comparison, i, cand_per_anchor, source, singles, outcomes, per_proxy=False) -> AnchorFacts:
    reference = comparison.reference
    pairs = _pairs_of(setup, comparison, setup.profile)
    P, N = int(pairs.pos[i].sum()), int(pairs.neg[i].sum())
    up, un = int(reference.pos_used[i].sum()), int(reference.neg_used[i].sum())
    if P == 0 and N == 0:
        status = "no positive and no negative: contributes nothing"
    elif up == 0 and un == 0:
        status = "skipped: none of its pairs is used"
        if P and N and "eps" in reference.hyper and reference.hyper.get("eps") is not None:
            status += " (its mined positive or negative set is empty)"
    elif P == 0:
        status = "no positive (a singleton class): negatives only"
    elif N == 0:
        status = "no negative: positives only"
    else:
        status = "used"
    tol = comparison.tolerance
    rules = []
    for v in singles:
        result = outcomes[v].result
        if result is None:
            continue
        row_changed = not (np.array_equal(result.pos_used[i], reference.pos_used[i]) and np.array_equal(result.neg_used[i], reference.neg_used[i]))
        used_text = f"used pairs {up}+{un} -> {int(result.pos_used[i].sum())}+{int(result.neg_used[i].sum())}"
        if per_proxy:  # per_anchor rows are proxies: a sample has no contribution of its own
            if row_changed:
                rules.append(f"{v.label}: {used_text}")
            continue
        value_changed = not tol.value_ok(result.per_anchor[i], reference.per_anchor[i])
        if row_changed or value_changed:
            rules.append(f"{v.label}: contribution {_two(reference.per_anchor[i], result.per_anchor[i])}, {used_text}")
    label = int(comparison.inputs.labels[i])
    cand = None if cand_per_anchor is None else float(cand_per_anchor[i])
    own = None if per_proxy else float(reference.per_anchor[i])
    return AnchorFacts(i, label, P, N, up, un, status, own, cand, "per proxy (see worst proxy)" if per_proxy else source,
                       tuple(rules))


def _pair_facts(setup, comparison, pair, weights: _PairWeights, singles, outcomes) -> PairFacts:
    i, j = pair
    reference = comparison.reference
    inputs = comparison.inputs
    pairs = _pairs_of(setup, comparison, setup.profile)
    S = reference.sim
    own = (inputs.ref is None and i == j) or (inputs.ref_self is not None and inputs.ref_self[i] == j)
    if pairs.self_pair[i, j]:
        relation = "self pair (same sample)" if own else (
            f"self pair by value (same label, S = {S[i, j]:.9g} >= {setup.profile.self_threshold!r}: "
            "a duplicate or near-duplicate dropped by self_rule='value')")
    elif pairs.pos[i, j]:
        relation = "positive"
    elif pairs.neg[i, j]:
        relation = "negative"
    else:
        relation = "not a pair"
    used = bool(reference.pos_used[i, j] or reference.neg_used[i, j])
    mining = _mining_text(setup, reference, pairs, i, j)
    tol = comparison.tolerance
    rules = []
    scale = float(np.max(np.abs(reference.grad_sim), initial=0.0))
    for v in singles:
        result = outcomes[v].result
        if result is None:
            continue
        alt_used = bool(result.pos_used[i, j] or result.neg_used[i, j])
        moved = abs(result.grad_sim[i, j] - reference.grad_sim[i, j]) > tol.grad_atol + tol.grad_rtol * scale
        if alt_used != used or moved:
            rules.append(f"{v.label}: {'used' if alt_used else 'not used'}, G_ij {_two(reference.grad_sim[i, j], result.grad_sim[i, j])}")
    return PairFacts(i, j, relation, float(S[i, j]), used, weights.observable, float(weights.reference[i, j]),
                     float(weights.candidate[i, j]), weights.source,
                     mining, tuple(rules))


def _mining_text(setup: Setup, reference, pairs, i: int, j: int) -> str | None:
    """The MS-style mining margin (losses whose boundary parameter is eps), with the exact boundary flagged."""
    eps = reference.hyper.get("eps") if setup.entry.boundary_param == "eps" else None
    if eps is None:
        return None
    S = reference.sim
    pos, neg = pairs.pos[i], pairs.neg[i]
    shift_pair = setup.profile.mining_compare == "shift_pair"
    boundary = " -> exactly on the boundary (rule mining_compare decides how the comparison is evaluated)"
    if neg[j]:
        if not pos.any():
            return "negative of an anchor with no positive: never mined"
        min_pos = float(S[i, pos].min())
        rule = f"S + {eps} > min positive S = {min_pos:.9g}" if shift_pair else f"S > min positive S - {eps} = {min_pos - eps:.9g}"
        on = S[i, j] + eps == min_pos or S[i, j] == min_pos - eps
        return f"kept iff {rule}; margin {S[i, j] + eps - min_pos:.3g}" + (boundary if on else "")
    if pos[j]:
        if not neg.any():
            return "positive of an anchor with no negative: never mined"
        max_neg = float(S[i, neg].max())
        rule = f"S - {eps} < max negative S = {max_neg:.9g}" if shift_pair else f"S < max negative S + {eps} = {max_neg + eps:.9g}"
        on = S[i, j] - eps == max_neg or S[i, j] == max_neg + eps
        return f"kept iff {rule}; margin {max_neg + eps - S[i, j]:.3g}" + (boundary if on else "")
    return None


def _reduction_note(reference) -> str:
    active = (reference.pos_used | reference.neg_used).any(axis=1)
    m = active.shape[0]
    empty = np.nonzero(~active)[0].tolist()
    return (f"reduction: {int(active.sum())} of {m} anchors have a used pair; anchors without one: {empty} "
            "(the reference divides by all m, as its profile says)")


def _non_finite(output) -> list[str]:
    """'the candidate returned nan ...' with the rows where it appears (never 'differs by nan')."""
    notes = []
    value = np.asarray(output.value, dtype=np.float64)
    if not np.all(np.isfinite(value)):
        notes.append(f"the candidate's value is {float(value)!r} (not a number the reference can be compared with)")
    for name in ("grad_emb", "grad_ref", "per_anchor"):
        array = getattr(output, name, None)
        if array is None:
            continue
        array = np.asarray(array, dtype=np.float64)
        bad = ~np.isfinite(array)
        if bad.any():
            rows = np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0].tolist()
            kinds = sorted({"nan" if np.isnan(v) else "inf" for v in array[bad]})
            what = {"grad_emb": "dL/dX", "grad_ref": "dL/dref", "per_anchor": "per-anchor contribution"}[name]
            notes.append(f"the candidate's {what} holds {' and '.join(kinds)} at rows {rows[:16]}"
                         + (f" ({len(rows)} rows)" if len(rows) > 16 else ""))
    return notes


def _notes(setup: Setup, comparison: Comparison, checks) -> list[str]:
    notes = []
    if comparison.reference_error is not None and comparison.candidate_error is None:
        notes.append(f"the reference refuses this batch under profile '{setup.profile.name}' (its code raises here: "
                     f"degenerate={setup.profile.degenerate!r}) but the candidate returned a value")
    if comparison.candidate_error is not None and comparison.reference_error is None:
        notes.append("the candidate raised where the reference defines the loss")
        if isinstance(comparison.candidate_error, TypeError) and comparison.inputs.ref is not None:
            notes.append("this batch has a reference set: the candidate is called with ref=, ref_labels= (and ref_self= "
                         "when set) keywords; draw batches with with_ref=False for a candidate without one")
    output = comparison.output
    non_finite = _non_finite(output) if output is not None else []
    notes.extend(non_finite)
    by_name = {c.name: c for c in checks}
    value = by_name.get("value")
    grads = [c for c in checks if c.name != "value" and c.name != "per_anchor"]
    if value is not None and not value.ok and grads and all(c.ok for c in grads) and not non_finite:
        notes.append(f"gradients agree but the values differ by {comparison.output.value - comparison.reference.loss:.6g}: "
                     "a term constant in the embeddings (an offset, e.g. S instead of S - lambda, or another constant)")
    if comparison.fd_kinks is not None and comparison.fd_kinks.any():
        notes.append(f"finite differences: {int(comparison.fd_kinks.sum())} coordinates left out (a kink within the step)")
    return notes


def _format(report: MismatchReport) -> str:
    hyper = ", ".join(f"{k}={v!r}" for k, v in report.hyper.items())
    verdict = "agrees with" if report.agree else "DISAGREES with"
    lines = [f"gpwref oracle: the candidate ({report.framework}, {report.dtype}) {verdict} '{report.loss}' under profile "
             f"'{report.profile}' ({hyper})"]
    b = report.batch
    ref = "" if b.ref is None else f", reference set of {b.ref.shape[0]} rows labelled {b.ref_labels.tolist()}"
    lines.append(f"batch: m={b.m}, d={b.embeddings.shape[1]}, labels {b.labels.tolist()}{ref}, normalize={b.normalize}, "
                 f"edge cases {list(b.cases)} (the embeddings: report.batch.embeddings)")
    if report.reference_error:
        lines.append(f"reference: refuses the batch: {report.reference_error}")
    if report.candidate_error:
        lines.append(f"candidate: raised {report.candidate_error}")
    if report.checks:
        lines.append(f"checks (error / allowed, <= 1 passes; gradients by {report.grad_source}):")
        for c in report.checks:
            what = (f"reference {report.reference_value:.10g}, candidate {report.candidate_value:.10g}" if c.name == "value"
                    else f"max |difference| {c.difference:.3g}, max |reference| {c.reference:.3g}")
            lines.append(f"  {c.name:10s} {'ok  ' if c.ok else 'FAIL'} ratio {c.ratio:.3g}  ({what})")
    x = report.worst_proxy
    rows = "per-anchor"
    if report.reference_per_anchor is not None and report.batch.ref is not None and (
            x is not None or (report.worst_anchor is not None and report.worst_anchor.reference is None)):
        rows = "per-proxy"
    if report.reference_per_anchor is not None and len(report.reference_per_anchor) <= 16:
        lines.append(f"{rows} contributions, reference: " + _vector(report.reference_per_anchor))
        if report.candidate_per_anchor is not None:
            source = x.candidate_source if x is not None else report.worst_anchor.candidate_source if report.worst_anchor else ""
            lines.append(f"{rows} contributions, candidate ({source}): " + _vector(report.candidate_per_anchor))
    if x is not None:
        lines.append(f"worst proxy: row {x.index} of ref (label {x.label}): contribution reference {x.reference:.6g}, "
                     f"candidate {x.candidate:.6g} ({x.candidate_source})")
    a = report.worst_anchor
    if a is not None:
        cand = "unknown" if a.candidate is None else f"{a.candidate:.6g} ({a.candidate_source})"
        lines.append(f"worst anchor: {a.index} (label {a.label}): {a.positives} positives and {a.negatives} negatives before "
                     f"mining, {a.used_positives} + {a.used_negatives} used; {a.status}")
        if a.reference is None:
            lines.append("  contribution: none of its own (the loss sums per proxy)")
        else:
            lines.append(f"  contribution: reference {a.reference:.6g}, candidate {cand}")
        for rule in a.rules:
            lines.append(f"  changed by: {rule}")
    p = report.worst_pair
    if p is not None:
        lines.append(f"worst pair: ({p.anchor}, {p.item}), {p.relation}, S = {p.similarity:.9g}, "
                     f"{'used' if p.used else 'not used'} by the reference")
        lines.append(f"  {p.observable}: reference {p.reference:.6g}, candidate {p.candidate:.6g} ({p.candidate_source})")
        if p.mining:
            lines.append(f"  mining: {p.mining}")
        for rule in p.rules:
            lines.append(f"  changed by: {rule}")
    for note in report.notes:
        lines.append(f"note: {note}")
    if not report.agree:
        if report.alternatives:
            lines.append(f"what would make the candidate agree ({len(report.alternatives)} of {report.tried} alternatives tried agree "
                         "on this batch):")
            for alternative in report.alternatives[:_SHOWN]:
                lines.append(f"  * {alternative}")
            if len(report.alternatives) > _SHOWN:
                lines.append(f"  ... and {len(report.alternatives) - _SHOWN} more (report.alternatives)")
        elif report.candidate_error:
            lines.append(f"no known profile, rule, default or reduction raises on this batch as the candidate does "
                         f"({report.tried} alternatives tried)")
        else:
            lines.append(f"no known profile, rule, default or reduction makes the candidate agree ({report.tried} alternatives "
                         "tried): the difference is in the formula itself")
    return "\n".join(lines)


def _two(before: float, after: float) -> str:
    """'a -> b' with just enough digits (6 to 12) to show that a and b differ."""
    for digits in range(6, 13):
        a, b = f"{before:.{digits}g}", f"{after:.{digits}g}"
        if a != b:
            break
    return f"{a} -> {b}"


def _vector(values) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in np.asarray(values)) + "]"
