"""The catalog: one small frozen entry per loss. Tests, benchmarks, the CLI and the docs iterate it.

A new loss is one module in ``gpwref/losses/`` (formula docstring + ``value_and_grad``) plus one
entry here. An entry declares; it does not check (the checks are templates in ``tests/`` and
``verification/`` that run over every entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .errors import GpwrefError
from .losses import multi_similarity
from .losses import histogram, lifted_structure, npair


@dataclass(frozen=True)
class Hyper:
    """A hyper-parameter's rule, as text for error messages and as a predicate."""

    rule: str
    check: Callable[[object], bool]


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive() -> Hyper:
    return Hyper("a finite number > 0", lambda v: _is_real(v) and v > 0)


def non_negative() -> Hyper:
    return Hyper("a finite number >= 0", lambda v: _is_real(v) and v >= 0)


def real() -> Hyper:
    return Hyper("a finite number", _is_real)


def optional_non_negative() -> Hyper:
    return Hyper("None (no mining) or a finite number >= 0", lambda v: v is None or (_is_real(v) and v >= 0))


def positive_int() -> Hyper:
    return Hyper("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)


def one_of(*choices: object) -> Hyper:
    return Hyper(f"one of {list(choices)}", lambda v: v in choices)


@dataclass(frozen=True)
class LossEntry:
    name: str
    function: Callable  # value_and_grad(S, pairs, profile, **hyper) -> PairResult
    hyper: Mapping[str, Hyper]
    defaults: Mapping[str, Mapping[str, object]]  # profile name -> hyper-parameter defaults
    reference: str
    similarities: tuple[str, ...]  # which of "self", "negative-relative", "positive-relative" the weights use
    gpw_sign: bool = True  # G <= 0 on positives and >= 0 on negatives
    supports_ref: bool = True
    variants: tuple[Mapping[str, object], ...] = ({},)  # hyper overrides that `verify` runs as separate rows
    limits: str = ""  # known limits, with reasons
    boundary_param: str | None = None  # the hyper-parameter a drawn batch's exact-boundary value sets
    family: str = "pair"  # "pair" (sample-sample), "proxy" (sample-proxy), "ranking", "other"

    @property
    def doc(self) -> str:
        import inspect

        return inspect.getmodule(self.function).__doc__ or ""


CATALOG: tuple[LossEntry, ...] = (
    LossEntry(
        name="multi_similarity",
        function=multi_similarity.value_and_grad,
        hyper={"alpha": positive(), "beta": positive(), "lam": real(), "eps": optional_non_negative()},
        defaults={
            "paper": {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": 0.1},
            "official": {"alpha": 2.0, "beta": 40.0, "lam": 0.5, "eps": 0.1},
            "pml": {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": None},
        },
        reference="Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning. CVPR 2019",
        similarities=("self", "negative-relative", "positive-relative"),
        variants=({}, {"eps": None}),
        boundary_param="eps",
    ),
    LossEntry(
        name="lifted_structure",
        function=lifted_structure.value_and_grad,
        hyper={
            "form": one_of(*lifted_structure.FORMS),
            "distance": Hyper(
                f"one of {list(lifted_structure.DISTANCES)}, or a mapping {{'song': .., 'generalized': ..}} of them",
                lambda v: lifted_structure.is_per_form(v, lambda x: x in lifted_structure.DISTANCES),
            ),
            "pos_margin": Hyper("a finite number, or a mapping {'song': .., 'generalized': ..} of them",
                                lambda v: lifted_structure.is_per_form(v, _is_real)),
            "neg_margin": Hyper("a finite number, or a mapping {'song': .., 'generalized': ..} of them",
                                lambda v: lifted_structure.is_per_form(v, _is_real)),
        },
        defaults={
            "paper": {
                "form": "song",
                "distance": {"song": "euclidean", "generalized": "cosine"},
                "pos_margin": {"song": 0.0, "generalized": 1.0},
                "neg_margin": {"song": 1.0, "generalized": 0.0},
            },
            "pml": {"form": "song", "distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0},
        },
        reference="Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature Embedding. "
        "CVPR 2016; generalized: Hermans, Beyer, Leibe. In Defense of the Triplet Loss. arXiv 2017, and the MS "
        "paper's form (Wang et al. CVPR 2019)",
        similarities=("self", "negative-relative"),
        supports_ref=False,
        variants=({"form": "song"}, {"form": "generalized"}),
        limits="batch only: Song's J_ij uses the negatives of the positive j as an anchor, which a reference item "
        "does not have (the generalized form shares the entry); song weights use self (D_ap) and negative-relative "
        "similarity, generalized only negative-relative; euclidean distances come from S, so pairs with "
        "2 - 2S <= 1e-12 are duplicates (D = 0, zero weight)",
    ),
    LossEntry(
        name="npair",
        function=npair.value_and_grad,
        hyper={},
        defaults={"paper": {}, "pml": {}},
        reference="Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. NeurIPS 2016 "
        "(pair choice and cosines as pytorch-metric-learning NPairsLoss)",
        similarities=("negative-relative",),
        supports_ref=False,
        limits="batch only: one (anchor, positive) pair per class is chosen inside the batch and each chosen "
        "positive is every other anchor's negative; Sohn's L2 regulariser acts on raw embedding norms, not on S, "
        "and is left to the caller",
    ),
    LossEntry(
        name="histogram",
        function=histogram.value_and_grad,
        hyper={
            "n_bins": positive_int(),
            "pair_rule": one_of("all", "triplets"),
            "node_precision": one_of("float64", "float32"),
        },
        defaults={
            "paper": {"n_bins": 100, "pair_rule": "all", "node_precision": "float64"},
            "pml": {"n_bins": 100, "pair_rule": "triplets", "node_precision": "float32"},
        },
        reference="Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016 "
        "(discretisation as pytorch-metric-learning HistogramLoss)",
        similarities=("positive-relative",),
        variants=({}, {"n_bins": 4}),
        limits="G is piecewise constant and jumps at the nodes (a pair on a node takes the bin starting there); "
        "under node_precision='float32' (PML) L itself jumps by ~1e-6 relative at the nodes; pair similarities "
        "must lie in [-1, 1] (cosines); s = 1 lies in the last bin (PML crashes there)",
    ),
    # --- new entries above this line (one LossEntry per loss; keep this marker) ---
)

LOSSES: tuple[str, ...] = tuple(entry.name for entry in CATALOG)


def get_entry(loss: str) -> LossEntry:
    for entry in CATALOG:
        if entry.name == loss:
            return entry
    raise GpwrefError("loss", f"must be one of {list(LOSSES)}", repr(loss))


def resolve_hyper(entry: LossEntry, profile_name: str, overrides: Mapping[str, object]) -> dict[str, object]:
    if profile_name not in entry.defaults:
        raise GpwrefError(
            "profile",
            f"loss '{entry.name}' has no '{profile_name}' convention; it is defined under {sorted(entry.defaults)}",
        )
    params = dict(entry.defaults[profile_name])
    for key, value in overrides.items():
        if key not in entry.hyper:
            raise GpwrefError(key, f"is not a hyper-parameter of '{entry.name}'; accepted: {sorted(entry.hyper)}")
        params[key] = value
    for key, value in params.items():
        if not entry.hyper[key].check(value):
            raise GpwrefError(key, f"'{entry.name}' needs {entry.hyper[key].rule}", repr(value))
    return params
