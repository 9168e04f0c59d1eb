"""The ``gpwref`` command. Each sub-command lives in its own module, imported only when used.

    gpwref verify [--seed N] [--batches N] [--loss NAME ...] [--profile NAME ...]
    gpwref list                              the catalog, one line per loss
    gpwref profiles show NAME | diff A B     convention profiles as tables
    gpwref plot LOSS ...                     GPW weight plots (PNG)
    gpwref reproduce ...                     the CUB-200 / Omniglot training reproduction
"""

from __future__ import annotations

import argparse
import sys


def _verify(argv: list[str]) -> int:
    try:
        from verification.runner import main
    except ImportError as error:  # torch or hypothesis missing
        print(f"gpwref verify needs the verification extras (pip install 'gpwref[verify]'): {error}", file=sys.stderr)
        return 2
    return main(argv)


def _list(argv: list[str]) -> int:
    from .catalog import CATALOG

    argparse.ArgumentParser(prog="gpwref list", description="List the catalog").parse_args(argv)
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
    from verification.reproduce_cub200 import main

    return main(argv)


COMMANDS = {"verify": _verify, "list": _list, "profiles": _profiles, "plot": _plot, "reproduce": _reproduce}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
