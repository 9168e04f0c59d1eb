"""Image sets for the reproduction: the CUB-200-2011 folder, the Omniglot open-set split, and class splits.

CUB-200-2011 is read in the data set's own layout (``images.txt``, ``image_class_labels.txt``,
``classes.txt``, ``images/``) and checked against the numbers of the MS protocol: 200 classes,
11788 images, classes 1-100 for training (5864 images) and 101-200 for testing (5924 images), whole
images (no bounding-box crop). Anything missing or different is refused with a message that says
what was expected, unless the caller passes ``strict=False`` (then the differences are warnings in
the report; the tests use this for a small generated folder in the same layout).

Omniglot: the two "background small" sets (see ``verification/data/omniglot/README.md``). Training
classes are the characters of the five small1 alphabets; test classes are the characters of the
alphabets that only small2 has (Japanese_(katakana), Sanskrit, Tagalog). Latin and Greek appear in
both sets; the copies are compared byte for byte and small1's copy is kept (deduplication by
(alphabet, character)).

Labels inside an ``ImageSet`` are 0-based and contiguous; ``class_names`` maps them back.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from gpwref import GpwrefError

DEFAULT_OMNIGLOT = Path(__file__).resolve().parent.parent / "data" / "omniglot"


@dataclass(frozen=True)
class CubCounts:
    classes: int = 200
    images: int = 11788
    train_classes: int = 100  # classes 1..train_classes train, the rest test
    train_images: int = 5864
    test_images: int = 5924


CUB_COUNTS = CubCounts()

OMNIGLOT_SETS = ("images_background_small1", "images_background_small2")
OMNIGLOT_COUNTS = {"train_classes": 136, "train_images": 2720, "test_classes": 106, "test_images": 2120}


@dataclass
class ImageSet:
    """Images with 0-based contiguous labels; each image is a file path or an in-memory array."""

    name: str
    labels: np.ndarray
    class_names: list[str]
    paths: list[str] | None = None
    arrays: list[np.ndarray] | None = None  # uint8 H x W (grey) images held in memory

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        count = len(self.paths) if self.paths is not None else len(self.arrays)
        if count != len(self.labels):
            raise GpwrefError("labels", f"must have one label per image ({count} images)", len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image(self, index: int) -> Image.Image:
        if self.paths is not None:
            with Image.open(self.paths[index]) as img:
                return img.convert("RGB")
        return Image.fromarray(self.arrays[index], mode="L")

    def subset(self, classes, name: str) -> "ImageSet":
        """The images of the given classes (old label ids), relabelled 0..len(classes)-1."""
        classes = [int(c) for c in classes]
        new_label = {old: new for new, old in enumerate(classes)}
        keep = [i for i, y in enumerate(self.labels) if int(y) in new_label]
        return ImageSet(
            name=name,
            labels=np.array([new_label[int(self.labels[i])] for i in keep], dtype=np.int64),
            class_names=[self.class_names[c] for c in classes],
            paths=None if self.paths is None else [self.paths[i] for i in keep],
            arrays=None if self.arrays is None else [self.arrays[i] for i in keep],
        )


@dataclass
class SplitData:
    train: ImageSet
    test: ImageSet
    report: dict = field(default_factory=dict)


def split_validation(train: ImageSet, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet | None]:
    """Hold out ``round(fraction * classes)`` whole training classes as a validation split.

    The held-out classes are drawn with a fixed generator (``seed``, not the run's seed), so every
    seed of a run trains on the same classes and only the training randomness varies.
    """
    if not 0.0 <= fraction < 1.0:
        raise GpwrefError("val_fraction", "must lie in [0, 1)", fraction)
    n_val = int(round(fraction * train.num_classes))
    if n_val == 0:
        return train, None
    if train.num_classes - n_val < 2 or n_val < 2:
        raise GpwrefError("val_fraction", f"must leave at least 2 training and 2 validation classes out of {train.num_classes}", fraction)
    order = np.random.default_rng(seed).permutation(train.num_classes)
    val_classes = sorted(int(c) for c in order[:n_val])
    train_classes = sorted(int(c) for c in order[n_val:])
    return train.subset(train_classes, train.name), train.subset(val_classes, f"{train.name}-val")


def alphabet_of(class_name: str) -> str:
    """The group a class belongs to: the part of its name before the first '/' (Omniglot's alphabet)."""
    if "/" not in class_name:
        raise GpwrefError("val_alphabets", "needs class names of the form 'alphabet/character' (Omniglot); this data set has none", repr(class_name))
    return class_name.split("/", 1)[0]


def split_validation_alphabets(train: ImageSet, count: int, seed: int = 0) -> tuple[ImageSet, ImageSet | None]:
    """Hold out ``count`` whole alphabets (every character of each) as a validation split.

    Like the Omniglot test split (alphabets never seen in training), unlike ``split_validation``
    (unseen characters of seen alphabets). The alphabets are drawn with a fixed generator (``seed``).
    """
    if not (isinstance(count, int) and count >= 0):
        raise GpwrefError("val_alphabets", "must be an integer >= 0", count)
    if count == 0:
        return train, None
    alphabets = sorted({alphabet_of(name) for name in train.class_names})
    if len(alphabets) - count < 1:
        raise GpwrefError("val_alphabets", f"must leave at least 1 of the {len(alphabets)} training alphabets for training", count)
    order = np.random.default_rng(seed).permutation(len(alphabets))
    held_out = {alphabets[i] for i in order[:count]}
    val_classes = [c for c, name in enumerate(train.class_names) if alphabet_of(name) in held_out]
    train_classes = [c for c, name in enumerate(train.class_names) if alphabet_of(name) not in held_out]
    return train.subset(train_classes, train.name), train.subset(val_classes, f"{train.name}-val-alphabets")


# ---------------------------------------------------------------------------------------------
# CUB-200-2011


def _find_cub_root(root: Path) -> Path:
    if (root / "images.txt").is_file():
        return root
    if (root / "CUB_200_2011" / "images.txt").is_file():
        return root / "CUB_200_2011"
    return root


def _read_pairs(path: Path, what: str) -> list[tuple[int, str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise GpwrefError("data", f"{path.name} line {number} must be '<id> <{what}>'", repr(line))
            rows.append((int(parts[0]), parts[1].strip()))
    return rows


def read_cub(root, *, counts: CubCounts = CUB_COUNTS, strict: bool = True, check_files: bool = True) -> SplitData:
    """Read and check a CUB_200_2011 folder; the MS split (classes 1-100 train, 101-200 test)."""
    if root is None:
        raise GpwrefError("data", "CUB mode needs --data PATH: a local CUB_200_2011 folder (images.txt, image_class_labels.txt, classes.txt, images/); it cannot be downloaded here")
    given = Path(root).expanduser()
    if not given.is_dir():
        raise GpwrefError("data", "must be an existing CUB_200_2011 folder (images.txt, image_class_labels.txt, classes.txt, images/)", str(given))
    base = _find_cub_root(given)
    needed = ["images.txt", "image_class_labels.txt", "classes.txt", "images"]
    missing = [name for name in needed if not (base / name).exists()]
    if missing:
        raise GpwrefError("data", f"a CUB_200_2011 folder must contain {needed}; missing {missing}", str(base))

    images = _read_pairs(base / "images.txt", "relative path")
    labels = _read_pairs(base / "image_class_labels.txt", "class id")
    classes = _read_pairs(base / "classes.txt", "class name")
    problems: list[str] = []
    image_ids = [i for i, _ in images]
    if len(set(image_ids)) != len(image_ids):
        raise GpwrefError("data", "images.txt must list each image id once", f"{len(image_ids) - len(set(image_ids))} repeated ids")
    label_of = {}
    for image_id, value in labels:
        if not value.isdigit():
            raise GpwrefError("data", "image_class_labels.txt must give an integer class id per image", repr(value))
        label_of[image_id] = int(value)
    unlabelled = [i for i in image_ids if i not in label_of]
    if unlabelled or len(label_of) != len(image_ids):
        raise GpwrefError("data", "image_class_labels.txt must label exactly the images of images.txt", f"{len(unlabelled)} unlabelled, {len(label_of)} labels for {len(image_ids)} images")
    class_name = {cid: name for cid, name in classes}
    unknown = sorted({c for c in label_of.values() if c not in class_name})
    if unknown:
        raise GpwrefError("data", "every class id in image_class_labels.txt must appear in classes.txt", f"unknown ids {unknown[:5]}")

    def expect(what: str, want: int, got: int) -> None:
        if want != got:
            problems.append(f"{what}: expected {want}, found {got}")

    class_ids = sorted(class_name)
    expect("classes", counts.classes, len(class_ids))
    expect("images", counts.images, len(images))
    if class_ids != list(range(1, len(class_ids) + 1)):
        problems.append("class ids must be 1..C without gaps")
    n_train_classes = counts.train_classes if strict else len(class_ids) // 2
    paths, ys = [], []
    absent = []
    for image_id, rel in images:
        path = base / "images" / rel
        if check_files and not path.is_file():
            absent.append(rel)
        paths.append(str(path))
        ys.append(label_of[image_id])
    if absent:
        raise GpwrefError("data", f"every file named in images.txt must exist under images/; {len(absent)} missing", f"first: {absent[:3]}")
    ys = np.array(ys)
    train_mask = ys <= n_train_classes
    expect(f"training images (classes 1-{n_train_classes})", counts.train_images, int(train_mask.sum()))
    expect(f"test images (classes {n_train_classes + 1}-{len(class_ids)})", counts.test_images, int((~train_mask).sum()))
    if problems and strict:
        raise GpwrefError("data", "the CUB_200_2011 folder does not match the data set (" + "; ".join(problems) + ")", str(base))

    def make(mask, name: str) -> ImageSet:
        ids = sorted(set(ys[mask].tolist()))
        relabel = {c: k for k, c in enumerate(ids)}
        return ImageSet(
            name=name,
            labels=np.array([relabel[c] for c in ys[mask]]),
            class_names=[class_name[c] for c in ids],
            paths=[p for p, keep in zip(paths, mask) if keep],
        )

    train = make(train_mask, "cub-train")
    test = make(~train_mask, "cub-test")
    report = {
        "root": str(base),
        "classes": len(class_ids),
        "images": len(images),
        "train": {"classes": train.num_classes, "images": len(train)},
        "test": {"classes": test.num_classes, "images": len(test)},
        "matches_cub_200_2011": not problems,
        "warnings": problems,
    }
    return SplitData(train, test, report)


# ---------------------------------------------------------------------------------------------
# Omniglot


def _omniglot_members(root: Path, set_name: str) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """(alphabet, character) -> sorted [(file name, PNG bytes)] from a zip or an extracted folder."""
    characters: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    archive, folder = root / f"{set_name}.zip", root / set_name
    if archive.is_file():
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                parts = name.split("/")
                if len(parts) == 4 and parts[0] == set_name and parts[3].endswith(".png"):
                    characters.setdefault((parts[1], parts[2]), []).append((parts[3], zf.read(name)))
    elif folder.is_dir():
        for path in folder.glob("*/*/*.png"):
            characters.setdefault((path.parts[-3], path.parts[-2]), []).append((path.name, path.read_bytes()))
    else:
        raise GpwrefError("data", f"an Omniglot folder must hold {set_name}.zip or an extracted {set_name}/", str(root))
    return {key: sorted(files) for key, files in characters.items()}


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _image_set(name: str, characters: dict, keys: list) -> ImageSet:
    arrays, labels = [], []
    for label, key in enumerate(keys):
        for _, png in characters[key]:
            arrays.append(_decode(png))
            labels.append(label)
    return ImageSet(name=name, labels=np.array(labels), class_names=[f"{a}/{c}" for a, c in keys], arrays=arrays)


def read_omniglot(root=None, *, strict: bool = True) -> SplitData:
    """The open-set Omniglot split: train on small1's alphabets, test on the alphabets only small2 has."""
    base = Path(root).expanduser() if root is not None else DEFAULT_OMNIGLOT
    if not base.is_dir():
        raise GpwrefError("data", f"must be a folder holding {OMNIGLOT_SETS[0]} and {OMNIGLOT_SETS[1]} (zip or extracted)", str(base))
    small1 = _omniglot_members(base, OMNIGLOT_SETS[0])
    small2 = _omniglot_members(base, OMNIGLOT_SETS[1])
    train_alphabets = sorted({a for a, _ in small1})
    shared = sorted({a for a, _ in small2} & set(train_alphabets))
    test_alphabets = sorted({a for a, _ in small2} - set(train_alphabets))
    shared_keys = sorted(set(small1) & set(small2))
    differing = [f"{a}/{c}" for a, c in shared_keys if small1[(a, c)] != small2[(a, c)]]
    train_keys = sorted(small1)
    test_keys = sorted(k for k in small2 if k[0] in test_alphabets)
    train = _image_set("omniglot-train", small1, train_keys)
    test = _image_set("omniglot-test", small2, test_keys)
    got = {"train_classes": train.num_classes, "train_images": len(train), "test_classes": test.num_classes, "test_images": len(test)}
    problems = [f"{k}: expected {v}, found {got[k]}" for k, v in OMNIGLOT_COUNTS.items() if got[k] != v]
    if problems and strict:
        raise GpwrefError("data", "the Omniglot background-small sets do not match the expected split (" + "; ".join(problems) + ")", str(base))
    report = {
        "root": str(base),
        "sha256": {f.name: _sha256(f) for f in sorted(base.glob("*.zip"))},
        "train_alphabets": train_alphabets,
        "test_alphabets": test_alphabets,
        "alphabets_in_both_sets": shared,
        "characters_in_both_sets": len(shared_keys),
        "shared_characters_identical": not differing,
        "shared_characters_differing": differing[:10],
        "union": {"characters": len(set(small1) | set(small2)), "images": sum(len(v) for v in {**small2, **small1}.values())},
        "train": {"classes": train.num_classes, "images": len(train)},
        "test": {"classes": test.num_classes, "images": len(test)},
        "warnings": problems,
    }
    return SplitData(train, test, report)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path) -> str:
    return _sha256(Path(path))


def read_dataset(name: str, root=None, *, strict: bool = True) -> SplitData:
    if name == "cub":
        return read_cub(root, strict=strict)
    if name == "omniglot":
        return read_omniglot(root, strict=strict)
    raise GpwrefError("dataset", "must be 'cub' or 'omniglot'", repr(name))


__all__ = [
    "CUB_COUNTS",
    "CubCounts",
    "DEFAULT_OMNIGLOT",
    "ImageSet",
    "SplitData",
    "file_sha256",
    "read_cub",
    "read_dataset",
    "read_omniglot",
    "alphabet_of",
    "split_validation",
    "split_validation_alphabets",
]
