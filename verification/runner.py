"""``gpwref verify``: every check over the whole catalog and every profile, as one table.

Each row (loss x profile x variant) draws ``--batches`` batches from a fixed seed, cycling through
the edge cases of docs/oracle-contract.md#edge-cases (plain, singletons, one class, ties, duplicates, on a mining boundary,
m = 1, a reference set that excludes or includes the batch), runs verification.harness.check_case
on each, and reports the worst error per check group. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib

import numpy as np

import gpwref
from gpwref.testing import make_batch

from .harness import TOLERANCES, check_case, loss_refs

GROUPS = ("autograd", "fd", "loop", "real", "sign", "zeros", "raises")

# One knob set per batch, cycled: the plain case first, then each edge case of docs/oracle-contract.md#edge-cases.
SCHEDULE = (
    {"singletons": False, "one_class": False, "ties": False, "duplicates": False, "on_boundary": False, "with_ref": False},
    {"singletons": True, "with_ref": False},
    {"one_class": True, "with_ref": False},
    {"ties": True, "with_ref": False},
    {"duplicates": True, "with_ref": False},
    {"on_boundary": True, "with_ref": False},
    {"m": 1, "with_ref": False},
    {"with_ref": True, "ref_includes_batch": False},
    {"with_ref": True, "ref_includes_batch": True},
    {},  # anything
)


def rows(losses=None, profiles=None):
    for entry in gpwref.CATALOG:
        if losses and entry.name not in losses:
            continue
        for profile in entry.defaults:
            if profiles and profile not in profiles:
                continue
            for variant in entry.variants:
                yield entry, profile, dict(variant)


def draw(rng, knobs, entry, variant=None):
    """One batch for this schedule slot; a loss's ``REFS.draw_batch(rng, knobs, variant)`` draws it
    when the loss needs batches of its own shape (e.g. proxies with equal counts per class)."""
    custom = loss_refs(entry.name).draw_batch
    if custom is not None:
        return custom(rng, dict(knobs), dict(variant or {}))
    knobs = dict(knobs)
    if not entry.supports_ref:
        if knobs.get("with_ref"):
            return None
        knobs["with_ref"] = False
        knobs.pop("ref_includes_batch", None)
    m = knobs.pop("m", (2, 8))
    return make_batch(rng, m=m, d=(2, 5), **knobs)


def verify_row(entry, profile, variant, n_batches, seed, fd=True):
    worst = {g: None for g in GROUPS}
    failures, checks = [], 0
    row_key = zlib.crc32(repr((entry.name, profile, sorted(variant.items()))).encode())  # stable across processes
    rng = np.random.default_rng([seed, row_key])
    for k in range(n_batches):
        batch = draw(rng, SCHEDULE[k % len(SCHEDULE)], entry, variant)
        if batch is None:
            continue
        hyper = dict(variant)
        if entry.boundary_param and batch.boundary_eps is not None and entry.boundary_param not in hyper:
            hyper[entry.boundary_param] = batch.boundary_eps
        try:
            report = check_case(entry.name, profile, hyper, batch, fd=fd)
        except Exception as error:  # a crash is a failure, reported with its batch
            failures.append(f"batch {k} {batch.cases}: {type(error).__name__}: {error}")
            continue
        for name, err in report.errors.items():
            group = name.split(":")[0]
            checks += 1
            worst[group] = err if worst[group] is None else max(worst[group], err)
        if report.failures():
            failures.append(f"batch {k} {batch.cases} hyper={hyper}: " + ", ".join(f"{n}={report.errors[n]:.2e}" for n in report.failures()))
    return worst, checks, failures


def _fmt(value):
    return "-" if value is None else ("0" if value == 0 else f"{value:.1e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpwref verify", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=10, help="batches per row (default 10: each edge case once)")
    parser.add_argument("--loss", nargs="*", help="only these losses")
    parser.add_argument("--profile", nargs="*", help="only these profiles")
    parser.add_argument("--no-fd", action="store_true", help="skip finite differences (faster)")
    args = parser.parse_args(argv)
    for name in args.loss or ():
        gpwref.get_entry(name)
    all_rows = list(rows(args.loss, args.profile))
    header = ["loss", "profile", "variant", "checks", *GROUPS, "result"]
    table, any_failure, details = [], False, []
    start = time.time()
    for index, (entry, profile, variant) in enumerate(all_rows, 1):
        t0 = time.time()
        label = ",".join(f"{k}={v}" for k, v in variant.items()) or "default"
        print(f"[{index}/{len(all_rows)}] {entry.name} {profile} {label} ...", end="", file=sys.stderr, flush=True)
        worst, checks, failures = verify_row(entry, profile, variant, args.batches, args.seed, fd=not args.no_fd)
        ok = not failures and checks > 0
        any_failure |= not ok
        print(f" {'ok' if ok else 'FAIL'} ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
        table.append([entry.name, profile, label, str(checks), *(_fmt(worst[g]) for g in GROUPS), "pass" if ok else "FAIL"])
        details += [f"{entry.name}/{profile}/{label}: {f}" for f in failures[:3]]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in table:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
    print()
    print("worst normwise relative error per check group; tolerances: " + ", ".join(f"{g} {TOLERANCES[g]:g}" for g in GROUPS))
    print(f"{len(table)} rows, {sum(r[-1] == 'pass' for r in table)} passed, {sum(r[-1] != 'pass' for r in table)} failed, "
          f"seed {args.seed}, {args.batches} batches per row, {time.time() - start:.0f}s")
    for line in details:
        print("FAIL " + line)
    return 1 if any_failure else 0


if __name__ == "__main__":
    sys.exit(main())
