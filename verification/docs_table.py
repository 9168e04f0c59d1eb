"""The catalog table of the docs, generated from the catalog itself (``docs/catalog.md``).

    gpwref docs-table            write docs/catalog.md
    gpwref docs-table --check    exit 1 if docs/catalog.md is not the generated text

One row per catalog entry: loss, family, reference, which of the three similarities its weights
use (self, negative-relative, positive-relative), whether it obeys the GPW sign rule, its profiles,
what it is verified against per profile, and its ``counterparts``. "Verified against" is read from
the entry's ``REFS`` record (``verification/refs/contract.py``): ``torch_loss`` means torch autograd in float64 on an
independent formulation (plus central finite differences), ``loop`` a plain per-anchor loop, and
``real[profile]`` names the real implementations; ``verified_against``, where given, replaces the
first three. Reading the refs modules needs the verification extras (torch); without them the column
says so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gpwref.catalog import CATALOG, LossEntry

DOC_PATH = os.path.join("docs", "catalog.md")

HEADER = """# The gpwref catalog

Generated from `gpwref.CATALOG` and `verification/refs/<loss>.py` by `gpwref docs-table`;
do not edit by hand (`tests/test_plots_docs.py` fails when this file is not the generated text).

Columns: *weights use* = which of the MS paper's three similarities the GPW weights G = dL/dS
depend on (self: S_ij itself; negative-relative: S_ij against the other pairs of the same kind;
positive-relative: a pair against the pairs of the other kind); *GPW sign* = G <= 0 on positives
and >= 0 on negatives for every input; *verified against*, per profile: autograd = torch autograd
in float64 on an independent torch formulation, fd = central finite differences, loop = a plain
loop written from the closed-form weights, then the real implementations by name; *counterparts*
= the entry's `counterparts`: each real implementation and the class or function of it that is run
(or whose rules are transcribed, where the code cannot run here).
"""


# pytorch-metric-learning loss classes that have no catalog entry, each with the reason read from its
# source (pytorch_metric_learning/losses/ in the installed 2.9): class name -> why it is not a pair loss.
PML_WITHOUT_ENTRY: tuple[tuple[str, str], ...] = (
    # catpml
    ("DynamicSoftMarginLoss",
     "it weights each triplet's d_ap - d_an by the CDF of a histogram of those differences that the loss "
     "object keeps across calls (momentum 0.01), so a batch's value depends on every earlier batch; only "
     "the first batch of a fresh object is a function of S. The histogram is not detached: in 2.9 the "
     "second backward through one object fails (\"Trying to backward through the graph a second time\")."),
    ("ManifoldLoss",
     "it is not built from labelled pairs: it refuses labels (meta-classes are drawn at random or passed "
     "as indices_tuple), learns its own K proxies (an nn.Parameter), and scores a random-walk diffusion "
     "matrix (1 - alpha) (I - alpha D^-1/2 W D^-1/2)^-1 over the embeddings and proxies together."),
    ("InstanceLoss",
     "each row of gamma S (all batch columns, the self pair included) gets a cross-entropy whose target "
     "is column rank(y_i) (torch.unique's inverse index): a position in the batch, not a class, so the "
     "value changes when two samples swap places and no pair is positive by its labels. The paper's "
     "instance loss (Zheng et al., ACM TOMM 2020) is a classifier with one learned weight per training "
     "instance."),
    # catproxy
    ("VICRegLoss",
     "it is a regulariser on two views' embeddings (Bardes, Ponce, LeCun, ICLR 2022), not a loss of labelled "
     "pairs: it refuses labels; its invariance term pairs row i of one view with row i of the other only, and "
     "its variance and covariance terms are hinges and squares of per-coordinate statistics (the D x D "
     "covariance of each view), which change under a rotation of the embedding space that leaves every "
     "similarity unchanged, so the value is not a function of S."),
)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def verified_against(entry: LossEntry) -> str:
    """Per profile, the checks that prove the entry (from its refs module)."""
    try:
        refs = importlib.import_module(f".refs.{entry.name}", __package__).REFS
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith(f"{__package__}.refs"):
            return "no refs module"
        return f"(needs the verification extras: {error.name})"
    if refs.verified_against:
        base = list(refs.verified_against)
    else:
        base = [name for name, present in (("autograd", refs.torch_loss is not None), ("fd", True),
                                           ("loop", refs.loop is not None)) if present]
    real = refs.real
    parts = []
    for profile in entry.defaults:
        names = base + sorted(real.get(profile, {}))
        parts.append(f"{profile}: {', '.join(names)}")
    return "; ".join(parts)


def generate() -> str:
    lines = [HEADER, "| loss | family | reference | weights use | GPW sign | profiles | verified against | counterparts |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in CATALOG:
        lines.append(
            "| " + " | ".join(_cell(value) for value in (
                entry.name,
                entry.family,
                entry.reference,
                ", ".join(entry.similarities),
                "yes" if entry.gpw_sign else "no",
                ", ".join(entry.defaults),
                verified_against(entry),
                "; ".join(f"{impl}: {name}" for impl, name in entry.counterparts.items()) or "none",
            )) + " |"
        )
    limits = [(entry.name, entry.limits) for entry in CATALOG if entry.limits]
    if limits:
        lines += ["", "## Known limits", ""]
        lines += [f"- **{name}**: {_cell(text)}" for name, text in limits]
    if PML_WITHOUT_ENTRY:
        lines += ["", "## PML classes without an entry", "",
                  "pytorch-metric-learning loss classes that are not pair losses, and why:", ""]
        lines += [f"- **{name}**: {_cell(text)}" for name, text in PML_WITHOUT_ENTRY]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpwref docs-table", description="Generate the docs' catalog table")
    parser.add_argument("--out", default=DOC_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the generated text")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    text = generate()
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{args.out} is stale: run gpwref docs-table", file=sys.stderr)
            return 1
        print(f"{args.out} is current")
        return 0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {args.out} ({len(CATALOG)} losses)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
