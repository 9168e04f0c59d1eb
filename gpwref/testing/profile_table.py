"""The profiles of one loss side by side: every rule and default on which any two of them differ."""

from __future__ import annotations

from ..catalog import get_entry
from ..errors import GpwrefError
from ..profiles import defaults_name, get_profile


def profile_table(loss: str, profiles=None) -> str:
    """A Markdown table, one column per profile that defines ``loss`` (or the ``profiles`` named).

    Rows: the cross-cutting rules that differ between the profiles, then the loss's
    hyper-parameter defaults that differ. ``gpwref.profile_diff.format_diff(a, b, loss=...)`` is the
    two-profile form with the source of each rule.
    """
    entry = get_entry(loss)
    names = list(entry.defaults) if profiles is None else list(profiles)
    if not names:
        raise GpwrefError("profiles", "must name at least one profile", repr(profiles))
    chosen = [get_profile(name) for name in names]
    for profile in chosen:
        if defaults_name(profile.name) not in entry.defaults:
            raise GpwrefError("profiles", f"loss '{loss}' is defined under {sorted(entry.defaults)}", repr(profile.name))
    lines = ["what | " + " | ".join(p.name for p in chosen), "--- | " + " | ".join("---" for _ in chosen)]
    for key in chosen[0].rules():
        values = [p.rules()[key] for p in chosen]
        if any(v != values[0] for v in values):
            lines.append(f"rule {key} | " + " | ".join(str(v) for v in values))
    keys = []
    for p in chosen:
        keys += [k for k in entry.defaults[defaults_name(p.name)] if k not in keys]
    for key in keys:
        values = [entry.defaults[defaults_name(p.name)].get(key, "(absent)") for p in chosen]
        if any(v != values[0] for v in values):
            lines.append(f"default {key} | " + " | ".join(str(v) for v in values))
    return "\n".join(lines)
