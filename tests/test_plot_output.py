"""``gpwref plot``: where the PNGs go, and titles that fit inside the figure."""

from __future__ import annotations

import os

import pytest

from gpwref import plots

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture
def title_boxes(monkeypatch):
    """Before each savefig, every title's (text, x0, x1, figure width in pixels, other axes it overlaps)."""
    boxes = []
    real = Figure.savefig

    def savefig(fig, *args, **kwargs):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles = [(ax.title, ax) for ax in fig.axes] + ([(fig._suptitle, None)] if fig._suptitle is not None else [])
        for text, owner in titles:
            if text.get_text():
                box = text.get_window_extent(renderer)
                covered = [other for other in fig.axes if other is not owner
                           and box.overlaps(other.get_window_extent(renderer))]  # e.g. the colour bar
                boxes.append((text.get_text(), box.x0, box.x1, fig.bbox.width, covered))
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return boxes


@pytest.mark.parametrize("loss", ["multi_similarity", "lifted_structure"])  # the MS title and the longest one
def test_titles_are_not_cut_by_the_figure_edge_or_the_colour_bar(loss, tmp_path, title_boxes):
    assert plots.main([loss, "--out", str(tmp_path), "--m", "8", "--classes", "2"]) == 0
    assert title_boxes
    for text, x0, x1, width, covered in title_boxes:
        assert x0 >= 0 and x1 <= width, f"title {text!r} spans {x0:.0f}..{x1:.0f} px of {width:.0f}"
        assert not covered, f"title {text!r} runs under another axes (the colour bar)"
    assert any("eps=0.1" in text for text, *_ in title_boxes) or loss != "multi_similarity"


def test_out_folder_is_created_and_the_default_is_the_current_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "new" / "plots"
    assert plots.main(["multi_similarity", "--out", str(out), "--m", "8", "--classes", "2"]) == 0
    assert sorted(os.listdir(out)) == ["multi_similarity_paper_heatmap.png", "multi_similarity_paper_weights.png"]
    monkeypatch.chdir(tmp_path)
    assert plots.main(["multi_similarity", "--m", "8", "--classes", "2"]) == 0
    assert (tmp_path / "multi_similarity_paper_heatmap.png").exists()
    assert f"wrote {tmp_path / 'multi_similarity_paper_heatmap.png'}" in capsys.readouterr().out  # where, in full


def test_help_states_the_default_output_folder(capsys):
    with pytest.raises(SystemExit):
        plots.main(["--help"])
    assert "default: the current folder" in capsys.readouterr().out


# --- python -m gpwref ---------------------------------------------------------------------------------

def test_python_dash_m_gpwref_runs_every_subcommand():
    import subprocess
    import sys

    from gpwref import cli

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    for command in cli.COMMANDS:
        done = subprocess.run([sys.executable, "-m", "gpwref", command, "--help"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "usage:" in done.stdout, (command, done.stdout)
    listed = subprocess.run([sys.executable, "-m", "gpwref", "list"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "multi_similarity" in listed.stdout, listed.stderr
    unknown = subprocess.run([sys.executable, "-m", "gpwref", "no-such-command"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "gpwref plot" in unknown.stdout
