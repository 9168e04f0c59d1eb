"""BN-Inception (Ioffe & Szegedy 2015) in the layout of the widely used converted Caffe model.

Module names follow that model's state dict (the file ``bn_inception-52deb4733.pth`` used by the
official MS code), so that it loads key for key: a stem ``conv1_7x7_s2``, ``conv2_3x3_reduce``,
``conv2_3x3`` (each a biased convolution followed by ``<name>_bn``), then ten inception blocks
``inception_{3a,3b,3c,4a,4b,4c,4d,4e,5a,5b}`` whose units are ``<block>_<unit>`` and
``<block>_<unit>_bn``, and the ImageNet classifier ``last_linear`` (1024 -> 1000), which the
reproduction does not use. 69 convolution + batch-norm units: 414 backbone tensors + 2 classifier.

Block layout (output channels per branch; "-" = branch absent; stride-2 blocks halve the size):

    block in    1x1  3x3 reduce/3x3   double reduce/3x3/3x3   pool        pool proj  out
    3a    192   64   64/64            64/96/96                avg 3 s1    32         256
    3b    256   64   64/96            64/96/96                avg 3 s1    64         320
    3c    320   -    128/160 s2       64/96/96 s2             max 3 s2    -          576
    4a    576   224  64/96            96/128/128              avg 3 s1    128        576
    4b    576   192  96/128           96/128/128              avg 3 s1    128        576
    4c    576   160  128/160          128/160/160             avg 3 s1    128        608
    4d    608   96   128/192          160/192/192             avg 3 s1    128        608
    4e    608   -    128/192 s2       192/256/256 s2          max 3 s2    -          1056
    5a    1056  352  192/320          160/224/224             avg 3 s1    128        1024
    5b    1024  352  192/320          192/224/224             max 3 s1    128        1024

Every unit is conv -> BN -> ReLU; pools use ``ceil_mode`` (average pools count the padding), as
the converted model does. BatchNorm uses torch's defaults (eps 1e-5, momentum 0.1) as the official
MS code's copy does. The stride-2 blocks need an even input size there (227 and 224 give 28 and 14).

``features(x)`` returns the 1024-channel map (7 x 7 for a 227 or 224 input); the reproduction pools
it itself (global max pooling in the official code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gpwref import GpwrefError

# name, in, 1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool kind, pool proj, stride
BLOCKS = (
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, None, 128, 160, 64, 96, "max", None, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, None, 128, 192, 192, 256, "max", None, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
)
FEATURE_DIM = 1024


class BNInception(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._add_unit("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._add_unit("conv2_3x3_reduce", 64, 64, 1)
        self._add_unit("conv2_3x3", 64, 192, 3, padding=1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, cin, c1, c3r, c3, cdr, cd, pool, proj, stride in BLOCKS:
            prefix = f"inception_{name}"
            if c1 is not None:
                self._add_unit(f"{prefix}_1x1", cin, c1, 1)
            self._add_unit(f"{prefix}_3x3_reduce", cin, c3r, 1)
            self._add_unit(f"{prefix}_3x3", c3r, c3, 3, stride=stride, padding=1)
            self._add_unit(f"{prefix}_double_3x3_reduce", cin, cdr, 1)
            self._add_unit(f"{prefix}_double_3x3_1", cdr, cd, 3, padding=1)
            self._add_unit(f"{prefix}_double_3x3_2", cd, cd, 3, stride=stride, padding=1)
            if pool == "avg":
                pool_layer = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            elif stride == 2:
                pool_layer = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            else:
                pool_layer = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
            self.add_module(f"{prefix}_pool", pool_layer)
            if proj is not None:
                self._add_unit(f"{prefix}_pool_proj", cin, proj, 1)
        self.last_linear = nn.Linear(FEATURE_DIM, num_classes)

    def _add_unit(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))

    def _unit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def _block(self, name: str, x: torch.Tensor) -> torch.Tensor:
        prefix = f"inception_{name}"
        branches = []
        if hasattr(self, f"{prefix}_1x1"):
            branches.append(self._unit(f"{prefix}_1x1", x))
        branches.append(self._unit(f"{prefix}_3x3", self._unit(f"{prefix}_3x3_reduce", x)))
        double = self._unit(f"{prefix}_double_3x3_reduce", x)
        branches.append(self._unit(f"{prefix}_double_3x3_2", self._unit(f"{prefix}_double_3x3_1", double)))
        pooled = getattr(self, f"{prefix}_pool")(x)
        branches.append(self._unit(f"{prefix}_pool_proj", pooled) if hasattr(self, f"{prefix}_pool_proj") else pooled)
        return torch.cat(branches, dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_3x3_s2(self._unit("conv1_7x7_s2", x))
        x = self._unit("conv2_3x3", self._unit("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for spec in BLOCKS:
            x = self._block(spec[0], x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (global average pooling + ``last_linear``), for a sanity check of the weights."""
        return self.last_linear(self.features(x).mean(dim=(2, 3)))


@dataclass
class WeightsReport:
    """What loading a weights file did; printed before training and stored in the results."""

    path: str
    sha256: str
    name_hash: str | None  # hex digits in the file name (torch hub convention: a sha256 prefix)
    name_hash_matches: bool | None
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # model tensors the file does not hold
    unexpected: list[str] = field(default_factory=list)  # file tensors the model has no place for
    mismatched: list[str] = field(default_factory=list)  # same name, incompatible shape
    reshaped: list[str] = field(default_factory=list)  # (1, C) stored for (C,): squeezed
    ignored: list[str] = field(default_factory=list)  # the ImageNet classifier, unused as in the official code

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        hash_note = ""
        if self.name_hash is not None:
            hash_note = f"; name hash {self.name_hash} {'matches' if self.name_hash_matches else 'DOES NOT match'} the sha256 prefix"
        lines = [
            f"weights {self.path}",
            f"  sha256 {self.sha256}{hash_note}",
            f"  loaded {self.loaded} tensors; missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape mismatches {len(self.mismatched)}, reshaped (1,C)->(C) {len(self.reshaped)}, ignored {len(self.ignored)} ({', '.join(self.ignored) or 'none'})",
        ]
        for what in ("missing", "unexpected", "mismatched"):
            names = getattr(self, what)
            if names:
                lines.append(f"  {what}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
        return "\n".join(lines)


def _read_state_dict(path: Path, trust_pickle: bool) -> dict:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is reported the same way
        if not trust_pickle:
            raise GpwrefError(
                "weights",
                "could not be read as a plain tensor file (torch.load weights_only=True failed); if you trust the file, "
                f"pass --trust-weights-pickle to load it with full unpickling ({type(error).__name__}: {error})",
                str(path),
            ) from error
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise GpwrefError("weights", "must hold a state dict (tensor name -> tensor)", type(loaded).__name__)
    return {k[7:] if k.startswith("module.") else k: v for k, v in loaded.items()}


def load_pretrained(
    model: nn.Module, path, *, trust_pickle: bool = False, partial: bool = False, ignore_prefixes=("last_linear.",), sha256: str | None = None
) -> WeightsReport:
    """Copy a weights file into ``model`` tensor by tensor and report exactly what happened.

    Nothing is copied unless every tensor has a place (``report.complete``) or ``partial`` is set
    (then the tensors that fit are copied and the rest stay as initialised); the ImageNet
    classifier is skipped (the official code does the same). BatchNorm buffers ``num_batches_tracked``
    are not in old files and are not needed (eval-mode BN ignores them).
    """
    from .data import file_sha256

    path = Path(path).expanduser()
    if not path.is_file():
        raise GpwrefError("weights", "must be an existing weights file (for BN-Inception the converted Caffe model bn_inception-52deb4733.pth)", str(path))
    digest = sha256 or file_sha256(path)
    match = re.search(r"-([0-9a-f]{6,64})\.[A-Za-z]+$", path.name)
    name_hash = match.group(1) if match else None
    report = WeightsReport(str(path), digest, name_hash, None if name_hash is None else digest.startswith(name_hash))
    state = _read_state_dict(path, trust_pickle)
    target = model.state_dict()
    updates = {}
    for key, tensor in state.items():
        if key.startswith(tuple(ignore_prefixes)):
            report.ignored.append(key)
            continue
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key].shape
        if tensor.shape == want:
            updates[key] = tensor
        elif tensor.numel() == target[key].numel() and tensor.dim() == 2 and tensor.shape[0] == 1 and len(want) == 1:
            updates[key] = tensor.reshape(want)
            report.reshaped.append(key)
        else:
            report.mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(want)}")
    ignored_targets = tuple(ignore_prefixes)
    report.missing = [
        k for k in target if k not in state and not k.endswith("num_batches_tracked") and not k.startswith(ignored_targets)
    ]
    if report.complete or partial:
        with torch.no_grad():
            for key, tensor in updates.items():
                target[key].copy_(tensor.to(target[key].dtype))
        report.loaded = len(updates)
    return report
