"""Tests for the keras.applications entries of the backbone registry."""

import os

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils
from local_servers import closed_port_url

from kertransfer.backbones import keras_apps
from kertransfer.backbones.registry import assign_layer_groups
from kertransfer.backbones.registry import build_backbone
from kertransfer.backbones.registry import get_backbone
from kertransfer.layers import ImagePreprocessing

FEATURE_CHANNELS = {
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576,
    "efficientnet_b0": 1280,
}
# Each application's own preprocessing, for the exactness checks.
PREPROCESS_INPUT = {
    "resnet50": keras.applications.resnet.preprocess_input,
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": keras.applications.mobilenet_v3.preprocess_input,
    "efficientnet_b0": keras.applications.efficientnet.preprocess_input,
}
SIZE = 32


def _pixels(size=SIZE, batch=2, seed=0):
    rng = np.random.RandomState(seed)
    return rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _run(model, pixels):
    return keras.ops.convert_to_numpy(model(pixels, training=False))


def _randomise_statistics(model, seed=0):
    """Non-trivial BatchNorm statistics and ImageNet-like Normalization."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
        if isinstance(layer, keras.layers.Normalization):
            # What keras.applications' EfficientNet ImageNet file stores.
            layer.adapt_mean.assign([0.485, 0.456, 0.406])
            layer.adapt_variance.assign([0.229, 0.224, 0.225])
            layer.finalize_state()


def _save_legacy_h5(model, path):
    """Writes `model`'s weights as keras.applications ships them (.h5)."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


# Saving and reloading is Keras code, not backend code: ResNet50 on each
# backend, one of each other family once (ResNet101 and ResNet152 are
# ResNet50's code with more blocks; their groups are checked in
# tests/test_groups.py).
@pytest.mark.parametrize("arch", [
    a if a == "resnet50" else pytest.param(a, marks=pytest.mark.one_backend)
    for a in FEATURE_CHANNELS if a not in ("resnet101", "resnet152")
])
def test_builds_groups_and_reloads_local_weights(arch, tmp_path):
    spec = get_backbone(arch)
    model = build_backbone(arch, weights=None, input_shape=(SIZE, SIZE, 3))
    assert model.name == arch
    assert model.output_shape == (None, 1, 1, FEATURE_CHANNELS[arch])
    assert model.layers[1].name == "preprocess"
    assert isinstance(model.layers[1], ImagePreprocessing)
    # Raises if a layer with weights is in no group.
    early, late = assign_layer_groups(model, spec.layer_groups)
    assert early and late
    assert early[0].name != late[0].name

    _randomise_statistics(model)
    path = tmp_path / f"{arch}.weights.h5"
    model.save_weights(path)
    loaded = build_backbone(arch, weights=str(path), input_shape=(SIZE, SIZE, 3))
    pixels = _pixels()
    np.testing.assert_array_equal(_run(loaded, pixels), _run(model, pixels))


# Building with the top at a dynamic size is registry code; these archs' forward
# numerics run on every backend in test_keras_imagenet_file_gives_exactly_keras_applications.
@pytest.mark.one_backend
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0"])
def test_include_top_with_dynamic_size(arch):
    model = keras_apps.build_keras_app(arch, weights=None, include_top=True)
    assert model.output_shape == (None, 1000)
    probabilities = _run(model, _pixels(40))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.one_backend
def test_preprocessing_values():
    caffe = get_backbone("resnet50").builder(weights=None, input_shape=(SIZE, SIZE, 3))
    layer = caffe.get_layer("preprocess")
    assert layer.channel_order == "bgr"
    assert layer.mean == [103.939, 116.779, 123.68] and layer.std == [1.0] * 3
    effnet = keras_apps.build_keras_app(
        "efficientnet_b0", weights=None, input_shape=(SIZE, SIZE, 3)
    )
    identity = effnet.get_layer("preprocess")
    assert identity.mean == [0.0] * 3 and identity.std == [1.0] * 3


# Our only backend code in these models is `preprocess`
# (ImagePreprocessing): every backend runs it with the caffe (resnet50, BGR)
# and the [-1, 1] (mobilenet_v2, also MobileNetV3Small's) constants against
# the application's own `preprocess_input`, here and in the next test
# (ResNet50 end to end). EfficientNetB0's is the identity (its variance fold
# is numpy); the rest of each forward pass is keras.applications' code,
# checked in the TensorFlow pass (under JAX the MobileNetV2 build alone
# costs about 20 s, MobileNetV3Small and EfficientNetB0 about 80 s).
@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v2"])
def test_preprocess_layer_matches_preprocess_input(arch):
    preprocessing = keras_apps.KERAS_APP_PRESETS[arch]["preprocessing"]
    pixels = _pixels()
    expected = PREPROCESS_INPUT[arch](pixels.copy())
    np.testing.assert_allclose(_run(ImagePreprocessing(**preprocessing), pixels), expected, atol=1e-5)


@pytest.mark.parametrize("arch", [
    a if a == "resnet50" else pytest.param(a, marks=pytest.mark.one_backend)
    for a in PREPROCESS_INPUT
])
def test_keras_imagenet_file_gives_exactly_keras_applications(
    arch, tmp_path, monkeypatch
):
    """Our model on raw pixels == keras.applications(weights="imagenet") on
    `preprocess_input(pixels)`, given the same Keras `.h5` weights file."""
    application = getattr(
        keras.applications, keras_apps.KERAS_APP_PRESETS[arch]["application"]
    )
    shape = (SIZE, SIZE, 3)
    source = application(include_top=False, weights=None, input_shape=shape)
    _randomise_statistics(source)
    path = str(tmp_path / "imagenet.h5")
    _save_legacy_h5(source, path)
    # Make keras.applications "download" our file instead.
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: path)
    expected_model = application(
        include_top=False, weights="imagenet", input_shape=shape
    )
    ours = keras_apps.build_keras_app(arch, weights=path, input_shape=shape)
    pixels = _pixels()
    expected = _run(expected_model, PREPROCESS_INPUT[arch](pixels.copy()))
    np.testing.assert_allclose(_run(ours, pixels), expected, atol=1e-5)


@pytest.mark.one_backend
def test_presets_name_the_files_keras_applications_downloads():
    from keras.src.applications import efficientnet
    from keras.src.applications import mobilenet_v2
    from keras.src.applications import mobilenet_v3
    from keras.src.applications import resnet

    presets = keras_apps.KERAS_APP_PRESETS

    def hashes(arch):
        return (presets[arch]["weights"]["md5"], presets[arch]["weights_notop"]["md5"])

    def base_urls(arch):
        return {presets[arch][key]["base_url"] for key in ("weights", "weights_notop")}

    assert base_urls("resnet152") == {resnet.BASE_WEIGHTS_PATH}
    for arch in ("resnet50", "resnet101", "resnet152"):
        assert hashes(arch) == resnet.WEIGHTS_HASHES[arch]
    assert base_urls("mobilenet_v2") == {mobilenet_v2.BASE_WEIGHT_PATH}
    assert base_urls("mobilenet_v3_small") == {mobilenet_v3.BASE_WEIGHT_PATH}
    assert hashes("mobilenet_v3_small") == (
        mobilenet_v3.WEIGHTS_HASHES["small_224_1.0_float"]
    )
    assert base_urls("efficientnet_b0") == {efficientnet.BASE_WEIGHTS_PATH}
    assert hashes("efficientnet_b0") == efficientnet.WEIGHTS_HASHES["b0"]


def _offline(monkeypatch, arch):
    """Points `arch`'s downloads at 127.0.0.1, where nothing listens."""
    for key in ("weights", "weights_notop"):
        source = keras_apps.KERAS_APP_PRESETS[arch][key]
        monkeypatch.setitem(source, "base_url", closed_port_url(""))


# Finding the cached file is backend-independent.
@pytest.mark.one_backend
def test_imagenet_weights_come_from_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _offline(monkeypatch, "mobilenet_v2")
    shape = (SIZE, SIZE, 3)
    source = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=shape
    )
    _randomise_statistics(source)
    # Keras' name for the no-top 224 px file; other sizes fall back to it.
    cached = (
        tmp_path
        / "models"
        / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    cached.parent.mkdir()
    _save_legacy_h5(source, cached)
    from_cache = build_backbone("mobilenet_v2", weights="imagenet", input_shape=shape)
    from_path = build_backbone("mobilenet_v2", weights=cached, input_shape=shape)
    pixels = _pixels()
    np.testing.assert_array_equal(_run(from_cache, pixels), _run(from_path, pixels))


@pytest.mark.one_backend
def test_offline_imagenet_fails_fast_with_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _offline(monkeypatch, "resnet50")
    with pytest.raises(OSError) as info:
        build_backbone("resnet50", weights="imagenet")
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert os.path.join(str(tmp_path), "models") in message
    assert "--weights PATH" in message and "weights=PATH" in message


@pytest.mark.one_backend
def test_bad_weights_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        keras_apps.build_keras_app("mobilenet_v2", weights=tmp_path / "nothing.h5")
    torch_file = tmp_path / "model.pth"
    torch_file.write_bytes(b"")
    with pytest.raises(ValueError, match="_no_top.h5"):
        keras_apps.build_keras_app("mobilenet_v2", weights=torch_file)
    with pytest.raises(ValueError, match="Available: resnet50"):
        keras_apps.build_keras_app("vgg16", weights=None)


@pytest.mark.one_backend
def test_mismatched_file_error_names_the_expected_file(tmp_path):
    top = keras_apps.build_keras_app(
        "mobilenet_v3_small",
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        include_top=True,
    )
    path = str(tmp_path / "with_top.h5")
    _save_legacy_h5(top, path)
    with pytest.raises(ValueError, match="float_no_top_v2.h5"):
        keras_apps.build_keras_app(
            "mobilenet_v3_small", weights=path, input_shape=(SIZE, SIZE, 3)
        )
