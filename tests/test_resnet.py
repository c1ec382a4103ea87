"""Tests for the torchvision-layout ResNet/ResNeXt port and its weight import."""

import hashlib
import os

import keras
import numpy as np
import pytest
from local_servers import closed_port_url

from kertransfer.backbones import resnet
from kertransfer.backbones.registry import assign_layer_groups
from kertransfer.backbones.registry import get_backbone
from kertransfer.backbones.registry import list_backbones
from kertransfer.layers import ImagePreprocessing

torch = pytest.importorskip("torch", reason="the reference model needs torch")
from torch_resnet_reference import BasicBlock  # noqa: E402
from torch_resnet_reference import ResNet as TorchResNet  # noqa: E402
from torch_resnet_reference import make_reference  # noqa: E402

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "tv_resnet50": 25_557_032,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
}
MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pixels(size, batch=2, seed=0):
    rng = np.random.RandomState(seed)
    return rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _torch_logits(reference, pixels, features=False):
    x = torch.from_numpy(((pixels - MEAN) / STD).astype("float32"))
    x = x.permute(0, 3, 1, 2)
    with torch.no_grad():
        if features:
            return reference.features(x).permute(0, 2, 3, 1).numpy()
        return reference(x).numpy()


def _run(model, pixels):
    return keras.ops.convert_to_numpy(model(pixels, training=False))


def _trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# A count of weights is the same on every backend.
@pytest.mark.one_backend
@pytest.mark.parametrize("arch", list(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(arch):
    model = getattr(resnet, arch)(weights=None, include_top=True)
    # torchvision counts parameters; BatchNorm running stats are buffers,
    # which Keras keeps as non-trainable weights.
    assert _trainable_params(model) == TORCHVISION_PARAMS[arch]


# The PyTorch reference alone: no Keras backend involved.
@pytest.mark.one_backend
def test_reference_parameter_counts_equal_torchvision():
    for arch in ("resnet18", "resnext50_32x4d"):
        reference = make_reference(arch)
        n = sum(p.numel() for p in reference.parameters())
        assert n == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnext50_32x4d"])
def test_logits_match_pytorch_reference(arch, tmp_path):
    reference = make_reference(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    model = getattr(resnet, arch)(
        weights=str(path), include_top=True, classifier_activation=None
    )
    for size in (64, 65):  # 65: odd sizes exercise PyTorch's padding.
        pixels = _pixels(size, seed=size)
        expected = _torch_logits(reference, pixels)
        np.testing.assert_allclose(_run(model, pixels), expected, atol=1e-4)


def test_features_match_and_fc_is_ignored_without_top(tmp_path):
    reference = make_reference("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # has fc.weight / fc.bias
    model = resnet.resnet18(weights=path, include_top=False)
    pixels = _pixels(65)
    features = _run(model, pixels)
    assert features.shape == (2, 3, 3, 512)
    expected = _torch_logits(reference, pixels, features=True)
    np.testing.assert_allclose(features, expected, atol=1e-4)


def test_softmax_output_is_probabilities(tmp_path):
    reference = make_reference("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = resnet.resnet18(weights=path, include_top=True)
    pixels = _pixels(64)
    logits = _torch_logits(reference, pixels)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(_run(model, pixels), expected, atol=1e-6)


# Reading .safetensors is numpy; the converted numerics run on every backend
# in test_logits_match_pytorch_reference.
@pytest.mark.one_backend
def test_timm_safetensors_layout(tmp_path):
    safetensors_numpy = pytest.importorskip(
        "safetensors.numpy", reason="reading .safetensors needs safetensors"
    )
    reference = make_reference("resnet18", seed=3)
    # timm's ResNet state dicts use torchvision's names (conv1, bn1,
    # layerN.M.*, fc); its hub files carry no num_batches_tracked.
    state = {
        k: v.numpy()
        for k, v in reference.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(state, str(path))
    model = resnet.resnet18(
        weights=path, include_top=True, classifier_activation=None
    )
    pixels = _pixels(64)
    expected = _torch_logits(reference, pixels)
    np.testing.assert_allclose(_run(model, pixels), expected, atol=1e-4)


# Keras saving, not backend code; grouped convolutions' numerics run on every
# backend in test_logits_match_pytorch_reference[resnext50_32x4d].
@pytest.mark.one_backend
def test_keras_file_round_trip_with_grouped_convolutions(tmp_path):
    model = resnet.build_resnet(
        (1, 1, 1, 1), cardinality=4, base_width=4, include_top=True
    )
    path = tmp_path / "tiny_resnext.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    pixels = _pixels(33)
    np.testing.assert_array_equal(_run(reloaded, pixels), _run(model, pixels))
    assert isinstance(reloaded.get_layer("preprocess"), ImagePreprocessing)


# Keras saving, not backend code.
@pytest.mark.one_backend
def test_weights_h5_round_trip(tmp_path):
    model = resnet.resnet18(weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet18.weights.h5"
    model.save_weights(path)
    loaded = resnet.resnet18(weights=path, input_shape=(32, 32, 3))
    pixels = _pixels(32)
    np.testing.assert_array_equal(_run(loaded, pixels), _run(model, pixels))


@pytest.mark.one_backend
def test_offline_imagenet_fails_fast_with_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # Nothing listens there: what an offline machine sees, without a network.
    source = resnet.RESNET_PRESETS["resnet18"]["weights"]
    monkeypatch.setitem(source, "base_url", closed_port_url(""))
    with pytest.raises(OSError) as info:
        resnet.resnet18(weights="imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert os.path.join(str(tmp_path), "models") in message
    assert "--weights PATH" in message and "weights=PATH" in message


# Download cache and conversion cache: file handling, backend-independent.
@pytest.mark.one_backend
def test_imagenet_weights_come_from_cache_and_are_converted_once(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    reference = make_reference("resnet18", seed=5)
    pth = tmp_path / "models" / "resnet18-f37072fd.pth"
    pth.parent.mkdir()
    torch.save(reference.state_dict(), pth)
    # A stand-in for the real file: the preset expects its hash.
    source = resnet.RESNET_PRESETS["resnet18"]["weights"]
    monkeypatch.setitem(source, "sha256", hashlib.sha256(pth.read_bytes()).hexdigest())
    monkeypatch.setitem(source, "base_url", closed_port_url(""))
    model = resnet.resnet18(
        weights="imagenet", include_top=True, classifier_activation=None
    )
    pixels = _pixels(64)
    expected = _torch_logits(reference, pixels)
    np.testing.assert_allclose(_run(model, pixels), expected, atol=1e-4)
    converted = tmp_path / "kertransfer" / "resnet18-f37072fd.weights.h5"
    assert converted.is_file()
    pth.unlink()  # the converted cache is enough from now on
    again = resnet.resnet18(
        weights="imagenet", include_top=True, classifier_activation=None
    )
    np.testing.assert_array_equal(_run(again, pixels), _run(model, pixels))


@pytest.mark.one_backend
def test_corrupt_cached_download_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    pth = tmp_path / "models" / "resnet18-f37072fd.pth"
    pth.parent.mkdir()
    pth.write_bytes(b"not a checkpoint")
    with pytest.raises(OSError, match="f37072fd.*--weights PATH"):
        resnet.resnet18(weights="imagenet")


def _tiny_pair(num_classes=1000):
    reference = TorchResNet(BasicBlock, (1, 1, 1, 1), num_classes=num_classes)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    model = resnet.build_resnet((1, 1, 1, 1), block="basic", include_top=True)
    return model, state


# The state-dict checks are numpy.
@pytest.mark.one_backend
def test_conversion_reports_missing_and_unexpected_keys():
    model, state = _tiny_pair()
    del state["layer2.0.bn1.running_var"]
    state["layer2.0.conv3.weight"] = np.zeros((1, 1, 1, 1), "float32")
    with pytest.raises(ValueError) as info:
        resnet.convert_torchvision_state_dict(model, state)
    message = str(info.value)
    assert "missing keys ['layer2.0.bn1.running_var']" in message
    assert "unexpected keys ['layer2.0.conv3.weight']" in message


@pytest.mark.one_backend
def test_conversion_reports_shape_mismatch_and_changes_nothing():
    model, state = _tiny_pair(num_classes=10)
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    with pytest.raises(ValueError, match=r"fc.weight: checkpoint \(10, 512\)"):
        resnet.convert_torchvision_state_dict(model, state)
    after = [keras.ops.convert_to_numpy(w) for w in model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.one_backend
def test_conversion_strips_data_parallel_prefix():
    model, state = _tiny_pair()
    state = {f"module.{k}": v for k, v in state.items()}
    resnet.convert_torchvision_state_dict(model, state)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("fc").bias), state["module.fc.bias"]
    )


@pytest.mark.one_backend
def test_bad_weights_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        resnet.resnet18(weights=tmp_path / "missing.pth")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        resnet.resnet18(weights=other)
    with pytest.raises(ValueError, match="Received weights=3"):
        resnet.resnet18(weights=3)
    with pytest.raises(ValueError, match="Received cardinality=32"):
        resnet.build_resnet((2, 2, 2, 2), block="basic", cardinality=32)


# Layer names and groups.
@pytest.mark.one_backend
@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d"])
def test_layer_groups_cover_every_weighted_layer(arch):
    spec = get_backbone(arch)
    model = spec.builder(weights=None, input_shape=(32, 32, 3), include_top=False)
    early, late = assign_layer_groups(model, spec.layer_groups)
    early_names = {layer.name for layer in early}
    late_names = {layer.name for layer in late}
    assert {"conv1", "bn1", "layer1_0_conv1", "layer2_0_downsample_0"} <= early_names
    assert {"layer3_0_conv1", "layer4_0_downsample_1"} <= late_names
    assert all(n.startswith(("layer3_", "layer4_")) for n in late_names)
    assert model.layers[1].name == "preprocess"
    assert model.output_shape == (None, 1, 1, 512 if arch == "resnet18" else 2048)


@pytest.mark.one_backend
def test_registry_entries():
    assert set(TORCHVISION_PARAMS) <= set(list_backbones())
    assert "download.pytorch.org" in get_backbone("resnet34").weights_note
