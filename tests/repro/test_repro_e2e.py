"""End to end: the Omniglot proxy learns (Recall@1 beats the untrained network), a stopped run resumes
exactly, and the CUB mode refuses without data or weights and runs on a generated folder + weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpwref import GpwrefError
from gpwref_verification.repro import train
from gpwref_verification.repro.bninception import BNInception
from gpwref_verification.repro.config import resolve
from gpwref_verification.repro.fixtures import make_cub_folder as make_cub
from gpwref_verification.reproduce_cub200 import main

FAST_OMNIGLOT = dict(iterations=60, lr=3e-3, lr_steps=(40,), eval_every=60, crosscheck_every=30, threads=1, resize=28, crop=28)


def test_omniglot_small_cnn_improves_recall_at_1(tmp_path):
    config = resolve("omniglot", overrides=FAST_OMNIGLOT)
    summary = train.run(config, [0], tmp_path, quiet=True, progress=False)
    seed = json.loads((tmp_path / "seed_0" / "results.json").read_text())
    untrained = summary["aggregate"]["untrained"]["R@1"]["mean"]
    last = summary["aggregate"]["last"]["R@1"]["mean"]
    assert seed["untrained"]["iteration"] == 0 and seed["last"]["iteration"] == 60
    assert last > untrained + 0.08, (untrained, last)
    assert summary["aggregate"]["val_selected"] is not None
    checks = seed["crosscheck_summary"]
    assert checks["count"] == 2 and checks["bridge_all_ok"] and checks["independent_all_ok"], checks
    assert (tmp_path / "recall_curves.png").stat().st_size > 0 and (tmp_path / "log.txt").is_file()
    assert summary["data"]["test"] == {"classes": 106, "images": 2120}


def test_a_stopped_run_resumes_exactly(tmp_path):
    config = resolve("omniglot", overrides=dict(FAST_OMNIGLOT, iterations=12, eval_every=6, crosscheck_every=0, checkpoint_every=0, val_fraction=0.0))
    log = train.Log(quiet=True)
    prepared = train.prepare(config, log)
    straight = train.train_seed(prepared, 5, tmp_path / "straight", log=log, progress=False)
    stopped = train.train_seed(prepared, 5, tmp_path / "split", log=log, progress=False, stop_at=7)
    assert stopped == {"seed": 5, "complete": False, "iteration": 7}
    with pytest.raises(Exception, match="--resume"):
        train.train_seed(prepared, 5, tmp_path / "split", log=log, progress=False)
    resumed = train.train_seed(prepared, 5, tmp_path / "split", log=log, progress=False, resume=True)
    np.testing.assert_allclose(resumed["losses"], straight["losses"], rtol=1e-6)
    assert [h["iteration"] for h in resumed["history"]] == [0, 6, 12]
    assert resumed["last"]["recall"][1] == pytest.approx(straight["last"]["recall"][1], abs=1e-3)
    again = train.train_seed(prepared, 5, tmp_path / "split", log=log, progress=False, resume=True)  # complete: not retrained
    assert again["losses"] == resumed["losses"]


def test_cub_mode_refuses_without_data_or_weights(tmp_path, capsys):
    assert main(["--dataset", "cub", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "--data" in err and "--weights" in err
    base = make_cub(tmp_path)
    assert main(["--data", str(base), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "does not match the data set" in err and "bn_inception-52deb4733.pth" in err
    assert not (tmp_path / "out").exists()


def test_cub_mode_end_to_end_on_a_generated_folder_and_weights(tmp_path, capsys):
    base = make_cub(tmp_path / "data", images_per_class=(4, 5, 6, 5, 4, 6, 5, 5))
    # Stand-in "pretrained" weights: random convolutions whose BN statistics are calibrated on random
    # images (with the initial statistics 0/1, frozen BN lets a random network collapse every image
    # onto nearly one embedding, S > 1 - 1e-5, which the official rules treat as self pairs).
    torch.manual_seed(0)
    model = BNInception()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model.features(torch.randn(8, 3, 64, 64) * 50)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    weights = tmp_path / "bn_inception-generated.pth"
    torch.save(state, weights)
    common = ["--data", str(base), "--weights", str(weights), "--allow-nonstandard-data", "--resize", "72", "--crop", "64",
              "--classes-per-batch", "4", "--instances", "2", "--threads", "1"]
    assert main(common + ["--check"]) == 0
    out = capsys.readouterr().out
    assert "loaded 414 tensors; missing 0, unexpected 0" in out and "check passed" in out
    assert main(common + ["--iterations", "2", "--eval-every", "2", "--crosscheck-every", "1", "--ks", "1", "2", "--out", str(tmp_path / "run"), "--no-progress", "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["config"]["backbone"] == "bninception" and summary["config"]["pooling"] == "max"
    assert summary["config"]["hyper"] == {"alpha": 2.0, "beta": 40.0, "lam": 0.5, "eps": 0.1}
    assert summary["weights"]["complete"] and summary["data"]["test"]["images"] == 20
    seed = json.loads((tmp_path / "run" / "seed_0" / "results.json").read_text())
    assert [h["iteration"] for h in seed["history"]] == [0, 2] and len(seed["losses"]) == 2 and not seed["skipped_batches"]
    assert seed["crosscheck_summary"]["bridge_all_ok"] and seed["crosscheck_summary"]["independent_all_ok"]
    assert "Recall@K on the test split" in capsys.readouterr().out


def test_variants_and_flags_resolve():
    official = resolve("cub")
    assert (official.hyper["beta"], official.backbone_lr_mult, official.pooling, official.freeze_bn) == (40.0, 1.0, "max", True)
    assert (official.lr, official.weight_decay, official.iterations, official.lr_steps) == (3e-5, 5e-4, 3000, (1200, 2400))
    assert (official.input_mode, official.resize, official.crop, official.crop_scale) == ("bgr255", 256, 227, (0.16, 1.0))
    paper = resolve("cub", variants=["paper-text"])
    assert (paper.hyper["beta"], paper.backbone_lr_mult, paper.pooling, paper.freeze_bn) == (50.0, 0.1, "avg", False)
    flag = resolve("cub", variants=["beta50"], overrides={"hyper": {"beta": 45.0}})
    assert flag.hyper == {"alpha": 2.0, "beta": 45.0, "lam": 0.5, "eps": 0.1}
    other = resolve("cub", overrides={"profile": "paper"})
    assert other.hyper == {}  # the paper profile's own defaults


def test_command_line_flags_reach_the_settings():
    from gpwref_verification.reproduce_cub200 import build_parser, config_from_args

    args = build_parser().parse_args(["--dataset", "omniglot", "--loss", "triplet", "--hyper", "mining=semi_hard", "margin=0.2",
                                      "--variant", "avgpool", "--lr-steps", "100", "--crop-scale", "0.5", "1", "--no-freeze-bn"])
    config = config_from_args(args)
    assert (config.loss, config.profile, config.hyper) == ("triplet", "paper", {"mining": "semi_hard", "margin": 0.2})
    assert config.pooling == "avg" and config.lr_steps == (100,) and config.crop_scale == (0.5, 1.0) and not config.freeze_bn
    ms = config_from_args(build_parser().parse_args(["--beta", "50", "--eps", "none"]))
    assert ms.hyper == {"alpha": 2.0, "beta": 50.0, "lam": 0.5, "eps": None} and ms.dataset == "cub"
    with pytest.raises(GpwrefError, match="gamma"):
        config_from_args(build_parser().parse_args(["--hyper", "gamma=3"]))
