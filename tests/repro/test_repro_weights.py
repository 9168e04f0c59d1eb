"""A finished run keeps its weights (whatever --checkpoint-every), the validation-selected and the last
model each under its own name, and both reload in one call to the embeddings the run evaluated; the
alphabet-level validation split; one-pass training views. Tiny generated Omniglot folder: seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpwref import GpwrefError
from gpwref_verification.repro import train
from gpwref_verification.repro.config import resolve
from gpwref_verification.repro.data import ImageSet, read_omniglot, split_validation_alphabets
from gpwref_verification.repro.fixtures import make_omniglot_folder
from gpwref_verification.repro.metrics import retrieval_metrics
from gpwref_verification.repro.transforms import InputSpec, train_view
from gpwref_verification.repro.transforms import test_view as eval_view  # (a test_ name would be collected)

TINY = dict(allow_nonstandard_data=True, resize=16, crop=16, classes_per_batch=4, instances=2, iterations=4, eval_every=2,
            crosscheck_every=0, ks=(1, 2), val_alphabets=1, val_fraction=0.25, threads=1, lr=1e-2, lr_steps=(3,))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_omniglot_folder(tmp_path_factory.mktemp("omniglot"))


def _metrics_of(model, prepared, which):
    images = {"test": prepared.test, "val": prepared.val}[which]
    views = torch.stack([torch.from_numpy(eval_view(images.image(i), prepared.spec)) for i in range(len(images))])
    with torch.no_grad():
        embeddings = model(views).numpy()
    return embeddings, retrieval_metrics(embeddings, images.labels, prepared.config.ks, tie=prepared.config.tie)


@pytest.mark.parametrize("checkpoint_every", [0, 4])  # never, and every run-length (the issue's --checkpoint-every 20 of 20)
def test_a_finished_run_keeps_its_weights_and_they_reload_to_the_same_embeddings(tiny_folder, tmp_path, checkpoint_every):
    config = resolve("omniglot", overrides=dict(TINY, data=str(tiny_folder), checkpoint_every=checkpoint_every))
    log = train.Log(quiet=True)
    prepared = train.prepare(config, log)
    result = train.train_seed(prepared, 3, tmp_path, log=log, progress=False)
    assert result["model_files"] == {"last": "last_model.pt", "val_selected": "val_selected_model.pt"}
    final = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert final["iteration"] == 4

    last = train.load_model(tmp_path / "last_model.pt")
    assert last.saved == {"selection": "last", "seed": 3, "iteration": 4} and last.config == config and not last.training
    embeddings, metrics = _metrics_of(last, prepared, "test")
    logged = result["history"][-1]["test"]  # what the run measured on its in-memory model at iteration 4
    assert metrics["recall"] == pytest.approx(logged["recall"], abs=1e-12) and metrics["map_at_r"] == pytest.approx(logged["map_at_r"], abs=1e-12)
    # the same weights through another path: the resume checkpoint's state into a freshly built network
    rebuilt = train.build_model(prepared, 0)
    rebuilt.load_state_dict(final["model"])
    rebuilt.eval()
    np.testing.assert_allclose(embeddings, _metrics_of(rebuilt, prepared, "test")[0], rtol=0, atol=1e-6)

    chosen = train.load_model(tmp_path / "val_selected_model.pt")
    entry = next(h for h in result["history"] if h["iteration"] == chosen.saved["iteration"])
    assert chosen.saved["selection"] == "val_selected" and chosen.saved["iteration"] == result["val_selected"]["iteration"]
    assert entry["val"]["recall"][1] == max(h["val"]["recall"][1] for h in result["history"])
    assert _metrics_of(chosen, prepared, "val")[1]["recall"] == pytest.approx(entry["val"]["recall"], abs=1e-12)
    assert _metrics_of(chosen, prepared, "test")[1]["recall"] == pytest.approx(entry["test"]["recall"], abs=1e-12)


def test_load_model_refuses_what_is_not_a_model_file(tmp_path):
    with pytest.raises(GpwrefError, match="existing model file"):
        train.load_model(tmp_path / "absent.pt")
    torch.save({"model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(GpwrefError, match="format"):
        train.load_model(tmp_path / "checkpoint.pt")


def test_the_alphabet_split_holds_out_whole_alphabets_and_selection_uses_it(tiny_folder, tmp_path):
    split = read_omniglot(tiny_folder, strict=False)
    train_part, val = split_validation_alphabets(split.train, 1, seed=0)
    alphabets = lambda images: {name.split("/")[0] for name in images.class_names}  # noqa: E731
    assert len(alphabets(val)) == 1 and not alphabets(val) & alphabets(train_part)
    assert (val.num_classes, train_part.num_classes, len(val) + len(train_part)) == (4, 8, 48)
    assert split_validation_alphabets(split.train, 0)[1] is None
    with pytest.raises(GpwrefError, match="at least 1 of the 3"):
        split_validation_alphabets(split.train, 3)
    cub_like = ImageSet("cub", labels=[0, 1], class_names=["001.Bird", "002.Bird"], arrays=[np.zeros((2, 2), np.uint8)] * 2)
    with pytest.raises(GpwrefError, match="alphabet/character"):
        split_validation_alphabets(cub_like, 1)

    defaults = resolve("omniglot")
    assert (defaults.val_alphabets, defaults.val_fraction, defaults.resample) == (1, 0.1, "one-pass")
    assert (resolve("cub").val_alphabets, resolve("cub").resample) == (0, "two-pass")
    config = resolve("omniglot", overrides=dict(TINY, data=str(tiny_folder), checkpoint_every=0))
    prepared = train.prepare(config, train.Log(quiet=True))
    assert prepared.data_report["val"]["held_out"] == "alphabets" and len(prepared.data_report["val"]["alphabets"]) == 1
    assert prepared.data_report["val_characters"]["classes"] == 2 and prepared.train.num_classes == 6
    summary = train.run(config, [0], tmp_path, quiet=True, progress=False, prepared=prepared)
    seed = summary["per_seed"][0]
    assert seed["val_characters_selected"] is not None and summary["aggregate"]["val_characters_selected"] is not None
    assert "val-selected (alphabets)" in train.format_table(summary, (1, 2)) and "val-selected (characters)" in train.format_table(summary, (1, 2))


def test_one_pass_training_views_keep_the_stroke_contrast_of_test_views():
    # 3 px strokes on a 105 px drawing, as Omniglot's. Stroke sharpness = sum(ink^2) / sum(ink): the
    # mean ink under the strokes, which blurring lowers and resampling keeps. A test view resizes
    # 105 -> 32 once; a one-pass training view resamples its box (>= 80% of the area) once, so its
    # strokes are as sharp on average (the pixel grid's phase moves each draw by a few %); two passes
    # (shrink to 32, then scale the box back up) blur every zoomed-in view.
    drawing = np.full((105, 105), 255, np.uint8)
    drawing[20:85, 50:53] = 0
    drawing[50:53, 20:85] = 0
    from PIL import Image

    img = Image.fromarray(drawing, mode="L")
    sharpness = lambda view: float((view**2).sum() / view.sum())  # noqa: E731
    test_sharpness = sharpness(eval_view(img, InputSpec("ink", 32, 32)))
    one = InputSpec("ink", 32, 32, (0.8, 1.0), flip_prob=0.0, resample="one-pass")
    two = InputSpec("ink", 32, 32, (0.8, 1.0), flip_prob=0.0, resample="two-pass")
    one_pass = np.array([sharpness(train_view(img, one, np.random.default_rng(s))) for s in range(20)])
    two_pass = np.array([sharpness(train_view(img, two, np.random.default_rng(s))) for s in range(20)])
    assert abs(one_pass.mean() / test_sharpness - 1) < 0.05, (one_pass.mean(), test_sharpness)
    assert two_pass.mean() / test_sharpness < 0.9 and np.all(two_pass <= one_pass + 1e-6), (two_pass, one_pass)
    full = InputSpec("ink", 32, 32, (1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, resample="one-pass")
    np.testing.assert_array_equal(train_view(img, full, np.random.default_rng(0)), eval_view(img, full))  # the whole image: the test view
    with pytest.raises(GpwrefError, match="resample"):
        InputSpec(resample="three-pass")


def test_the_new_flags_reach_the_settings():
    from gpwref_verification.reproduce_cub200 import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--dataset", "omniglot", "--val-alphabets", "2", "--val-fraction", "0", "--resample", "two-pass", "--no-save-best"]))
    assert (config.val_alphabets, config.val_fraction, config.resample, config.save_best) == (2, 0.0, "two-pass", False)
    assert config_from_args(build_parser().parse_args(["--dataset", "omniglot"])).save_best
    with pytest.raises(GpwrefError, match="val_alphabets"):
        resolve("omniglot", overrides={"val_alphabets": -1})
