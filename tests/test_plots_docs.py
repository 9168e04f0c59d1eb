"""The GPW pictures (gpwref.plots) and the generated catalog table (verification/docs_table.py)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import gpwref
from gpwref import plots
from gpwref_verification import docs_table

pytest.importorskip("matplotlib")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_committed_catalog_table_is_current():
    # docs/catalog.md must be exactly what the catalog generates (python -m verification.docs_table).
    with open(os.path.join(REPO, docs_table.DOC_PATH), encoding="utf-8") as handle:
        committed = handle.read()
    assert committed == docs_table.generate(), "docs/catalog.md is stale: run python -m verification.docs_table"


def test_table_has_one_row_per_entry_with_its_real_implementations():
    text = docs_table.generate()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| loss") and not line.startswith("| ---")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(gpwref.LOSSES)
    ranknet = next(row for row in rows if row.startswith("| ranknet |"))
    assert "pml: autograd, fd, loop, pytorch-metric-learning TripletMarginLoss(smooth_loss=True)" in ranknet
    assert "| positive-relative |" in ranknet
    pce = next(row for row in rows if row.startswith("| pce_bound |"))
    assert "| no |" in pce  # does not obey the GPW sign rule


def test_sweep_of_ranknet_follows_the_sigmoid():
    # RankNet on the drawn batch: moving one positive S_ip with everything else fixed, its weight is
    # (sigma/Z) sum_n sigmoid(sigma (S_in - S_ip)): strictly decreasing in S_ip; a negative's weight
    # strictly increases with its S_in.
    inputs = plots.draw_inputs("ranknet")
    curves = plots.sweep("ranknet", "paper", {}, inputs, grid=np.linspace(-1, 1, 21))
    _, pos, _ = curves["positive"]
    _, neg, _ = curves["negative"]
    assert np.all(np.diff(pos) < 0) and np.all(np.diff(neg) > 0)
    # one negative at S_in against the anchor's positives P: check one point by hand
    result = gpwref.compute("ranknet", inputs.embeddings, inputs.labels)
    i, k = curves["negative"][2]
    S = result.sim
    P = [j for j in range(len(inputs.labels)) if inputs.labels[j] == inputs.labels[i] and j != i]
    T = sum(int((inputs.labels == inputs.labels[a]).sum() - 1) * int((inputs.labels != inputs.labels[a]).sum()) for a in range(len(inputs.labels)))
    want = sum(1 / (1 + math.exp(-(1.0 - S[i, p]))) for p in P) / T  # sigma = 1, S_ik moved to 1.0
    assert neg[-1] == pytest.approx(want, rel=1e-12)


def test_inputs_suit_the_loss():
    assert plots.draw_inputs("multi_similarity").kind == "batch"
    assert plots.draw_inputs("m3g").kind == "paired"  # needs a second view of the same items
    proxy = [entry.name for entry in gpwref.CATALOG if entry.family == "proxy"]
    if proxy:
        assert plots.draw_inputs(proxy[0]).kind == "proxies"


@pytest.mark.parametrize("loss", ["ranknet", "m3g", "pixel_affinity", "pce_bound"])
def test_plot_command_writes_both_pngs(loss, tmp_path):
    assert plots.main([loss, "--out", str(tmp_path), "--m", "8", "--classes", "2"]) == 0
    for kind in ("weights", "heatmap"):
        path = tmp_path / f"{loss}_paper_{kind}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_command_takes_hyper_parameters_and_reports_bad_ones(tmp_path, capsys):
    assert plots.main(["pairwise_hinge", "--out", str(tmp_path), "--set", "margin=0.2", "--set", "reduction=sum"]) == 0
    assert plots.main(["pairwise_hinge", "--out", str(tmp_path), "--set", "margin=-1"]) == 2
    assert "margin" in capsys.readouterr().err


def test_paper_figure(tmp_path):
    path = tmp_path / "paper.png"
    assert plots.main(["--paper-figure", "--out", str(path)]) == 0
    assert path.read_bytes()[:8] == PNG_MAGIC
