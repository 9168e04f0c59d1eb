"""The wheel installs the suite as gpwref_verification, never as a top-level ``verification``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("setuptools")  # the wheel is built without build isolation (no network)

REPO = Path(__file__).resolve().parent.parent


def _sources(folder: str) -> set[str]:
    """The .py files git tracks under ``folder`` (relative to it)."""
    listed = subprocess.run(["git", "ls-files", "--", f"{folder}/*.py"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return {line[len(folder) + 1:] for line in listed.stdout.splitlines()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(REPO)], cwd=out, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("gpwref-*.whl")
    return path


def test_wheel_holds_the_suite_as_gpwref_verification(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if n.startswith("verification/")]
    assert {n.split("/")[0] for n in names if not n.startswith("gpwref-")} == {"gpwref", "gpwref_verification"}
    # every tracked module of both packages is in the wheel (the package list in pyproject.toml is explicit)
    assert {f"gpwref/{p}" for p in _sources("gpwref")} <= names
    assert {f"gpwref_verification/{p}" for p in _sources("verification")} <= names
    assert "gpwref_verification/refs/contract.py" in names
    assert {"gpwref_verification/data/omniglot/LICENSE", "gpwref_verification/data/omniglot/README.md"} <= names
    assert [n for n in names if n.startswith("gpwref_verification/data/omniglot/") and n.endswith(".zip")]


def test_installed_suite_runs_outside_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import gpwref, gpwref_verification.runner as runner\n"
        "print(gpwref.__file__); print(runner.__file__)\n"
        "raise SystemExit(runner.main(['--loss', 'contrastive', '--profile', 'pml', '--batches', '2', '--no-fd']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    gpwref_file, runner_file = done.stdout.splitlines()[:2]
    assert Path(gpwref_file).is_relative_to(target) and Path(runner_file).is_relative_to(target)
    assert re.search(r"\b(\d+) rows, \1 passed, 0 failed", done.stdout), done.stdout
