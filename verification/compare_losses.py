"""Train the same model with each loss of the catalog on the Omniglot open-set split and tabulate R@K.

    python -m gpwref_verification.compare_losses                # the paper's comparison set (MS twice: paper
                                                                # and official conventions), 5 seeds
    python -m gpwref_verification.compare_losses --losses all   # every catalog loss this trainer can run
    python -m gpwref_verification.compare_losses --losses multi_similarity:official triplet:paper:mining=semi_hard

(installed with ``pip install -e '.[repro]'``; from the repository root without installing,
``python -m verification.compare_losses`` is the same command.)

Everything but the loss is fixed: the Omniglot protocol of ``gpwref reproduce --dataset omniglot``
(small CNN from scratch, 32 x 32 ink input with training views resampled once from the original
drawing, 16 classes x 5 images per batch, Adam, the same iterations and schedule, one whole training
alphabet held out for selection and 10% of the other alphabets' characters as a second validation
split that is reported only), the same seeds, and
the loss computed by gpwref's float64 reference (``loss_path="reference"`` for every row, so that
the numerics and the cost column compare like with like). A row is ``NAME[:PROFILE[:KEY=VALUE,...]]``;
without a profile the loss's ``paper`` convention is used (hyper-parameters: that profile's
catalog defaults).

Reported per row (mean ± sample std over seeds): test Recall@1/2/4/8 and MAP@R of the evaluation
selected on the held-out alphabet (the honest number), plus best-on-test R@1 (the paper's way of
selecting) and last-iteration R@1, and the training cost: milliseconds per iteration (data, forward,
loss, backward, step; evaluation excluded), of which in the loss, and the wall time per run.
Outputs: ``loss_comparison.md`` and ``loss_comparison.json`` in ``--out`` (the command, machine and
wall time included); per-run folders (checkpoints, curves) in ``--work``; ``--resume`` reuses
finished runs.

Losses that need more than (embeddings, labels) -- learnable proxies, a query/gallery structure,
images -- are listed as excluded, with the reason.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import gpwref

PAPER_SET = ("multi_similarity", "multi_similarity:official", "contrastive", "triplet:paper:mining=semi_hard", "lifted_structure", "binomial_deviance", "npair", "histogram")
RUNNABLE_FAMILIES = ("pair", "ranking")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _resample_text(resample: str) -> str:
    return ("training views resampled once from the original image" if resample == "one-pass"
            else "training views resized, cropped and resized again (two passes)")


def _validation_text(config) -> str:
    """What is held out for validation and which split selects, as ``repro.train.prepare`` splits it."""
    characters = f"{int(round(100 * config.val_fraction))}% of the training characters" if config.val_fraction else ""
    if config.val_alphabets:
        alphabets = f"{config.val_alphabets} whole training alphabet{'s' if config.val_alphabets > 1 else ''}"
        text = f"{alphabets} held out for validation-based selection"
        if characters:
            text += (f", and {int(round(100 * config.val_fraction))}% of the other alphabets' characters as a second "
                     "validation split (reported, not used for selection)")
        return text
    return f"{characters} held out for validation-based selection" if characters else "no validation split"


def _validation_split_text(data: dict) -> str:
    val = data.get("val")
    if not val:
        return "none"
    if val.get("held_out") == "alphabets":
        return f"the {val['classes']} characters of the held-out alphabet(s) {', '.join(val['alphabets'])} (selection)"
    return f"{val['classes']} held-out training characters (selection)"


def _value(text: str):
    from .reproduce_cub200 import _value as parse

    return parse(text)


def parse_row(spec: str) -> tuple[str, str, dict]:
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise gpwref.GpwrefError("losses", "each row must be NAME[:PROFILE[:KEY=VALUE,...]]", repr(spec))
    name = parts[0]
    entry = gpwref.get_entry(name)
    profile = parts[1] if len(parts) > 1 and parts[1] else ("paper" if "paper" in entry.defaults else next(iter(entry.defaults)))
    hyper = {}
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            if "=" not in item:
                raise gpwref.GpwrefError("losses", "hyper-parameters must be KEY=VALUE", repr(item))
            key, value = item.split("=", 1)
            hyper[key] = _value(value)
    gpwref.catalog.resolve_hyper(entry, profile, hyper)  # refuse bad rows before training anything
    return name, profile, hyper


def row_label(name: str, profile: str, hyper: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in hyper.items())
    return f"{name} ({profile}{'; ' + extra if extra else ''})"


def row_key(name: str, profile: str, hyper: dict) -> str:
    extra = "_".join(f"{k}-{v}" for k, v in sorted(hyper.items()))
    return f"{name}__{profile}" + (f"__{extra}" if extra else "")


def all_rows() -> tuple[list[str], list[dict]]:
    rows, excluded = [], []
    for entry in gpwref.CATALOG:
        if entry.family in RUNNABLE_FAMILIES:
            rows.append(entry.name)
        else:
            excluded.append({"loss": entry.name, "family": entry.family, "reason": _exclusion_reason(entry.family)})
    return rows, excluded


def _exclusion_reason(family: str) -> str:
    return {
        "proxy": "needs learnable class proxies (trained parameters beside the network); the trainer optimises only the network",
        "other": "not a loss of (embeddings, labels) of a batch",
    }.get(family, f"family '{family}' is not trained by this script")


def raw_pixel_baseline(prepared) -> dict:
    """Recall@K of the test images' own pixels (the crop the network sees), no training."""
    from .repro.metrics import retrieval_metrics

    dataset, labels = prepared.eval_views("test")
    pixels = np.stack([np.asarray(dataset[i][0]).ravel() for i in range(len(dataset))]).astype(np.float64)
    pixels /= np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-12)
    return retrieval_metrics(pixels, labels, prepared.config.ks, tie=prepared.config.tie)


def _fmt(stat: dict | None, scale: float = 100.0) -> str:
    if stat is None:
        return "-"
    return f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"


def format_markdown(report: dict) -> str:
    lines = [
        "# Loss comparison on the Omniglot open-set split",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['environment']['platform']}, {report['environment']['cpu_count']} CPU cores, torch {report['environment']['torch']}"
        f" ({report['environment']['torch_threads']} threads per run), no GPU. Wall time of the whole comparison: {report['wall_s'] / 60:.1f} min"
        f" (shared machine: other jobs ran at the same time, so the timings are upper bounds and only roughly comparable between rows).",
        "",
        f"Protocol: {report['protocol']}",
        "",
        f"Seeds: {report['seeds']}. Test split: {report['data']['test']['classes']} characters, {report['data']['test']['images']} images"
        f" (alphabets {', '.join(report['data']['test_alphabets'])}); validation: {_validation_split_text(report['data'])}.",
        "",
        "Recall@K and MAP@R in %, mean ± sample std over the seeds, at the evaluation selected by validation Recall@1"
        " (\"best-on-test\" selects on the test set itself, as the MS paper's code does, and is optimistic).",
        "",
        "| loss | R@1 | R@2 | R@4 | R@8 | MAP@R | best-on-test R@1 | last R@1 | ms / iteration | of which loss | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        sel, agg = row["aggregate"]["val_selected"], row["aggregate"]
        cost = row["cost"]
        lines.append(
            f"| {row['label']} | {_fmt(sel['R@1'])} | {_fmt(sel['R@2'])} | {_fmt(sel['R@4'])} | {_fmt(sel['R@8'])} | {_fmt(sel['MAP@R'])} "
            f"| {_fmt(agg['best_on_test']['R@1'])} | {_fmt(agg['last']['R@1'])} | {cost['ms_per_iteration']:.0f} | {cost['ms_loss_per_iteration']:.1f} | {cost['wall_s_per_run']:.0f} |"
        )
    base = report["baselines"]
    lines.append(
        f"| (untrained network, iteration 0) | {_fmt(base['untrained']['R@1'])} | {_fmt(base['untrained']['R@2'])} | {_fmt(base['untrained']['R@4'])} | {_fmt(base['untrained']['R@8'])} | {_fmt(base['untrained']['MAP@R'])} | | | | | |"
    )
    raw = base["raw_pixels"]
    lines.append(
        f"| (raw pixels, no network) | {100 * raw['recall']['1']:.1f} | {100 * raw['recall']['2']:.1f} | {100 * raw['recall']['4']:.1f} | {100 * raw['recall']['8']:.1f} | {100 * raw['map_at_r']:.1f} | | | | | |"
    )
    ranked = sorted(report["rows"], key=lambda r: -r["aggregate"]["val_selected"]["R@1"]["mean"])
    lines += ["", "Ranking by mean validation-selected R@1: " + " > ".join(f"{r['label']} {100 * r['aggregate']['val_selected']['R@1']['mean']:.1f}" for r in ranked)]
    lines += ["", report["reading"], ""]
    if report["excluded"]:
        lines += ["Not trained here:", ""] + [f"- {e['loss']} ({e['family']}): {e['reason']}" for e in report["excluded"]] + [""]
    checks = [r for r in report["rows"] if not r["crosschecks_ok"]]
    lines.append(
        "Cross-checks (gpwref float64 vs independent code on sampled training batches): "
        + ("all passed." if not checks else "FAILED for " + ", ".join(r["label"] for r in checks) + " (see the JSON).")
    )
    return "\n".join(lines) + "\n"


def _seed_r1(row: dict) -> dict[int, float]:
    out = {}
    for entry in row.get("per_seed", []):
        recall = entry["val_selected"]["recall"]
        out[entry["seed"]] = recall[1] if 1 in recall else recall["1"]
    return out


def reading(rows: list[dict]) -> str:
    """A plain statement of what the numbers say about the paper's claim (computed, not written by hand).

    Runs with the same seed share the network's initialisation and the batch stream, so MS and the
    best other loss are also compared seed by seed (paired differences).
    """
    ms = [r for r in rows if r["loss"] == "multi_similarity"]
    others = [r for r in rows if r["loss"] != "multi_similarity"]
    if not ms or not others:
        return "No MS row or no other row: the paper's claim (MS beats the other pair losses) is not tested by this table."
    best_ms = max(ms, key=lambda r: r["aggregate"]["val_selected"]["R@1"]["mean"])
    best_other = max(others, key=lambda r: r["aggregate"]["val_selected"]["R@1"]["mean"])
    m = best_ms["aggregate"]["val_selected"]["R@1"]
    o = best_other["aggregate"]["val_selected"]["R@1"]
    gap = 100 * (m["mean"] - o["mean"])
    spread = 100 * max(m["std"], o["std"])
    if gap > 2 * spread and gap > 0:
        verdict = f"MS ({best_ms['label']}) is ahead of the best other loss ({best_other['label']}) by {gap:.1f} points of R@1, more than twice the larger seed spread ({spread:.1f})."
    elif gap < -2 * spread:
        verdict = f"MS ({best_ms['label']}) is behind the best other loss ({best_other['label']}) by {-gap:.1f} points of R@1, more than twice the larger seed spread ({spread:.1f}): on this proxy the paper's claim does not hold."
    else:
        verdict = f"MS ({best_ms['label']}) and the best other loss ({best_other['label']}) differ by {gap:+.1f} points of R@1, within twice the larger seed spread ({spread:.1f}): on this proxy they cannot be told apart with these seeds."
    a, b = _seed_r1(best_ms), _seed_r1(best_other)
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        diffs = np.array([100 * (a[s] - b[s]) for s in common])
        wins = int(np.sum(diffs > 0))
        verdict += (
            f" Paired by seed (same initialisation and batches): MS - {best_other['loss']} = {diffs.mean():+.1f} ± {diffs.std(ddof=1):.1f} points"
            f" over {len(common)} seeds, MS ahead in {wins} of {len(common)}."
        )
    beaten = [r["label"] for r in others if 100 * (m["mean"] - r["aggregate"]["val_selected"]["R@1"]["mean"]) > 2 * 100 * max(m["std"], r["aggregate"]["val_selected"]["R@1"]["std"])]
    if beaten:
        verdict += f" MS is ahead by more than twice the seed spread of: {', '.join(beaten)}."
    return (
        "Reading: the MS paper reports that MS beats the other pair losses (on CUB, Cars, SOP, In-Shop with BN-Inception). "
        + verdict
        + " This is a small CNN trained from scratch on one-bit characters for a few hundred iterations, not the paper's setting; every loss ran at its catalog defaults with the same lr,"
        " and that lr (and the crop scale) were picked from a few single-seed runs with the MS loss (verification/repro/config.py), which if anything favours MS."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m verification.compare_losses", description=__doc__.split("\n")[0])
    parser.add_argument("--losses", nargs="+", default=list(PAPER_SET), help="rows NAME[:PROFILE[:KEY=VALUE,...]], or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--crosscheck-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for loss_comparison.md / .json")
    parser.add_argument("--work", default="runs/compare_losses", help="folder for the per-run outputs")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs in --work")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from .repro import train
    from .repro.config import resolve

    started = time.perf_counter()
    excluded: list[dict] = []
    specs = args.losses
    if specs == ["all"]:
        specs, excluded = all_rows()
    try:
        rows = [parse_row(spec) for spec in specs]
    except gpwref.GpwrefError as error:
        print(f"compare_losses: refused: {error}", file=sys.stderr)
        return 2
    steps = tuple(sorted({max(1, int(round(f * args.iterations))) for f in (0.4, 0.8)}))  # as 1200/2400 of 3000
    base_overrides = dict(iterations=args.iterations, lr_steps=steps, eval_every=args.eval_every, crosscheck_every=args.crosscheck_every,
                          threads=args.threads, loss_path="reference", checkpoint_every=100)
    base = resolve("omniglot", overrides=base_overrides)
    log = train.Log(quiet=args.quiet)
    prepared = train.prepare(base, log)
    work = Path(args.work)
    results = []
    for name, profile, hyper in rows:
        config = resolve("omniglot", overrides=dict(base_overrides, loss=name, profile=profile, hyper=hyper))
        row_prepared = replace(prepared, config=config)
        label = row_label(name, profile, hyper)
        log(f"== {label}")
        per_seed, walls = [], []
        for seed in args.seeds:
            t0 = time.perf_counter()
            out = work / row_key(name, profile, hyper) / f"seed_{seed}"
            per_seed.append(train.train_seed(row_prepared, seed, out, resume=args.resume, overwrite=not args.resume, log=log, progress=not args.quiet))
            walls.append(time.perf_counter() - t0)
        aggregate = train.aggregate(per_seed, config.ks)
        timing = [r["timing"] for r in per_seed]
        results.append({
            "loss": name,
            "profile": profile,
            "hyper": gpwref.catalog.resolve_hyper(gpwref.get_entry(name), profile, hyper),
            "label": label,
            "aggregate": aggregate,
            "cost": {
                "ms_per_iteration": float(np.mean([t["ms_per_iteration"] for t in timing])),
                "ms_loss_per_iteration": float(np.mean([t["ms_loss_per_iteration"] for t in timing])),
                "wall_s_per_run": float(np.mean(walls)),
                "wall_s_this_invocation": walls,
            },
            "skipped_batches": sum(len(r["skipped_batches"]) for r in per_seed),
            "crosschecks_ok": all(r["crosscheck_summary"].get("bridge_all_ok", True) and r["crosscheck_summary"].get("independent_all_ok", True) for r in per_seed),
            "crosscheck_summaries": [r["crosscheck_summary"] for r in per_seed],
            "per_seed": [{"seed": r["seed"], "val_selected": r["val_selected"], "best_on_test": r["best_on_test"], "last": r["last"], "untrained": r["untrained"]} for r in per_seed],
        })
        sel = aggregate["val_selected"]
        log(f"   {label}: val-selected R@1 {_fmt(sel['R@1'])}  R@2 {_fmt(sel['R@2'])}  R@4 {_fmt(sel['R@4'])}  R@8 {_fmt(sel['R@8'])}")
    untrained = next(iter(results))["aggregate"]["untrained"] if results else None
    report = {
        "command": f"python -m {__package__}.compare_losses " + " ".join(shlex.quote(a) for a in argv),
        "environment": train.environment(),
        "protocol": (
            f"Omniglot, small CNN (4 conv blocks, 16-32-64-64 channels) from scratch, {base.crop} x {base.crop} ink input, "
            f"random resized crop scale {tuple(base.crop_scale)} ({_resample_text(base.resample)}), "
            f"{base.classes_per_batch} classes x {base.instances} images per batch, "
            f"Adam lr {base.lr} (x{base.lr_gamma} at {list(base.lr_steps)}), weight decay {base.weight_decay}, {base.iterations} iterations, "
            f"max pooling, {base.embedding_dim}-d L2-normalised embeddings, evaluation every {base.eval_every} iterations, "
            f"{_validation_text(base)}; the loss by gpwref's float64 reference "
            f"(verification/repro/loss_bridge.py), cross-checked every {base.crosscheck_every} iterations"
        ),
        "seeds": args.seeds,
        "data": prepared.data_report,
        "rows": results,
        "baselines": {"untrained": untrained, "raw_pixels": train._json_ready(raw_pixel_baseline(prepared))},
        "excluded": excluded,
        "reading": reading(results),
        "wall_s": time.perf_counter() - started,
    }
    report = train._json_ready(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss_comparison.json").write_text(json.dumps(report, indent=1))
    markdown = format_markdown(report)
    (out / "loss_comparison.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
