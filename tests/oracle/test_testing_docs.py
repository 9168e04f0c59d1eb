"""docs/oracle.md: the example file it shows runs as written, and its tables are the code's output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpwref.profile_diff import format_diff
from gpwref.testing import profile_table

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "oracle.md"
EXAMPLE = ROOT / "docs" / "examples" / "test_my_ms_loss.py"


def block_after(marker: str) -> str:
    """The fenced block that follows an HTML comment marker in the page."""
    text = PAGE.read_text()
    match = re.search(re.escape(marker) + r"\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert match, f"no fenced block after {marker!r} in {PAGE}"
    return match.group(1)


def test_the_page_shows_the_example_file_verbatim():
    assert block_after("<!-- example: docs/examples/test_my_ms_loss.py -->") == EXAMPLE.read_text().rstrip("\n")


def test_the_profile_tables_are_the_code_s_output():
    assert block_after('<!-- table: profile_table("multi_similarity") -->') == profile_table("multi_similarity")
    assert block_after('<!-- table: format_diff("official", "pml", loss="multi_similarity") -->') == format_diff(
        "official", "pml", loss="multi_similarity")


def test_the_example_runs_as_written():
    pytest.importorskip("torch")
    pytest.importorskip("hypothesis")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout
