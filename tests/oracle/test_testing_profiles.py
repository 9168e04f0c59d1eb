"""gpwref profiles diff A B (command line) and gpwref.profiles.diff / format_diff (Python)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gpwref
from gpwref.cli import main
from gpwref.profile_diff import diff, format_diff
from gpwref.testing import profile_table

# What the official MS code and pytorch-metric-learning do differently for the MS loss
# (docs/conventions.md#the-rules): the value self rule, raising on degenerate anchors,
# skipping an anchor with an empty mined set, PML's at-most-one-pair zero and empty-row log-sum-exp,
# beta 40 vs 50, and the loss alone (no miner) by default in PML. Both evaluate the mining
# comparison with the margin on the pair's side, so mining_compare is NOT among the differences.
OFFICIAL_VS_PML_FOR_MS = {
    ("rule", "self_rule", "value", "index"),
    ("rule", "self_threshold", 1 - 1e-5, None),
    ("rule", "degenerate", "raise", "allow"),
    ("rule", "empty_mined", "skip_anchor", "keep"),
    ("rule", "zero_if_at_most_one_pair", False, True),
    ("rule", "empty_lse", "neg_inf", "zero"),
    ("multi_similarity", "beta", 40.0, 50.0),
    ("multi_similarity", "eps", 0.1, None),
}


def test_diff_for_one_loss():
    assert set(diff("official", "pml", loss="multi_similarity")) == OFFICIAL_VS_PML_FOR_MS
    # paper vs official: the paper writes the mining inequality with the margin on the extreme
    rows = set(diff("paper", "official", loss="multi_similarity"))
    assert ("rule", "mining_compare", "shift_extreme", "shift_pair") in rows
    assert ("multi_similarity", "beta", 50.0, 40.0) in rows
    assert not any(what == "multi_similarity" and key == "eps" for what, key, _, _ in rows)


def test_diff_is_antisymmetric_and_empty_on_itself():
    forward = diff("paper", "pml")
    backward = diff("pml", "paper")
    assert sorted(map(repr, ((w, k, b, a) for w, k, a, b in forward))) == sorted(map(repr, backward))
    assert diff("official", "official") == []
    assert "(no difference)" in format_diff("official", "official")


def test_diff_over_the_whole_catalog_names_losses_defined_under_one_profile_only():
    rows = diff("official", "pml")
    only_pml = {entry.name for entry in gpwref.CATALOG if "pml" in entry.defaults and "official" not in entry.defaults}
    assert {w for w, k, a, b in rows if k == "defined"} >= only_pml
    assert all((a, b) == (False, True) for w, k, a, b in rows if k == "defined" and w in only_pml)


def test_format_diff_is_a_table_with_where_each_rule_was_seen():
    text = format_diff("official", "pml", loss="multi_similarity")
    lines = text.splitlines()
    assert lines[0] == "what | key | official | pml | where seen"
    assert len(lines) == 2 + len(OFFICIAL_VS_PML_FOR_MS)
    self_row = next(line for line in lines if line.startswith("rule | self_rule |"))
    assert "multi_similarity_loss.py:35" in self_row and "loss_and_miner_utils.py" in self_row
    assert "multi_similarity | beta | 40.0 | 50.0 |" in text


def test_diff_rejects_unknown_names():
    with pytest.raises(gpwref.GpwrefError) as info:
        diff("paper", "rdml")
    assert info.value.argument == "profile"
    with pytest.raises(gpwref.GpwrefError) as info:
        diff("paper", "pml", loss="no_such_loss")
    assert info.value.argument == "loss"


def test_cli_profiles_diff(capsys):
    assert main(["profiles", "diff", "official", "pml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("what | key | official | pml | where seen")
    for what, key, a, b in OFFICIAL_VS_PML_FOR_MS:
        assert f"{what} | {key} | {a} | {b} |" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["profiles", "diff", "official", "rdml"])
    assert exit_info.value.code == 2


def test_cli_as_a_command():
    done = subprocess.run([sys.executable, "-m", "gpwref.cli", "profiles", "diff", "paper", "official"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rule | mining_compare | shift_extreme | shift_pair |" in done.stdout


def test_profile_table_of_the_ms_loss():
    table = profile_table("multi_similarity").splitlines()
    assert table[0] == "what | paper | official | pml"
    assert "rule self_rule | index | value | index" in table
    assert "rule mining_compare | shift_extreme | shift_pair | shift_pair" in table
    assert "default beta | 50.0 | 40.0 | 50.0" in table
    assert "default eps | 0.1 | 0.1 | None" in table
    assert not any(line.startswith("default alpha") or line.startswith("default lam") for line in table)  # equal everywhere
    with pytest.raises(gpwref.GpwrefError):
        profile_table("multi_similarity", profiles=["paper", "nope"])
