"""The official input pipeline, written with PIL and NumPy (no torchvision build exists on every machine).

Each step reproduces the torchvision transform the official code composes
(``ret_benchmark/data/transforms/build.py``), with the same geometry and PIL interpolation:

* ``Resize(256)``: the shorter side becomes 256, the longer ``int(256 * long / short)``, bilinear;
  an image whose shorter side is already 256 is left untouched.
* ``RandomResizedCrop(227, scale=(0.16, 1), ratio=(3/4, 4/3))``: up to 10 draws of an area fraction
  ``U(scale)`` and a log-uniform aspect ratio; the first box that fits is taken at a uniform
  position; otherwise the whole image's centre, clamped to the ratio range. Then bilinear resize
  to 227 x 227.
* ``RandomHorizontalFlip(0.5)``; test: ``CenterCrop(227)`` with the offset ``round((H - 227) / 2)``.

``resample`` says how a training view is resampled. ``"two-pass"`` is the official pipeline above:
resize, crop, resize again (two bilinear passes). ``"one-pass"`` draws the same box on the resized
grid but maps it back onto the original image and resizes that region once, so a training view is
made the way a test view is (one bilinear pass from the original pixels). It matters for small
inputs: Omniglot's 105 px drawings shrunk to 32 px and scaled up again lose stroke contrast that
the test views keep; the Omniglot default is ``"one-pass"``, CUB keeps the official ``"two-pass"``.

Pixel encodings (``mode``):

* ``"bgr255"`` (BN-Inception, the official setting): channels B, G, R, values 0-255 minus the mean
  (104, 117, 128), no scaling (``Normalize(mean / 255, std = 1 / 255)`` after ``ToTensor``);
* ``"rgb_imagenet"``: RGB in [0, 1], minus (0.485, 0.456, 0.406), divided by (0.229, 0.224, 0.225)
  (EfficientNet-Lite0 as its package documents it; the ResNet-50 config of the official code);
* ``"ink"``: one channel, ``1 - value / 255`` (Omniglot strokes are 1, paper is 0), for the small CNN.

Randomness comes from the ``numpy.random.Generator`` passed in, so a training sample's view is a
function of (seed, iteration, position in the batch) whatever the number of loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gpwref import GpwrefError

BGR_MEAN = np.array([104.0, 117.0, 128.0], dtype=np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MODES = ("bgr255", "rgb_imagenet", "ink")
RESAMPLES = ("two-pass", "one-pass")


@dataclass(frozen=True)
class InputSpec:
    mode: str = "bgr255"
    resize: int = 256
    crop: int = 227
    crop_scale: tuple[float, float] = (0.16, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    resample: str = "two-pass"

    def __post_init__(self):
        if self.resample not in RESAMPLES:
            raise GpwrefError("resample", f"must be one of {list(RESAMPLES)}", repr(self.resample))
        if self.mode not in MODES:
            raise GpwrefError("input_mode", f"must be one of {list(MODES)}", repr(self.mode))
        if not (isinstance(self.resize, int) and isinstance(self.crop, int) and 1 <= self.crop <= self.resize):
            raise GpwrefError("crop", "must be an integer with 1 <= crop <= resize", f"crop {self.crop}, resize {self.resize}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise GpwrefError("crop_scale", "must satisfy 0 < low <= high <= 1", self.crop_scale)
        if not 0.0 <= self.flip_prob <= 1.0:
            raise GpwrefError("flip_prob", "must lie in [0, 1]", self.flip_prob)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "ink" else 3


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after ``Resize(size)``: the shorter side becomes ``size``."""
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return width, height
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    new_size = shorter_side_size(img.size[0], img.size[1], size)
    return img if new_size == img.size else img.resize(new_size, Image.BILINEAR)


def random_resized_box(width: int, height: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, box height, box width) of a random resized crop, as torchvision draws it."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        box_w = int(round(math.sqrt(target_area * aspect)))
        box_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return top, left, box_h, box_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        box_w, box_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        box_h, box_w = height, int(round(height * max(ratio)))
    else:
        box_w, box_h = width, height
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def center_crop(img: Image.Image, size: int) -> Image.Image:
    width, height = img.size
    if size > width or size > height:
        raise GpwrefError("crop", f"must not exceed the resized image ({width} x {height})", size)
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image, mode: str) -> np.ndarray:
    """C x H x W float32 in the given pixel encoding."""
    if mode == "ink":
        grey = np.asarray(img.convert("L"), dtype=np.float32)
        return (1.0 - grey / 255.0)[None]
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    if mode == "bgr255":
        out = rgb[:, :, ::-1] - BGR_MEAN
    elif mode == "rgb_imagenet":
        out = (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    else:
        raise GpwrefError("input_mode", f"must be one of {list(MODES)}", repr(mode))
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def train_view(img: Image.Image, spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    width, height = shorter_side_size(img.size[0], img.size[1], spec.resize)
    top, left, box_h, box_w = random_resized_box(width, height, spec.crop_scale, spec.crop_ratio, rng)
    if spec.resample == "one-pass":  # the same box in the original's coordinates, resampled once
        sx, sy = img.size[0] / width, img.size[1] / height
        img = img.resize((spec.crop, spec.crop), Image.BILINEAR, box=(left * sx, top * sy, (left + box_w) * sx, (top + box_h) * sy))
    else:
        img = resize_shorter(img, spec.resize)
        img = img.crop((left, top, left + box_w, top + box_h)).resize((spec.crop, spec.crop), Image.BILINEAR)
    if rng.random() < spec.flip_prob:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_array(img, spec.mode)


def test_view(img: Image.Image, spec: InputSpec) -> np.ndarray:
    return to_array(center_crop(resize_shorter(img, spec.resize), spec.crop), spec.mode)
