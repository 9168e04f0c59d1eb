"""The loss-comparison script: row parsing, the catalog sweep, the computed reading, a tiny run."""

from __future__ import annotations

import json

import pytest

import gpwref
from gpwref_verification import compare_losses


def test_rows_parse_and_bad_rows_are_refused():
    assert compare_losses.parse_row("triplet:paper:mining=semi_hard") == ("triplet", "paper", {"mining": "semi_hard"})
    assert compare_losses.parse_row("multi_similarity") == ("multi_similarity", "paper", {})
    with pytest.raises(gpwref.GpwrefError):
        compare_losses.parse_row("no_such_loss")
    with pytest.raises(gpwref.GpwrefError, match="beta"):
        compare_losses.parse_row("multi_similarity:official:beta=-1")


def test_every_catalog_loss_is_either_run_or_excluded_with_a_reason():
    rows, excluded = compare_losses.all_rows()
    assert set(rows) | {e["loss"] for e in excluded} == set(gpwref.LOSSES)
    assert all(e["reason"] for e in excluded)
    assert "multi_similarity" in rows


def _row(loss, mean, std, per_seed=()):
    stat = {"mean": mean, "std": std}
    seeds = [{"seed": s, "val_selected": {"recall": {1: value}}} for s, value in enumerate(per_seed)]
    return {"loss": loss, "label": loss, "aggregate": {"val_selected": {"R@1": stat}}, "per_seed": seeds}


def test_reading_states_what_the_numbers_say():
    ahead = compare_losses.reading([_row("multi_similarity", 0.70, 0.01), _row("triplet", 0.60, 0.01)])
    tied = compare_losses.reading([_row("multi_similarity", 0.61, 0.02), _row("triplet", 0.60, 0.02)])
    behind = compare_losses.reading([_row("multi_similarity", 0.50, 0.01), _row("triplet", 0.60, 0.01)])
    assert "is ahead" in ahead and "cannot be told apart" in tied and "does not hold" in behind
    paired = compare_losses.reading([_row("multi_similarity", 0.62, 0.02, (0.60, 0.62, 0.64)), _row("triplet", 0.61, 0.02, (0.59, 0.61, 0.63))])
    # seed by seed MS is 1 point ahead every time: mean +1.0, std 0.0, ahead in 3 of 3
    assert "MS - triplet = +1.0 ± 0.0 points over 3 seeds, MS ahead in 3 of 3" in paired


@pytest.mark.slow
def test_a_tiny_comparison_runs_end_to_end(tmp_path):
    argv = ["--losses", "multi_similarity:official", "contrastive", "--seeds", "0", "--iterations", "2", "--eval-every", "2",
            "--crosscheck-every", "1", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--quiet"]
    assert compare_losses.main(argv) == 0
    report = json.loads((tmp_path / "out" / "loss_comparison.json").read_text())
    assert [r["loss"] for r in report["rows"]] == ["multi_similarity", "contrastive"]
    assert all(r["crosschecks_ok"] for r in report["rows"])
    table = (tmp_path / "out" / "loss_comparison.md").read_text()
    assert "| multi_similarity (official) |" in table and "raw pixels" in table
