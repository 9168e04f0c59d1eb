"""Profiles side by side with the catalog's defaults: ``table`` (one profile) and ``diff`` /
``format_diff`` (two). Kept apart from ``gpwref.profiles`` so that the profiles, which the losses
import, do not import the catalog, which imports the losses."""

from __future__ import annotations

from typing import Mapping

from .catalog import CATALOG, get_entry
from .profiles import Profile, get_profile


def table(profile: Profile) -> str:
    """A profile's rules (with where each was seen) and the defaults of every loss it defines."""
    lines = [f"profile {profile.name}: {profile.description}", "", "rule | value | where seen", "--- | --- | ---"]
    for key, value in profile.rules().items():
        lines.append(f"{key} | {value} | {profile.sources.get(key, '')}")
    lines += ["", "loss | defaults", "--- | ---"]
    for entry in CATALOG:
        if profile.name in entry.defaults:
            lines.append(f"{entry.name} | {_format_mapping(entry.defaults[profile.name])}")
    return "\n".join(lines)


def _format_mapping(mapping: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


def diff(a: "str | Profile", b: "str | Profile", *, loss: str | None = None) -> list[tuple[str, str, object, object]]:
    """Rows (what, key, value in a, value in b) on which two profiles differ.

    ``what`` is "rule" for a cross-cutting rule, or a loss name for that loss's defaults
    ("(absent)" where a profile does not define the loss; key "defined" where only one profile
    defines it). ``loss`` keeps the rules and that one loss's defaults.
    """
    pa, pb = get_profile(a), get_profile(b)
    entries = CATALOG if loss is None else (get_entry(loss),)
    rows: list[tuple[str, str, object, object]] = []
    ra, rb = pa.rules(), pb.rules()
    for key in ra:
        if ra[key] != rb[key]:
            rows.append(("rule", key, ra[key], rb[key]))
    absent = "(absent)"
    for entry in entries:
        da, db = entry.defaults.get(pa.name), entry.defaults.get(pb.name)
        if da is None and db is None:
            continue
        if da is None or db is None:
            rows.append((entry.name, "defined", da is not None, db is not None))
            continue
        for key in sorted(set(da) | set(db)):
            va, vb = da.get(key, absent), db.get(key, absent)
            if va != vb:
                rows.append((entry.name, key, va, vb))
    return rows


def format_diff(a: "str | Profile", b: "str | Profile", *, loss: str | None = None) -> str:
    """``diff`` as a Markdown table, with where each rule was seen (``Profile.sources``)."""
    pa, pb = get_profile(a), get_profile(b)
    rows = diff(pa, pb, loss=loss)
    lines = [f"what | key | {pa.name} | {pb.name} | where seen", "--- | --- | --- | --- | ---"]
    for what, key, va, vb in rows:
        if key == "defined":
            va, vb = ("defined" if va else "absent"), ("defined" if vb else "absent")
        source = "self_rule" if key == "self_threshold" else key  # the threshold belongs to the self rule
        where = "; ".join(f"{p.name}: {p.sources[source]}" for p in (pa, pb) if what == "rule" and source in p.sources)
        if what != "rule":
            where = "the loss's catalog entry" + (" (defaults under one profile only)" if key == "defined" else " (defaults)")
        lines.append(f"{what} | {key} | {va} | {vb} | {where}")
    if not rows:
        lines.append("(no difference) | | | |")
    return "\n".join(lines)
