"""GPW pictures: pair weight against similarity, and weight heat maps (PNG, matplotlib Agg).

    gpwref plot LOSS [--profile P] [--out DIR] [--seed N] [--m M] [--classes C] [--set NAME=VALUE ...]
    gpwref plot --paper-figure [--out FILE]

``gpwref plot LOSS`` writes two files into ``--out`` (default ``.``):

* ``<loss>_<profile>_weights.png``, two panels.
  Left, a **sweep**: a batch is drawn once (``--seed``), its similarity matrix S is computed, and
  then ONE entry of S is moved over [-1, 1] while every other entry stays fixed: first a used
  positive pair (i, j), then a used negative pair (i, k) of the same anchor i. The curve is that pair's
  weight |G_ij| = |dL/dS_ij| as a function of its own similarity, the others held fixed: the way the
  MS paper compares losses. (S with one entry moved is in general not a Gram matrix any more; the
  loss is evaluated on it through ``gpwref.from_similarity``, which accepts any S.)
  Right, a **scatter** of |G_ij| against S_ij over every positive and negative pair of the drawn
  batch (unused pairs at 0), so the spread from the relative similarities shows.
* ``<loss>_<profile>_heatmap.png``: G = dL/dS of the drawn batch, rows and columns sorted by class,
  signed (blue: G < 0, pull; red: G > 0, push; white: 0), with lines at the class boundaries.

``--paper-figure`` draws the sweep curves of the MS paper's losses (multi_similarity, contrastive,
triplet, lifted_structure, binomial_deviance, npair, histogram; whichever the catalog holds) in one
figure, each at its ``paper`` defaults, on the same drawn batch; default output
``docs/figures/gpw_weights_paper_losses.png``.

Inputs are drawn to suit the loss (``draw_inputs``): the batch as its own reference set; failing
that (a loss that needs a reference set), one proxy per class as the reference set (sample-to-proxy
losses); failing that, a second view of the same items as the reference set (paired losses).
matplotlib is an optional extra (``pip install 'gpwref[plot]'``).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import textwrap
from dataclasses import dataclass

import numpy as np

from .catalog import LOSSES, get_entry, resolve_hyper
from .core import compute, from_similarity
from .errors import GpwrefError

PAPER_LOSSES = ("multi_similarity", "contrastive", "triplet", "lifted_structure", "binomial_deviance", "npair", "histogram")
PAPER_FIGURE = os.path.join("docs", "figures", "gpw_weights_paper_losses.png")
SWEEP = np.linspace(-1.0, 1.0, 201)


@dataclass(frozen=True)
class Inputs:
    """Arguments for ``gpwref.compute``: a drawn batch, and how it was made (``kind``)."""

    embeddings: np.ndarray
    labels: np.ndarray
    ref: np.ndarray | None
    ref_labels: np.ndarray | None
    kind: str  # "batch", "proxies" or "paired"

    def kwargs(self) -> dict:
        return {} if self.ref is None else {"ref": self.ref, "ref_labels": self.ref_labels}


def draw_inputs(loss: str, profile: str = "paper", hyper: dict | None = None, *, seed: int = 0, m: int = 16,
                classes: int = 4, d: int = 8) -> Inputs:
    """A batch of ``m`` samples in ``classes`` equal classes (sorted by class) that ``loss`` accepts.

    Tries, in order: the batch as its own reference set; one proxy per class as the reference set;
    a noisy second view of the same m items (labels = item ids) as the reference set.
    """
    hyper = dict(hyper or {})
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), -(-m // classes))[:m].astype(np.int64)
    centres = rng.normal(size=(classes, d))
    X = centres[labels] + 0.8 * rng.normal(size=(m, d))
    attempts = [
        Inputs(X, labels, None, None, "batch"),
        Inputs(X, labels, centres + 0.3 * rng.normal(size=(classes, d)), np.arange(classes, dtype=np.int64), "proxies"),
        Inputs(X, np.arange(m, dtype=np.int64), X + 0.5 * rng.normal(size=(m, d)), np.arange(m, dtype=np.int64), "paired"),
    ]
    errors = []
    for inputs in attempts:
        try:
            compute(loss, inputs.embeddings, inputs.labels, profile=profile, **inputs.kwargs(), **hyper)
        except GpwrefError as error:
            errors.append(f"{inputs.kind}: {error}")
            continue
        return inputs
    raise GpwrefError("loss", f"'{loss}' accepted none of the drawn batches ({'; '.join(errors)})")


def sweep(loss: str, profile: str, hyper: dict, inputs: Inputs, grid: np.ndarray = SWEEP):
    """Weight curves {"positive": (grid, |G_ij|), "negative": (grid, |G_ik|)} for one pair of each kind.

    The pairs are anchor i's first used positive j and first used negative k, i the first anchor
    with both (or with either). A kind the loss never uses is left out.
    """
    base = compute(loss, inputs.embeddings, inputs.labels, profile=profile, **inputs.kwargs(), **hyper)
    S0 = base.sim
    ref_labels = inputs.ref_labels
    both = base.pos_used.any(axis=1) & base.neg_used.any(axis=1)
    either = base.pos_used.any(axis=1) | base.neg_used.any(axis=1)
    anchors = np.nonzero(both)[0] if both.any() else np.nonzero(either)[0]
    curves = {}
    if anchors.size == 0:
        return curves
    i = int(anchors[0])
    for kind, used in (("positive", base.pos_used), ("negative", base.neg_used)):
        columns = np.nonzero(used[i])[0]
        if columns.size == 0:
            continue
        j = int(columns[0])
        weights = np.full(grid.shape, np.nan)
        for t, value in enumerate(grid):
            S = S0.copy()
            S[i, j] = value
            try:
                result = from_similarity(loss, S, inputs.labels, ref_labels, profile=profile, **hyper)
            except GpwrefError:
                continue  # e.g. a similarity outside the loss's domain: no point drawn
            weights[t] = abs(result.grad_sim[i, j])
        curves[kind] = (grid, weights, (i, j))
    return curves


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise GpwrefError("plot", "needs matplotlib (pip install 'gpwref[plot]')", str(error)) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_sweep(ax, curves, title: str) -> None:
    styles = {"positive": ("tab:blue", "positive pair"), "negative": ("tab:red", "negative pair")}
    for kind, (grid, weights, (i, j)) in curves.items():
        colour, label = styles[kind]
        ax.plot(grid, weights, color=colour, label=f"{label} ({i},{j})")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("S_ij (this pair only)")
    ax.set_ylabel("|dL/dS_ij|")
    if curves:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no used pair", ha="center", va="center", transform=ax.transAxes)


def weights_figure(loss: str, profile: str = "paper", hyper: dict | None = None, *, path: str, seed: int = 0,
                   m: int = 16, classes: int = 4) -> str:
    """Sweep and scatter of pair weight against similarity (see the module docstring); returns path."""
    plt = _pyplot()
    hyper = dict(hyper or {})
    inputs = draw_inputs(loss, profile, hyper, seed=seed, m=m, classes=classes)
    params = resolve_hyper(get_entry(loss), profile, hyper)
    result = compute(loss, inputs.embeddings, inputs.labels, profile=profile, **inputs.kwargs(), **hyper)
    curves = sweep(loss, profile, hyper, inputs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _draw_sweep(left, curves, "sweep: one pair moved, others fixed")
    col_labels = inputs.labels if inputs.ref_labels is None else inputs.ref_labels
    same = inputs.labels[:, None] == col_labels[None, :]
    pos, neg = same.copy(), ~same
    if inputs.ref is None:
        np.fill_diagonal(pos, False)
    right.scatter(result.sim[pos], np.abs(result.grad_sim[pos]), s=10, color="tab:blue", label="positive pairs")
    right.scatter(result.sim[neg], np.abs(result.grad_sim[neg]), s=10, color="tab:red", marker="x", label="negative pairs")
    right.set_title(f"scatter over a drawn batch ({inputs.kind}, m={m})", fontsize=9)
    right.set_xlabel("S_ij")
    right.set_ylabel("|dL/dS_ij|")
    right.legend(fontsize=7)
    fig.suptitle(_wrap(f"{loss} ({profile}: {_format(params)})", fig, 10), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_figure(loss: str, profile: str = "paper", hyper: dict | None = None, *, path: str, seed: int = 0,
                   m: int = 16, classes: int = 4) -> str:
    """G = dL/dS of a drawn batch, rows and columns sorted by class; returns path."""
    plt = _pyplot()
    hyper = dict(hyper or {})
    inputs = draw_inputs(loss, profile, hyper, seed=seed, m=m, classes=classes)
    params = resolve_hyper(get_entry(loss), profile, hyper)
    result = compute(loss, inputs.embeddings, inputs.labels, profile=profile, **inputs.kwargs(), **hyper)
    col_labels = inputs.labels if inputs.ref_labels is None else inputs.ref_labels
    rows = np.argsort(inputs.labels, kind="stable")
    cols = np.argsort(col_labels, kind="stable")
    G = result.grad_sim[np.ix_(rows, cols)]
    scale = float(np.max(np.abs(G), initial=0.0)) or 1.0
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    image = ax.imshow(G, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    for boundary in np.nonzero(np.diff(inputs.labels[rows]))[0]:
        ax.axhline(boundary + 0.5, color="black", linewidth=0.6)
    for boundary in np.nonzero(np.diff(col_labels[cols]))[0]:
        ax.axvline(boundary + 0.5, color="black", linewidth=0.6)
    ax.set_xlabel("reference item (sorted by class)" if inputs.ref is not None else "sample j (sorted by class)")
    ax.set_ylabel("anchor i (sorted by class)")
    fig.colorbar(image, ax=ax, label="G_ij = dL/dS_ij  (blue pull, red push)")
    ax.set_title(_wrap(f"{loss} ({profile}: {_format(params)})", fig, 9, share=0.75), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def paper_figure(path: str = PAPER_FIGURE, *, seed: int = 0) -> tuple[str, list[str]]:
    """Sweep curves of the MS paper's losses side by side; returns (path, the losses drawn)."""
    plt = _pyplot()
    drawn = [name for name in PAPER_LOSSES if name in LOSSES]
    columns = min(4, max(1, len(drawn)))
    rows = -(-max(1, len(drawn)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), drawn):
        inputs = draw_inputs(name, "paper", seed=seed)
        params = resolve_hyper(get_entry(name), "paper", {})
        _draw_sweep(ax, sweep(name, "paper", {}, inputs), name + "\n" + textwrap.fill(_format(params), 48))
    for ax in axes.ravel()[len(drawn):]:
        ax.axis("off")
    fig.suptitle("GPW pair weight |dL/dS_ij| as one pair's similarity moves (paper defaults, same batch)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, drawn


def _wrap(text: str, fig, fontsize: float, share: float = 1.0) -> str:
    """``text`` broken into lines that fit ``share`` of the figure's width (a character of a
    proportional font is taken as 0.6 em), so that a long title is not cut at the figure's edge."""
    width = int(fig.get_figwidth() * share * 72 / (0.6 * fontsize))
    return textwrap.fill(text, max(20, width), break_long_words=False, break_on_hyphens=False)


def _format(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "no hyper-parameters"


def _parse_setting(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise GpwrefError("--set", "must look like NAME=VALUE", repr(text))
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word: a string choice such as reduction=mean
    return name.strip(), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpwref plot", description="GPW weight plots (PNG)")
    parser.add_argument("loss", nargs="?", help=f"one of {', '.join(LOSSES)}")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for LOSS's two PNGs (default: the current folder, created if missing); "
                             f"with --paper-figure the PNG file (default: {PAPER_FIGURE})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--m", type=int, default=16, help="batch size of the drawn batch")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="hyper-parameter override")
    parser.add_argument("--paper-figure", action="store_true", help="the comparison figure of the MS paper's losses")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.paper_figure:
            path, drawn = paper_figure(args.out or PAPER_FIGURE, seed=args.seed)
            missing = [name for name in PAPER_LOSSES if name not in drawn]
            print(f"wrote {path} ({', '.join(drawn)})" + (f"; not in the catalog yet: {', '.join(missing)}" if missing else ""))
            return 0
        if not args.loss:
            parser.error("give a LOSS or --paper-figure")
        hyper = dict(_parse_setting(text) for text in args.set)
        out = args.out or "."
        os.makedirs(out, exist_ok=True)
        stem = os.path.join(out, f"{args.loss}_{args.profile}")
        kwargs = dict(seed=args.seed, m=args.m, classes=args.classes)
        for path in (weights_figure(args.loss, args.profile, hyper, path=f"{stem}_weights.png", **kwargs),
                     heatmap_figure(args.loss, args.profile, hyper, path=f"{stem}_heatmap.png", **kwargs)):
            print(f"wrote {os.path.abspath(path)}")
        return 0
    except GpwrefError as error:
        print(f"gpwref plot: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
