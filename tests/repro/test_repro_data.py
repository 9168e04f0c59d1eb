"""The CUB folder reader and its checks (on a generated folder in the real layout), the Omniglot
split, the validation split, and the input transforms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpwref import GpwrefError
from gpwref_verification.repro.data import CUB_COUNTS, read_cub, read_omniglot, split_validation
from gpwref_verification.repro.fixtures import cub_counts as tiny_counts
from gpwref_verification.repro.fixtures import make_cub_folder as make_cub
from gpwref_verification.repro.transforms import InputSpec, center_crop, random_resized_box, resize_shorter, to_array, train_view
from gpwref_verification.repro.transforms import test_view as eval_view  # (a test_ name would be collected)


def test_reads_a_folder_in_the_cub_layout(tmp_path):
    base = make_cub(tmp_path)
    split = read_cub(base, counts=tiny_counts())
    assert split.report["matches_cub_200_2011"] and not split.report["warnings"]
    assert (split.train.num_classes, len(split.train)) == (4, 18)
    assert (split.test.num_classes, len(split.test)) == (4, 26)
    assert split.train.class_names[0] == "001.Bird_1" and split.test.class_names[0] == "005.Bird_5"
    assert np.bincount(split.train.labels).tolist() == [3, 4, 5, 6]
    assert np.bincount(split.test.labels).tolist() == [7, 5, 6, 8]
    assert split.train.image(0).mode == "RGB" and split.train.image(0).size == (40, 30)
    # the parent folder works too
    assert len(read_cub(tmp_path, counts=tiny_counts()).train) == 18


def test_checks_the_real_counts(tmp_path):
    base = make_cub(tmp_path)
    assert (CUB_COUNTS.classes, CUB_COUNTS.train_images, CUB_COUNTS.test_images) == (200, 5864, 5924)
    with pytest.raises(GpwrefError, match="does not match the data set.*classes: expected 200, found 8"):
        read_cub(base)
    relaxed = read_cub(base, strict=False)  # counts become warnings; the split is the first half of the classes
    assert any("expected 5864" in w for w in relaxed.report["warnings"])
    assert relaxed.train.num_classes == 4


def test_refuses_what_is_missing(tmp_path):
    with pytest.raises(GpwrefError, match="needs --data"):
        read_cub(None)
    with pytest.raises(GpwrefError, match="existing CUB_200_2011 folder"):
        read_cub(tmp_path / "nowhere")
    base = make_cub(tmp_path)
    (base / "classes.txt").unlink()
    with pytest.raises(GpwrefError, match=r"missing \['classes.txt'\]"):
        read_cub(base, counts=tiny_counts())


def test_refuses_missing_images_and_bad_lists(tmp_path):
    base = make_cub(tmp_path / "a")
    next((base / "images").rglob("*.jpg")).unlink()
    with pytest.raises(GpwrefError, match="1 missing"):
        read_cub(base, counts=tiny_counts())
    base = make_cub(tmp_path / "b")
    lines = (base / "image_class_labels.txt").read_text().splitlines()
    (base / "image_class_labels.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(GpwrefError, match="label exactly the images"):
        read_cub(base, counts=tiny_counts())
    base = make_cub(tmp_path / "c")
    (base / "images.txt").write_text((base / "images.txt").read_text() + "x broken\n")
    with pytest.raises(GpwrefError, match="images.txt line"):
        read_cub(base, counts=tiny_counts())


def test_omniglot_open_set_split():
    split = read_omniglot()
    report = split.report
    assert (split.train.num_classes, len(split.train), split.test.num_classes, len(split.test)) == (136, 2720, 106, 2120)
    assert report["test_alphabets"] == ["Japanese_(katakana)", "Sanskrit", "Tagalog"]
    assert report["shared_characters_identical"] and report["union"] == {"characters": 242, "images": 4840}
    train_alphabets = {name.split("/")[0] for name in split.train.class_names}
    test_alphabets = {name.split("/")[0] for name in split.test.class_names}
    assert not train_alphabets & test_alphabets
    assert set(np.bincount(split.test.labels).tolist()) == {20}
    image = split.test.image(0)
    assert image.mode == "L" and image.size == (105, 105)


def test_validation_split_holds_out_whole_classes():
    split = read_omniglot()
    train, val = split_validation(split.train, 0.2, seed=0)
    again, _ = split_validation(split.train, 0.2, seed=0)
    assert (train.num_classes, val.num_classes) == (109, 27)
    assert not set(train.class_names) & set(val.class_names)
    assert train.class_names == again.class_names
    assert np.array_equal(np.unique(val.labels), np.arange(27))
    assert split_validation(split.train, 0.0)[1] is None
    with pytest.raises(GpwrefError, match="val_fraction"):
        split_validation(split.train, 1.0)


# --- transforms -----------------------------------------------------------------------------


def test_resize_keeps_the_aspect_and_sets_the_shorter_side():
    assert resize_shorter(Image.new("RGB", (500, 375)), 256).size == (341, 256)  # int(256 * 500 / 375)
    assert resize_shorter(Image.new("RGB", (300, 600)), 256).size == (256, 512)
    img = Image.new("RGB", (256, 300))
    assert resize_shorter(img, 256) is img


def test_center_crop_offset():
    pixels = np.arange(10 * 7).reshape(7, 10).astype(np.uint8)
    cropped = np.asarray(center_crop(Image.fromarray(pixels), 4))
    # top = round((7 - 4) / 2) = 2 (round half to even), left = round((10 - 4) / 2) = 3
    assert np.array_equal(cropped, pixels[2:6, 3:7])


def test_random_resized_box_stays_inside_and_respects_the_scale():
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        top, left, h, w = random_resized_box(width, height, (0.16, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
    # an extreme aspect ratio falls back to the clamped centre box
    top, left, h, w = random_resized_box(1000, 10, (0.99, 1.0), (3 / 4, 4 / 3), np.random.default_rng(1))
    assert (h, w) == (10, 13) and (top, left) == (0, (1000 - 13) // 2)


def test_pixel_encodings():
    img = Image.fromarray(np.full((2, 2, 3), (10, 120, 250), dtype=np.uint8))
    bgr = to_array(img, "bgr255")
    assert bgr.shape == (3, 2, 2)
    assert np.allclose(bgr[:, 0, 0], [250 - 104, 120 - 117, 10 - 128])
    rgb = to_array(img, "rgb_imagenet")
    assert np.allclose(rgb[:, 0, 0], [(10 / 255 - 0.485) / 0.229, (120 / 255 - 0.456) / 0.224, (250 / 255 - 0.406) / 0.225], atol=1e-6)
    ink = to_array(Image.fromarray(np.array([[0, 255]], dtype=np.uint8), mode="L"), "ink")
    assert ink.shape == (1, 1, 2) and ink[0, 0].tolist() == [1.0, 0.0]


def test_views_have_the_crop_size_and_train_views_are_seeded():
    spec = InputSpec("bgr255", 64, 56, (0.16, 1.0), flip_prob=0.5)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8))
    assert eval_view(img, spec).shape == (3, 56, 56)
    a = train_view(img, spec, np.random.default_rng(5))
    b = train_view(img, spec, np.random.default_rng(5))
    c = train_view(img, spec, np.random.default_rng(6))
    assert a.shape == (3, 56, 56) and np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(GpwrefError, match="crop"):
        InputSpec("bgr255", 64, 80)
