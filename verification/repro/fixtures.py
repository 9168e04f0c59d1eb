"""Generated stand-ins for data a user must bring: a CUB_200_2011 folder in the data set's layout.

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
