"""The README's reproduction figures are generated from the committed results and agree with them."""

from __future__ import annotations

import json
import re
import shutil

from gpwref_verification.repro import readme_tables

RESULTS = readme_tables.RESULTS


def test_the_readme_block_is_what_the_committed_results_generate():
    text = readme_tables.README.read_text(encoding="utf-8")
    assert readme_tables.current_block(text) == readme_tables.render(), "run python -m verification.repro.readme_tables"
    assert readme_tables.main(["--check"]) == 0
    assert "69.4" not in text  # the drifted hand-written figure is gone


def test_the_readme_rows_equal_the_per_seed_numbers():
    # recomputed here from the per-seed records (the generator reads the aggregate)
    text = readme_tables.README.read_text(encoding="utf-8")
    summary = json.loads((RESULTS / "omniglot_small_cnn.json").read_text())
    for key, label in (("val_selected", "val-selected (held-out alphabet"), ("last", "last iteration")):
        values = [100 * seed[key]["recall"]["1"] for seed in summary["per_seed"]]
        mean = sum(values) / len(values)
        block = text[text.index("`verification/results/omniglot_small_cnn.json`"):]
        row = next(line for line in block.splitlines() if line.startswith(f"| {label}"))
        assert re.split(r"\s*\|\s*", row)[2].split(" ± ")[0] == f"{mean:.2f}", (row, mean)
    assert summary["data"]["val"]["held_out"] == "alphabets" and summary["config"]["resample"] == "one-pass"


def test_a_changed_results_file_is_caught(tmp_path):
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    summary = json.loads((tmp_path / "omniglot_small_cnn.json").read_text())
    summary["aggregate"]["last"]["R@1"]["mean"] += 0.001
    (tmp_path / "omniglot_small_cnn.json").write_text(json.dumps(summary))
    assert readme_tables.render(tmp_path) != readme_tables.render()
