"""Generated stand-ins for data a user must bring: a CUB_200_2011 folder in the data set's layout,
and a tiny Omniglot folder (``make_omniglot_folder``) in the layout of the two background-small sets.

Used by the tests (and handy to try ``gpwref reproduce --dataset cub`` without the data set):
``make_cub_folder(root)`` writes ``root/CUB_200_2011/`` with ``images.txt``,
``image_class_labels.txt``, ``classes.txt`` and ``images/<class folder>/<image>.jpg`` (random-pixel
JPEGs), ``cub_counts(...)`` the counts such a folder must show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .data import CubCounts

DEFAULT_SIZES = (3, 4, 5, 6, 7, 5, 6, 8)


def make_cub_folder(root, images_per_class=DEFAULT_SIZES, size=(40, 30), seed: int = 0) -> Path:
    base = Path(root) / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    image_lines, label_lines, class_lines = [], [], []
    image_id = 0
    for class_id, count in enumerate(images_per_class, start=1):
        folder = f"{class_id:03d}.Bird_{class_id}"
        class_lines.append(f"{class_id} {folder}")
        (base / "images" / folder).mkdir()
        for k in range(count):
            image_id += 1
            rel = f"{folder}/Bird_{class_id}_{k:04d}.jpg"
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "images" / rel, quality=90)
            image_lines.append(f"{image_id} {rel}")
            label_lines.append(f"{image_id} {class_id}")
    (base / "images.txt").write_text("\n".join(image_lines) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(label_lines) + "\n")
    (base / "classes.txt").write_text("\n".join(class_lines) + "\n")
    return base


def cub_counts(images_per_class=DEFAULT_SIZES) -> CubCounts:
    """The counts of a generated folder, its first half of classes being the training classes."""
    half = len(images_per_class) // 2
    return CubCounts(
        classes=len(images_per_class),
        images=sum(images_per_class),
        train_classes=half,
        train_images=sum(images_per_class[:half]),
        test_images=sum(images_per_class[half:]),
    )


def make_omniglot_folder(root, train_alphabets=("Alpha", "Beta", "Gamma"), test_alphabets=("Delta", "Epsilon"), characters: int = 4,
                         images: int = 4, size: int = 24, seed: int = 0) -> Path:
    """``root/images_background_small1/<alphabet>/<character>/<n>.png`` (the training alphabets) and
    ``images_background_small2/...`` (the test alphabets): one random stroke pattern per character,
    each drawing a jittered copy of it (ink 0 on paper 255). Read it with ``strict=False``."""
    base = Path(root)
    rng = np.random.default_rng(seed)
    for set_name, alphabets in (("images_background_small1", train_alphabets), ("images_background_small2", test_alphabets)):
        for alphabet in alphabets:
            for c in range(characters):
                folder = base / set_name / alphabet / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                pattern = rng.random((size, size)) < 0.15
                for k in range(images):
                    shifted = np.roll(pattern, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
                    Image.fromarray(np.where(shifted, 0, 255).astype(np.uint8), mode="L").save(folder / f"{c:02d}_{k:02d}.png")
    return base
