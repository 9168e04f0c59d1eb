"""Reproduce the MS paper's CUB-200-2011 result (R@1 65.7 at 512-d, BN-Inception) -- or its Omniglot proxy.

    gpwref reproduce --dataset omniglot                  # minutes on a CPU: the whole pipeline on real data
    gpwref reproduce --data ~/data/CUB_200_2011 --weights ~/.torch/models/bn_inception-52deb4733.pth \\
                     --seeds 0 1 2 --workers 8 --amp --out runs/cub   # one GPU
    gpwref reproduce --data ... --weights ... --check    # check the data and the weights, then stop
    gpwref reproduce --list-variants                     # the named departures from the code's protocol

The CUB mode follows the official code (MalongTech/research-ms-loss, configs/example.yaml over
ret_benchmark/config/defaults.py); every setting is a flag, and the paper-text departures are named
variants (``--variant beta50 backbone-lr-0.1 avgpool unfrozen-bn`` or ``--variant paper-text``).
The loss is computed by gpwref (``verification/repro/loss_bridge.py``) and cross-checked against
float64 and independent code every ``--crosscheck-every`` iterations. Outputs in ``--out``:
``results.json`` (settings, data and weight checks, per-seed curves, best-on-test / last /
validation-selected Recall@K and MAP@R with mean and std), ``recall_curves.png``, ``log.txt`` and
per-seed ``seed_N/`` folders with ``checkpoint.pt`` (``--resume`` continues a stopped run) and the
model files ``last_model.pt`` / ``val_selected_model.pt`` (``verification.repro.train.load_model``).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from gpwref import GpwrefError


def _value(text: str):
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _hyper(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise GpwrefError("hyper", "entries must be NAME=VALUE", repr(item))
        name, value = item.split("=", 1)
        out[name.strip()] = _value(value.strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    from .repro.config import VARIANTS

    p = argparse.ArgumentParser(
        prog="gpwref reproduce",
        description="MS-loss training reproduction on CUB-200-2011 (BN-Inception, official protocol) or on the Omniglot proxy.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants:\n" + "\n".join(f"  {name:16s} {text}" for name, (text, _) in VARIANTS.items()),
    )
    S = argparse.SUPPRESS  # flags left out keep the dataset's (or variant's) value
    run = p.add_argument_group("run")
    run.add_argument("--dataset", choices=["cub", "omniglot"], default="cub")
    run.add_argument("--data", default=S, help="CUB_200_2011 folder (cub) or a folder with the two Omniglot background-small sets (default: the copy shipped in verification/data/omniglot)")
    run.add_argument("--weights", default=S, help="pretrained weights file (BN-Inception: bn_inception-52deb4733.pth)")
    run.add_argument("--seeds", type=int, nargs="+", default=[0])
    run.add_argument("--out", default=None, help="output folder (default runs/reproduce-<dataset>)")
    run.add_argument("--resume", action="store_true", help="continue the runs in --out from their checkpoints")
    run.add_argument("--overwrite", action="store_true", help="start again even if --out holds a run")
    run.add_argument("--check", action="store_true", help="check the data and weights, print the settings, and stop")
    run.add_argument("--variant", nargs="+", default=[], choices=sorted(VARIANTS), metavar="NAME", help="named departures from the code's protocol (see below)")
    run.add_argument("--list-variants", action="store_true")
    run.add_argument("--quiet", action="store_true", help="no per-evaluation lines on stdout (log.txt keeps them)")
    run.add_argument("--no-progress", action="store_true")

    model = p.add_argument_group("model")
    model.add_argument("--backbone", choices=["bninception", "small_cnn", "efficientnet_lite0"], default=S)
    model.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=S)
    model.add_argument("--trust-weights-pickle", action="store_true", default=S, help="allow full unpickling of the weights file")
    model.add_argument("--allow-partial-weights", action="store_true", default=S)
    model.add_argument("--embedding-dim", type=int, default=S)
    model.add_argument("--pooling", choices=["max", "avg"], default=S)
    model.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=S)

    data = p.add_argument_group("input and sampling")
    data.add_argument("--allow-nonstandard-data", action="store_true", default=S, help="accept a CUB folder whose counts differ (warnings instead of refusal)")
    data.add_argument("--input-mode", choices=["bgr255", "rgb_imagenet", "ink"], default=S)
    data.add_argument("--resize", type=int, default=S)
    data.add_argument("--crop", type=int, default=S)
    data.add_argument("--crop-scale", type=float, nargs=2, default=S, metavar=("LOW", "HIGH"))
    data.add_argument("--flip-prob", type=float, default=S)
    data.add_argument("--resample", choices=["two-pass", "one-pass"], default=S, help="training views: resize-crop-resize (official, CUB default) or one bilinear pass from the original (Omniglot default)")
    data.add_argument("--classes-per-batch", type=int, default=S)
    data.add_argument("--instances", type=int, default=S)
    data.add_argument("--val-alphabets", type=int, default=S, help="whole training alphabets held out for validation; selection uses them when > 0 (Omniglot default 1)")
    data.add_argument("--val-fraction", type=float, default=S, help="fraction of the (other) training characters held out as a validation split (Omniglot default 0.1)")
    data.add_argument("--workers", type=int, default=S)

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--iterations", type=int, default=S)
    opt.add_argument("--lr", type=float, default=S)
    opt.add_argument("--weight-decay", type=float, default=S)
    opt.add_argument("--lr-steps", type=int, nargs="*", default=S)
    opt.add_argument("--lr-gamma", type=float, default=S)
    opt.add_argument("--backbone-lr-mult", type=float, default=S)
    opt.add_argument("--amp", action=argparse.BooleanOptionalAction, default=S, help="mixed precision (CUDA only)")
    opt.add_argument("--device", default=S, help="auto, cpu, cuda or cuda:N")
    opt.add_argument("--threads", type=int, default=S, help="torch CPU threads (0: torch's default)")

    loss = p.add_argument_group("loss (computed by gpwref)")
    loss.add_argument("--loss", default=S, help="a gpwref catalog loss (default multi_similarity)")
    loss.add_argument("--profile", default=S, help="gpwref convention profile (default official)")
    loss.add_argument("--alpha", type=float, default=S)
    loss.add_argument("--beta", type=float, default=S)
    loss.add_argument("--lam", type=float, default=S)
    loss.add_argument("--eps", type=_value, default=S, help="MS mining margin; 'none' turns mining off")
    loss.add_argument("--hyper", nargs="+", default=S, metavar="NAME=VALUE", help="any hyper-parameter of the loss")
    loss.add_argument("--loss-path", choices=["auto", "reference", "gpwref.torch"], default=S, help="auto: gpwref.torch kernels when the loss has them, else the float64 reference")
    loss.add_argument("--crosscheck-every", type=int, default=S, help="compare with float64 and independent code every N iterations (0: never)")

    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-every", type=int, default=S)
    ev.add_argument("--ks", type=int, nargs="+", default=S)
    ev.add_argument("--tie", choices=["optimistic", "pessimistic"], default=S, help="tie rule of Recall@K / MAP@R (optimistic = the official code's)")
    ev.add_argument("--eval-batch-size", type=int, default=S)
    ev.add_argument("--checkpoint-every", type=int, default=S)
    ev.add_argument("--save-best", action=argparse.BooleanOptionalAction, default=S,
                    help="keep the validation-selected weights in seed_N/val_selected_model.pt (default on; seed_N/last_model.pt is always written)")
    return p


RUN_ONLY = {"dataset", "seeds", "out", "resume", "overwrite", "check", "variant", "list_variants", "quiet", "no_progress", "backbone", "alpha", "beta", "lam", "eps", "hyper"}


def config_from_args(args: argparse.Namespace):
    from .repro.config import resolve

    values = vars(args)
    overrides = {k: v for k, v in values.items() if k not in RUN_ONLY}
    for key in ("crop_scale", "lr_steps", "ks"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    hyper = _hyper(values.get("hyper"))
    for name in ("alpha", "beta", "lam", "eps"):
        if name in values:
            hyper[name] = values[name]
    if hyper:
        overrides["hyper"] = hyper
    return resolve(args.dataset, backbone=values.get("backbone"), variants=args.variant, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_variants:
        from .repro.config import VARIANTS

        for name, (text, settings) in VARIANTS.items():
            print(f"{name:16s} {text}  {settings}")
        return 0
    try:
        from .repro import train

        config = config_from_args(args)
        command = "gpwref reproduce " + " ".join(shlex.quote(a) for a in argv)
        print("settings:", ", ".join(f"{k}={v}" for k, v in config.as_dict().items()), flush=True)
        if args.check:
            prepared = train.prepare(config, train.Log())
            print("data:", prepared.data_report)
            if prepared.weights_report is not None:
                print(prepared.weights_report["summary"])
            print("check passed: ready to train")
            return 0
        out = args.out or f"runs/reproduce-{config.dataset}"
        summary = train.run(config, args.seeds, out, resume=args.resume, overwrite=args.overwrite, command=command, quiet=args.quiet, progress=not args.no_progress)
    except GpwrefError as error:
        print(f"gpwref reproduce: refused: {error}", file=sys.stderr)
        return 2
    if args.quiet:
        print(train.format_table(summary, tuple(k for k in config.ks if k <= 8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
