"""Saved models load in plain Keras, without kertransfer (`kertransfer.portable`).

The reference is the learner itself (`learn.predict`): a `model.keras` loaded
by `keras.saving.load_model` in a fresh Python that cannot import
kertransfer must give its probabilities.
"""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from kertransfer import layers as kt_layers
from kertransfer.backbones import BackboneSpec
from kertransfer.backbones import register_backbone
from kertransfer.learner import ConvLearner
from kertransfer.no_tensorflow import set_seed
from kertransfer.portable import portable_model
from kertransfer.portable import read_model_info
from kertransfer.predict import load_run
from kertransfer.run_folder import load_model_file

# Caffe-style (keras.applications ResNet50) means, in BGR order.
BGR_MEAN = (103.939, 116.779, 123.68)


def tiny_bgr_cnn(weights=None, input_shape=(None, None, 3), include_top=False):
    """tiny_cnn's shape with BGR preprocessing and kertransfer's JAX-fast
    convolutions (1x1 `Conv2D`, `DepthwiseConv2D`)."""
    set_seed(1)
    inputs = keras.Input(input_shape)
    x = kt_layers.ImagePreprocessing(BGR_MEAN, (58.0, 57.0, 57.5), channel_order="bgr", name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = kt_layers.DepthwiseConv2D(3, strides=2, padding="same", name="late_dwconv")(x)
    x = kt_layers.Conv2D(16, 1, name="late_conv")(x)
    x = keras.layers.BatchNormalization(name="late_bn")(x)
    return keras.Model(inputs, keras.layers.ReLU(name="late_relu")(x), name="tiny_bgr_cnn")


register_backbone(BackboneSpec("tiny_bgr_cnn", tiny_bgr_cnn, (r"(preprocess|stem_)", r"late_"), 32))


def _pixels(data):
    batches = data.valid_batches()
    return np.concatenate([batches[i][0] for i in range(len(batches))])


def _as_if_trained(model, seed=0):
    """Moves every BatchNorm's statistics off their initial 0 and 1 (as
    training would; the other weights are random already)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith(("moving_mean", "moving_variance")):
            low = 0.5 if variable.path.endswith("variance") else -0.5
            variable.assign(rng.uniform(low, low + 1, variable.shape).astype("float32"))


def _save_old_format(learn, path):
    """What `ConvLearner.save` wrote before portable files: the training
    model's own layers (`ImagePreprocessing`, `AdaptiveConcatPooling2D`)."""
    old = keras.Model.from_config(learn.model.get_config())
    old.set_weights(learn.model.get_weights())
    old.save(path)
    return str(path)


# Loads each model in a Python that cannot import kertransfer (it is
# installed, editable, so the name is blocked) and saves its probabilities,
# or the error, per name.
_PLAIN_KERAS = """
import json, sys
sys.modules["kertransfer"] = None  # `import kertransfer...` now raises
import keras
import numpy as np

models, pixels, out = json.loads(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]
errors = {}
for name, path in models.items():
    try:
        np.save(f"{out}/{name}.npy", keras.saving.load_model(path).predict(pixels, verbose=0))
    except Exception as e:
        errors[name] = f"{type(e).__name__}: {e}"
loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "kertransfer" and v is not None)
print(json.dumps({"errors": errors, "kertransfer_modules": loaded, "backend": keras.backend.backend()}))
"""


def _predict_in_plain_keras(models, pixels, tmp_path):
    """`{name: probs}` and `{name: error}` of `keras.saving.load_model` in a
    fresh Python (current backend, no kertransfer on its path)."""
    np.save(tmp_path / "pixels.npy", pixels)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["KERAS_BACKEND"] = keras.backend.backend()
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PLAIN_KERAS, json.dumps({k: str(v) for k, v in models.items()}),
         str(tmp_path / "pixels.npy"), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["kertransfer_modules"] == [] and report["backend"] == keras.backend.backend()
    probs = {name: np.load(tmp_path / f"{name}.npy") for name in models if name not in report["errors"]}
    return probs, report["errors"]


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    """Tiny learners (RGB, and BGR with the fast convolutions), each saved
    by `learn.save`, and tiny_cnn's also in the old format."""
    folder = tmp_path_factory.mktemp("saved")
    learners, paths = {}, {}
    for arch in ("tiny_cnn", "tiny_bgr_cnn"):
        learn = ConvLearner.pretrained(arch, tiny_data, precompute=False, weights=None)
        _as_if_trained(learn.model)
        learners[arch] = learn
        paths[arch] = learn.save(folder / arch)
    paths["old"] = _save_old_format(learners["tiny_cnn"], folder / "old.keras")
    return learners, paths


def test_saved_learner_predicts_the_same_in_plain_keras(saved, tiny_data, tmp_path):
    learners, paths = saved
    probs, errors = _predict_in_plain_keras(paths, _pixels(tiny_data), tmp_path)
    for arch, learn in learners.items():
        np.testing.assert_allclose(probs[arch], learn.predict()[0], atol=1e-5, err_msg=arch)
    # The guard works: the old format needs kertransfer's layers.
    assert "old" not in probs and "ImagePreprocessing" in errors["old"]


def test_saved_file_holds_keras_layers_and_the_facts(saved, tiny_data):
    _, paths = saved
    with zipfile.ZipFile(paths["tiny_bgr_cnn"]) as archive:
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json"))

    def modules(node):
        if isinstance(node, dict):
            if "class_name" in node and "module" in node:
                yield node["class_name"], node["module"]
            for value in node.values():
                yield from modules(value)
        elif isinstance(node, list):
            for value in node:
                yield from modules(value)

    found = set(modules(config))
    assert {module.split(".")[0] for _, module in found} == {"keras"}, found
    names = {name for name, _ in found}
    assert {"Rescaling", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Concatenate"} <= names
    assert not config.get("compile_config")  # no loss or metrics to resolve
    # Keras's own metadata stays; kertransfer's facts sit beside it.
    assert metadata["keras_version"] == keras.__version__
    info = metadata["kertransfer"]
    assert info == read_model_info(paths["tiny_bgr_cnn"])
    assert info["classes"] == list(tiny_data.classes) and info["multi_label"] is False
    assert info["arch"] == "tiny_bgr_cnn"
    facts = info["preprocessing"]
    assert (facts["image_size"], facts["crop_pct"]) == (32, tiny_data.valid_tfms.crop_pct)
    assert facts["mean"] == list(BGR_MEAN) and facts["channel_order"] == "bgr"
    assert read_model_info(paths["tiny_cnn"])["preprocessing"]["std"] == [127.5] * 3
    assert read_model_info(paths["old"]) == {}


def test_learner_loads_portable_and_old_files(saved, tiny_data):
    learners, paths = saved
    for arch, name in (("tiny_cnn", "tiny_cnn"), ("tiny_bgr_cnn", "tiny_bgr_cnn"), ("tiny_cnn", "old")):
        other = ConvLearner.pretrained(arch, tiny_data, precompute=False, weights=None)
        other.load(paths[name])
        np.testing.assert_allclose(other.predict()[0], learners[arch].predict()[0], atol=1e-5, err_msg=name)


def test_old_run_folder_still_loads_through_kertransfer(saved, tiny_data, tmp_path):
    learners, paths = saved
    expected = learners["tiny_cnn"].predict()[0]
    pixels = _pixels(tiny_data)
    model = load_model_file(paths["old"])
    assert isinstance(model.get_layer("concat_pool"), kt_layers.AdaptiveConcatPooling2D)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, atol=1e-5)
    run = tmp_path / "run"
    run.mkdir()
    _save_old_format(learners["tiny_cnn"], run / "model.keras")
    (run / "metrics.json").write_text(json.dumps({"classes": tiny_data.classes, "image_size": 32, "arch": "tiny_cnn"}))
    model, _ = load_run(run)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, atol=1e-5)


def test_portable_model_swaps_every_kertransfer_layer(tmp_path):
    backbone = tiny_bgr_cnn()
    inputs = keras.Input((None, None, 3), name="image")
    pooled = kt_layers.AdaptiveConcatPooling2D(name="concat_pool")(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(pooled), name="clf")
    model.compile("sgd", "sparse_categorical_crossentropy")
    _as_if_trained(model)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (3, 24, 20, 3)).astype("float32")
    portable = portable_model(model)
    layers = portable.layers + portable.get_layer("tiny_bgr_cnn").layers
    assert {type(layer).__module__.split(".")[0] for layer in layers} == {"keras"}
    assert not portable.compiled
    np.testing.assert_allclose(portable.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6)
    # The original model keeps its layers (the fast forms under JAX).
    assert type(backbone.get_layer("late_conv")) is kt_layers.Conv2D
    # A kertransfer layer in a nested Sequential model cannot be rewired: said so.
    sequential = keras.Sequential([keras.Input((8, 8, 4)), kt_layers.AdaptiveConcatPooling2D()])
    inputs = keras.Input((8, 8, 4))
    with pytest.raises(ValueError, match=r"AdaptiveConcatPooling2D.*functional model"):
        portable_model(keras.Model(inputs, sequential(inputs)))


@pytest.mark.one_backend
def test_read_model_info_of_other_files(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "plain.keras")
    assert read_model_info(tmp_path / "plain.keras") == {}
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.keras is not a readable \.keras archive"):
        read_model_info(tmp_path / "bad.keras")


@pytest.mark.slow
def test_efficientnet_lite0_learner_predicts_the_same_in_plain_keras(tiny_data, tmp_path):
    learn = ConvLearner.pretrained("efficientnet_lite0", tiny_data, precompute=False, weights=None)
    _as_if_trained(learn.model)
    path = learn.save(tmp_path / "lite0")
    probs, errors = _predict_in_plain_keras({"lite0": path}, _pixels(tiny_data), tmp_path)
    assert errors == {}
    np.testing.assert_allclose(probs["lite0"], learn.predict()[0], atol=1e-5)
