"""``gpwref list --json`` prints every catalog entry, and each entry's ``counterparts`` names the real
implementations its ``verification/refs/<name>.py`` runs (the library cannot import the suite, so the
names are written in the entry and checked here)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpwref import CATALOG
from gpwref.cli import main

ROOT = Path(__file__).resolve().parent.parent
PML = "pytorch-metric-learning"


def _printed_json(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def _same(printed, declared):
    """A printed JSON value against the entry's Python value (tuples print as lists, inf as text)."""
    if isinstance(declared, dict):
        return isinstance(printed, dict) and set(printed) == {str(k) for k in declared} and all(
            _same(printed[str(k)], v) for k, v in declared.items())
    if isinstance(declared, (tuple, list)):
        return isinstance(printed, list) and len(printed) == len(declared) and all(map(_same, printed, declared))
    if isinstance(declared, float) and not math.isfinite(declared):
        return printed == str(declared)
    return printed == declared and type(printed) is type(declared)


def test_list_json_prints_every_entry_as_declared():
    printed = _printed_json(["list", "--json"])
    assert [row["name"] for row in printed] == [entry.name for entry in CATALOG]
    for row, entry in zip(printed, CATALOG):
        assert row["family"] == entry.family
        assert row["profiles"] == list(entry.defaults)
        assert row["supports_ref"] is entry.supports_ref
        assert row["counterparts"] == dict(entry.counterparts)
        assert _same(row["variants"], list(entry.variants)), entry.name
        assert list(row["hyper"]) == list(entry.hyper), entry.name
        for name, rule in entry.hyper.items():
            assert row["hyper"][name]["rule"] == rule.rule
            for profile, defaults in entry.defaults.items():
                assert _same(row["hyper"][name]["defaults"][profile], defaults[name]), (entry.name, name, profile)


def test_python_dash_m_gpwref_list_json_is_valid_json():
    done = subprocess.run([sys.executable, "-m", "gpwref", "list", "--json"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert [row["name"] for row in json.loads(done.stdout)] == [entry.name for entry in CATALOG]


def _real_callables(refs):
    """Distinct real implementations of a refs module: (display name, callable), first profile first."""
    seen = {}
    for per_profile in refs.real.values():
        for display, impl in per_profile.items():
            seen.setdefault(impl, display)
    return [(display, impl) for impl, display in seen.items()]


def _identifier(text):
    return re.match(r"[A-Za-z_]\w*", text).group(0)


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.name)
def test_counterparts_are_the_real_implementations_the_refs_module_runs(entry):
    module = importlib.import_module(f"gpwref_verification.refs.{entry.name}")
    reals = _real_callables(module.REFS)
    module_text = inspect.getsource(module)
    sources_read = (ROOT / "docs" / "losses.md").read_text()

    runs_pml = [(d, f) for d, f in reals if d.startswith(PML)]
    others = [(d, f) for d, f in reals if not d.startswith(PML)]
    declared_others = {k: v for k, v in entry.counterparts.items() if k != PML}
    assert (PML in entry.counterparts) == bool(runs_pml), (entry.name, [d for d, _ in reals])
    assert len(declared_others) == len(others), (entry.name, [d for d, _ in others], declared_others)

    # each implementation is one the refs module or the docs' sources table names
    for key in declared_others:
        name = key.split(" (")[0]
        assert name.lower() in (module_text + sources_read).lower(), (entry.name, key)
    # each class or function named is one the refs module calls or transcribes
    for key, value in entry.counterparts.items():
        for part in value.split(" + "):
            ident = _identifier(part)
            texts = [module_text, *(d for d, _ in reals)]
            texts += [inspect.getsource(inspect.getmodule(f)) for _, f in reals]
            assert any(ident in text for text in texts), (entry.name, key, ident)
            if key == PML:
                pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
                assert hasattr(pml_losses, ident), (entry.name, ident)
