"""The ``gpwref`` command. Each sub-command lives in its own module, imported only when used.

    gpwref verify [--seed N] [--batches N] [--loss NAME ...] [--profile NAME ...]
    gpwref list [--json]                     the catalog, one line per loss (--json: every entry's fields)
    gpwref profiles show NAME | diff A B     convention profiles as tables
    gpwref plot LOSS [--out DIR] ...         GPW weight plots (two PNGs into DIR, default the current folder)
    gpwref reproduce ...                     the CUB-200 / Omniglot training reproduction
    gpwref docs-table [--check]              write (or check) docs/catalog.md from the catalog

verify, reproduce and docs-table run the verification suite, installed as ``gpwref_verification``
(the repository's ``verification/`` folder); the library itself never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path


def _suite(module: str):
    """``gpwref_verification.<module>``; from a source checkout that is not installed, the
    ``verification/`` folder beside this package, registered under that name."""
    try:
        return importlib.import_module(f"gpwref_verification.{module}")
    except ModuleNotFoundError as error:
        source = Path(__file__).resolve().parent.parent / "verification"
        if error.name != "gpwref_verification" or not (source / "__init__.py").is_file():
            raise
    spec = importlib.util.spec_from_file_location("gpwref_verification", source / "__init__.py",
                                                  submodule_search_locations=[str(source)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["gpwref_verification"] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"gpwref_verification.{module}")


def _verify(argv: list[str]) -> int:
    try:
        main = _suite("runner").main
    except ImportError as error:  # torch or hypothesis missing
        print(f"gpwref verify needs the verification extras (pip install 'gpwref[verify]'): {error}", file=sys.stderr)
        return 2
    return main(argv)


def _json_value(value):
    """A hyper-parameter default as JSON: tuples as lists, mapping keys as text, inf/NaN as text."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json_value(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def catalog_as_json() -> list[dict]:
    """Every catalog entry's declared fields, as ``gpwref list --json`` prints them."""
    from .catalog import CATALOG

    return [
        {
            "name": entry.name,
            "family": entry.family,
            "profiles": list(entry.defaults),
            "hyper": {
                name: {
                    "rule": rule.rule,
                    "defaults": {profile: _json_value(defaults[name])
                                 for profile, defaults in entry.defaults.items() if name in defaults},
                }
                for name, rule in entry.hyper.items()
            },
            "variants": [_json_value(variant) for variant in entry.variants],
            "supports_ref": entry.supports_ref,
            "counterparts": dict(entry.counterparts),
            "reference": entry.reference,
        }
        for entry in CATALOG
    ]


def _list(argv: list[str]) -> int:
    from .catalog import CATALOG

    parser = argparse.ArgumentParser(prog="gpwref list", description="List the catalog")
    parser.add_argument("--json", action="store_true", help="every entry as JSON: name, family, profiles, "
                        "hyper-parameters (rule, default per profile), variants, supports_ref, counterparts")
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(catalog_as_json(), indent=1, allow_nan=False))
        return 0
    for entry in CATALOG:
        print(f"{entry.name:28s} profiles={','.join(entry.defaults):20s} {entry.reference}")
    return 0


def _profiles(argv: list[str]) -> int:
    from .profile_diff import format_diff, table
    from .profiles import PROFILES, get_profile

    parser = argparse.ArgumentParser(prog="gpwref profiles", description="Show or compare convention profiles")
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print one profile's rules and per-loss defaults")
    show.add_argument("name", choices=sorted(PROFILES))
    compare = sub.add_parser("diff", help="the rules and defaults on which two profiles differ")
    compare.add_argument("a", choices=sorted(PROFILES))
    compare.add_argument("b", choices=sorted(PROFILES))
    args = parser.parse_args(argv)
    if args.action == "show":
        print(table(get_profile(args.name)))
    else:
        print(format_diff(args.a, args.b))
    return 0


def _plot(argv: list[str]) -> int:
    from .plots import main

    return main(argv)


def _reproduce(argv: list[str]) -> int:
    return _suite("reproduce_cub200").main(argv)


def _docs_table(argv: list[str]) -> int:
    return _suite("docs_table").main(argv)


COMMANDS = {"verify": _verify, "list": _list, "profiles": _profiles, "plot": _plot, "reproduce": _reproduce,
            "docs-table": _docs_table}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
