"""A loss's catalog entry (`LossEntry`) and the rules its hyper-parameters must meet (`Hyper`).

Each ``gpwref/losses/<name>.py`` ends with ``ENTRY = LossEntry(...)`` beside its formula;
``gpwref/catalog.py`` lists the entries. An entry declares; it does not check (the checks are templates
in ``tests/`` and ``verification/`` that run over every entry). This module imports no loss module.

A rule is its text (for error messages) and ``accept(value)``: the value as a plain Python value
(int, float, bool, str, tuple, dict), or ``REFUSED``. Numbers may come as Python, NumPy or 0-d
array/tensor scalars; the loss always receives Python ``int``/``float``.
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

REFUSED = object()  # what a rule's ``accept`` returns for a value it does not take


@dataclass(frozen=True)
class Hyper:
    """A hyper-parameter's rule: ``rule`` is its text, ``accept`` returns the plain value or REFUSED."""

    rule: str
    accept: Callable[[object], object]

    def check(self, value) -> bool:
        return self.accept(value) is not REFUSED


def _plain_scalar(value):
    """A Python int or float for a real scalar (Python, NumPy, 0-d array or tensor); REFUSED otherwise.

    bool is never a number. Objects other than NumPy's are taken by duck typing (``ndim == 0`` and
    ``.item()``), so a torch 0-d tensor works without importing torch."""
    if isinstance(value, (bool, np.bool_)):
        return REFUSED
    if isinstance(value, int):
        return value if type(value) is int else int(value)
    if isinstance(value, float):
        return value if type(value) is float else float(value)
    if isinstance(value, np.generic) and not isinstance(value, (np.integer, np.floating)):
        return REFUSED  # complex, datetime, str, ... scalars
    if isinstance(value, np.ndarray) and value.dtype.kind not in "iuf":
        return REFUSED
    if getattr(value, "ndim", None) != 0 or not callable(getattr(value, "item", None)):
        return REFUSED
    item = value.item()
    if type(item) not in (int, float):  # bool, complex, ... items are not numbers
        return REFUSED
    return item


def _is_finite(x) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # a Python int too large for a float
        return False


_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _show(bound: float) -> str:
    return "pi" if bound == math.pi else f"{bound:g}"


def number(*, above=None, at_least=None, below=None, at_most=None, noun: str = "a finite number") -> Hyper:
    """A finite real number within the given bounds (``above``/``below`` open, ``at_least``/``at_most`` closed)."""
    lower = (">", above) if above is not None else (">=", at_least) if at_least is not None else None
    upper = ("<", below) if below is not None else ("<=", at_most) if at_most is not None else None
    bounds = [bound for bound in (lower, upper) if bound]
    if lower and upper:
        text = (f"{noun} in {'(' if lower[0] == '>' else '['}{_show(lower[1])}, "
                f"{_show(upper[1])}{')' if upper[0] == '<' else ']'}")
    else:
        text = " ".join([noun, *(f"{op} {_show(bound)}" for op, bound in bounds)])

    def accept(value):
        x = _plain_scalar(value)
        if x is REFUSED or not _is_finite(x) or not all(_COMPARE[op](x, bound) for op, bound in bounds):
            return REFUSED
        return x

    return Hyper(text, accept)


def integer(*, at_least: int | None = None, odd: bool = False) -> Hyper:
    """An integer (>= ``at_least``, odd if asked); a float, even 2.0, is refused."""
    text = f"an {'odd ' if odd else ''}integer" + ("" if at_least is None else f" >= {at_least}")

    def accept(value):
        x = _plain_scalar(value)
        if type(x) is not int or (at_least is not None and x < at_least) or (odd and x % 2 == 0):
            return REFUSED
        return x

    return Hyper(text, accept)


def boolean() -> Hyper:
    """True or False (Python or NumPy bool)."""
    return Hyper("True or False", lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else REFUSED)


def one_of(*choices: str) -> Hyper:
    """One of the given names."""
    return Hyper(f"one of {list(choices)}", lambda v: str(v) if isinstance(v, str) and v in choices else REFUSED)


def optional(rule: Hyper, meaning: str) -> Hyper:
    """None (which means ``meaning``) or a value of ``rule``."""
    return Hyper(f"None ({meaning}) or {rule.rule}", lambda v: None if v is None else rule.accept(v))


def either(*rules: Hyper) -> Hyper:
    """A value of the first rule that takes it."""

    def accept(value):
        for rule in rules:
            accepted = rule.accept(value)
            if accepted is not REFUSED:
                return accepted
        return REFUSED

    return Hyper(", or ".join(rule.rule for rule in rules), accept)


def _accept_all(rule: Hyper, values) -> list | None:
    accepted = [rule.accept(v) for v in values]
    return None if any(a is REFUSED for a in accepted) else accepted


def non_empty_tuple(item: Hyper, noun: str) -> Hyper:
    """A non-empty tuple (or list) of values of ``item``; given back as a tuple. ``noun``: the items, plural."""

    def accept(value):
        if not isinstance(value, (tuple, list)) or len(value) == 0:
            return REFUSED
        items = _accept_all(item, value)
        return REFUSED if items is None else tuple(items)

    return Hyper(f"a non-empty tuple (or list) of {noun}", accept)


def non_empty_mapping(key: Hyper, value: Hyper, text: str) -> Hyper:
    """A non-empty mapping whose keys meet ``key`` and values meet ``value``; given back as a dict."""

    def accept(mapping):
        if not isinstance(mapping, Mapping) or len(mapping) == 0:
            return REFUSED
        keys, values = _accept_all(key, mapping.keys()), _accept_all(value, mapping.values())
        return REFUSED if keys is None or values is None else dict(zip(keys, values))

    return Hyper(text, accept)


def per_form(rule: Hyper, forms: tuple[str, ...]) -> Hyper:
    """A value of ``rule`` for every form, or a mapping with exactly one such value per form."""
    listed = ", ".join(f"{form!r}: .." for form in forms)

    def accept(value):
        if not isinstance(value, Mapping):
            return rule.accept(value)
        if set(value) != set(forms):
            return REFUSED
        values = _accept_all(rule, (value[form] for form in forms))
        return REFUSED if values is None else dict(zip(forms, values))

    return Hyper(f"{rule.rule}, or a mapping {{{listed}}} of them", accept)


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
    # A loss that is not a function of (S, labels) alone: ``embeddings_function(inputs, profile, params)
    # -> Result``, which the pipeline calls on the validated ``Inputs`` in place of the S stages
    # (``function`` then refuses S with the reason).
    embeddings_function: Callable | None = None
    # The real implementations this entry is verified against: implementation -> its class or function,
    # e.g. {"pytorch-metric-learning": "MultiSimilarityLoss"} ("gpwref list --json" prints it).
    counterparts: Mapping[str, str] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return inspect.getmodule(self.function).__doc__ or ""
