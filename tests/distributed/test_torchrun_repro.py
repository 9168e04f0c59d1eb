"""``gpwref reproduce`` under torchrun: 2 gloo processes on 127.0.0.1 train with GlobalBatchLoss and DDP,
and their losses and recalls equal a single-process run of the same settings (a few iterations on
the shipped Omniglot copy; BatchNorm frozen, since train-mode BatchNorm sees each rank's local batch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ["--dataset", "omniglot", "--iterations", "3", "--eval-every", "3", "--threads", "1", "--resize", "28", "--crop", "28",
            "--freeze-bn", "--crosscheck-every", "0", "--val-fraction", "0", "--val-alphabets", "0", "--no-progress", "--quiet", "--seeds", "0"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args, tmp_path):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_torchrun_two_gloo_ranks_equal_single_process_training(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    _run([*torchrun, "-m", "gpwref", "reproduce", *SETTINGS, "--out", str(tmp_path / "ddp")], tmp_path)
    _run([sys.executable, "-m", "gpwref", "reproduce", *SETTINGS, "--out", str(tmp_path / "single")], tmp_path)
    single = json.loads((tmp_path / "single" / "seed_0" / "results.json").read_text())
    ranks = [json.loads((tmp_path / "ddp" / where / "seed_0" / "results.json").read_text()) for where in (".", "rank_1")]
    summary = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "rank": 0}
    assert all("GlobalBatchLoss over the batch of 2 ranks" in r["loss"] for r in ranks)
    assert len(single["losses"]) == 3
    for rank in ranks:  # float32 network: DDP's gradient average and the gathered loss change round-off only
        np.testing.assert_allclose(rank["losses"], single["losses"], rtol=1e-5)
        assert rank["last"]["recall"]["1"] == pytest.approx(single["last"]["recall"]["1"], abs=2e-3)
