"""Your own backbone: `ConvLearner.from_model` and `register_keras_backbone`.

A `keras.applications.MobileNetV2` (alpha 0.35, random init, 64 px) and a
five-layer functional CNN on a small synthetic folder: 16 training images,
so that one epoch of batch 16 is one SGD step.
"""

import functools

import keras
import numpy as np
import pytest

from kertransfer.backbones import get_backbone
from kertransfer.backbones import register_keras_backbone
from kertransfer.backbones import registry
from kertransfer.backbones.keras_apps_presets import MINUS_ONE_TO_ONE
from kertransfer.data import ImageClassifierData
from kertransfer.layers import ImagePreprocessing
from kertransfer.learner import ConvLearner
from kertransfer.no_tensorflow import set_seed
from kertransfer.transforms import tfms_from_model

from conftest import write_synthetic_images


def _mobilenet(seed=0, **kwargs):
    set_seed(seed)
    kwargs = {"include_top": False, "input_shape": (64, 64, 3), **kwargs}
    return keras.applications.MobileNetV2(weights=None, alpha=0.35, **kwargs)


def _small_cnn(input_shape=(None, None, 3), top=False, seed=0):
    """Five layers with weights (c1 b1 c2 b2 c3) and a residual `add`; with
    `top`, pooling and a classifier."""
    set_seed(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="b1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.BatchNormalization(name="b2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.Add(name="add")([x, keras.layers.Conv2D(8, 3, padding="same", name="c3")(x)])
    if top:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        x = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name="small_cnn")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return write_synthetic_images(
        tmp_path_factory.mktemp("from_model"),
        {"train/ants": 8, "train/bees": 8, "valid/ants": 4, "valid/bees": 4},
    )


@pytest.fixture(scope="module")
def mobilenet():
    """One MobileNetV2 body for the tests that only read it (under JAX the
    first build compiles an initializer per weight shape: 20-40 s)."""
    return _mobilenet()


def _data(folder, image_size):
    return ImageClassifierData.from_paths(folder, batch_size=16, tfms=tfms_from_model(None, image_size))


def _names(groups):
    return [[layer.name for layer in group] for group in groups]


def _weighted_halves(model):
    """The reference split: `model.layers` with weights, first half (rounded up) and the rest."""
    weighted = [layer.name for layer in model.layers if layer.weights]
    half = (len(weighted) + 1) // 2
    return [weighted[:half], weighted[half:]]


# The MobileNetV2 checks read layer lists and groups (backend-independent
# code): they run once, in the torch pass, where building it is cheapest
# (JAX compiles an initializer per weight shape: 40 s). The small CNN runs
# the same code paths on every backend.
@pytest.mark.one_backend
def test_mobilenet_body_groups_are_halves_by_layer_order_and_preprocessing_is_keras(small_folder, mobilenet):
    base = mobilenet
    learn = ConvLearner.from_model(base, _data(small_folder, 64), preprocessing="tf")
    assert learn.group_names == ["group0", "group1", "head"]
    assert _names(learn.layer_groups[:2]) == _weighted_halves(base)
    assert _names(learn.layer_groups[2:]) == [["head_bn0", "head_fc0", "head_bn1", "head_out"]]
    # The body is `preprocess`, then base's own layers (the same weights), in order.
    assert learn.backbone.layers[1].name == "preprocess"
    assert all(a is b for a, b in zip(learn.backbone.layers[2:], base.layers[1:], strict=True))
    # The body starts frozen; freeze_to(1) freezes exactly group 0's variables.
    assert {v.path for v in learn.model.trainable_variables} == {
        v.path for layer in learn.layer_groups[2] for v in layer.trainable_weights}
    learn.unfreeze()
    trainable = {v.path for v in learn.model.trainable_variables}
    group0 = {v.path for layer in learn.layer_groups[0] for v in layer.weights} & trainable
    assert group0 and len(group0) < len(trainable)
    learn.freeze_to(1)
    assert {v.path for v in learn.model.trainable_variables} == trainable - group0


@pytest.mark.parametrize("mode, preprocess_input", [
    ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ("caffe", keras.applications.resnet50.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
    ("raw", lambda x: x),
])
def test_the_body_is_the_model_on_keras_preprocess_input(small_folder, mode, preprocess_input):
    # Raw pixels in: the body (its graph replayed after `preprocess`,
    # residual branch included) equals the model on Keras's own
    # preprocess_input of each mode.
    base = _small_cnn()
    body = ConvLearner.from_model(base, _data(small_folder, 32), preprocessing=mode).backbone
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(body(x, training=False)),
        keras.ops.convert_to_numpy(base(preprocess_input(x.copy()), training=False)), rtol=1e-4, atol=1e-4,
    )


@pytest.mark.one_backend
def test_a_whole_classifier_is_cut_at_its_pooling_layer(small_folder, mobilenet):
    data = _data(small_folder, 64)
    whole = ConvLearner.from_model(_mobilenet(include_top=True, classes=10), data, preprocessing="tf")
    body = mobilenet  # what keras.applications calls the body: include_top=False
    assert [layer.name for layer in whole.backbone.layers[2:]] == [layer.name for layer in body.layers[1:]]
    assert whole.backbone.output_shape == body.output_shape == (None, 2, 2, 1280)
    small = ConvLearner.from_model(_small_cnn(top=True), data, preprocessing="raw")
    assert small.backbone.layers[-1].name == "add"


def test_explicit_layer_groups_as_names_or_regexes(small_folder):
    data = _data(small_folder, 32)
    by_names = ConvLearner.from_model(
        _small_cnn(), data, [["c1", "b1"], ["c2", "b2", "c3"]], preprocessing="tf")
    assert _names(by_names.layer_groups[:2]) == [["c1", "b1"], ["c2", "b2", "c3"]]
    by_regex = ConvLearner.from_model(
        _small_cnn(), data, {"early": r"[cb]1", "late": r"[cb][23]"}, preprocessing="tf")
    assert by_regex.group_names == ["early", "late", "head"]
    assert _names(by_regex.layer_groups[:2]) == [["c1", "b1"], ["c2", "b2", "c3"]]
    # Five layers with weights, split in two: the first half takes the odd one.
    auto = ConvLearner.from_model(_small_cnn(), data, preprocessing="tf")
    assert _names(auto.layer_groups[:2]) == _weighted_halves(_small_cnn()) == [["c1", "b1", "c2"], ["b2", "c3"]]


@pytest.mark.parametrize("make", [
    pytest.param(_small_cnn, id="small_cnn"),
    pytest.param(functools.partial(_mobilenet, input_shape=(None, None, 3)), id="mobilenet_v2",
                 marks=pytest.mark.one_backend),  # torch: 3 s; TF 30-47 s, JAX more (compiling)
])
def test_one_fit_steps_each_group_at_its_own_learning_rate(small_folder, make):
    # Plain SGD, no dropout, one batch: the fit is one step, w -= lr * grad.
    # Two fits from the same weights and seed see the same gradients, so
    # each group's step scales with its own LR: (1e-3, 1e-2, 1e-1) against
    # 1e-2 for all is 0.1x, 1x and 10x per group.
    def sgd(learning_rate):
        return keras.optimizers.SGD(learning_rate)

    learn = ConvLearner.from_model(
        make(), _data(small_folder, 32), preprocessing="tf", precompute=False, dropout=0.0, opt_fn=sgd)
    learn.unfreeze()
    start = learn.model.get_weights()
    groups = [[v for layer in group for v in layer.trainable_weights] for group in learn.layer_groups]

    def steps(lrs):
        learn.model.set_weights(start)
        before = [[keras.ops.convert_to_numpy(v) for v in group] for group in groups]
        set_seed(1)
        learn.fit(np.array(lrs), 1, verbose=0)
        assert learn.sched.steps_per_epoch == 1
        return [
            np.concatenate([(keras.ops.convert_to_numpy(v) - b).ravel() for v, b in zip(group, old)])
            for group, old in zip(groups, before)
        ]

    same = steps([1e-2, 1e-2, 1e-2])
    own = steps([1e-3, 1e-2, 1e-1])
    for i, (ratio, base, step) in enumerate(zip([0.1, 1.0, 10.0], same, own)):
        assert np.abs(base).max() > 0, f"group {i} did not move"
        np.testing.assert_allclose(step, ratio * base, rtol=2e-2, atol=ratio * 2e-6 + 1e-7, err_msg=f"group {i}")


def _calibrated(model, x):
    """`model` with each BatchNorm's moving statistics set to its batch
    statistics on `x` (momentum 0, one training pass): at random init they
    are 0 and 1, and MobileNetV2's activations fade to ~1e-10 by the last
    block, which would leave every prediction equal."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)
    return model


def test_save_and_load_round_trip_predictions(small_folder, tmp_path):
    data = _data(small_folder, 64)
    x = data.valid_batches()[0][0]
    pixels = keras.applications.mobilenet_v2.preprocess_input(x.copy())  # "tf": x / 127.5 - 1
    learn = ConvLearner.from_model(_calibrated(_small_cnn(seed=0), pixels), data, preprocessing="tf")
    path = learn.save(tmp_path / "mine")
    other = ConvLearner.from_model(_calibrated(_small_cnn(seed=1), pixels), data, preprocessing="tf")

    def probs(model):
        return keras.ops.convert_to_numpy(model(x, training=False))

    expected = probs(learn.model)
    assert np.abs(expected[:, 0] - expected[0, 0]).max() > 1e-3  # the images' predictions differ
    assert np.abs(probs(other.model) - expected).max() > 1e-3  # other weights at first
    other.load(path)
    np.testing.assert_allclose(probs(other.model), expected, rtol=1e-5, atol=1e-6)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3)

    def call(self, x):
        return self.conv(x)


def test_bad_arguments_fail_first_naming_the_argument_and_the_fix(small_folder):
    data = _data(small_folder, 32)
    with pytest.raises(TypeError, match=r"keras_model must be a keras.Model.*Received keras_model of type str"):
        ConvLearner.from_model("mobilenet_v2", data, preprocessing="tf")
    with pytest.raises(ValueError, match=r"keras_model .* has no symbolic inputs.*functional"):
        ConvLearner.from_model(_Subclassed(), data, preprocessing="tf")
    vectors = keras.Model(inputs := keras.Input((10,)), keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match=r"needs one 4-D image input .* Received inputs of shapes \[\(None, 10\)\]"):
        ConvLearner.from_model(vectors, data, preprocessing="tf")
    with pytest.raises(ValueError, match=r"takes 64x64 images, but .*data.image_size=32.*data.resize\(64\)"):
        ConvLearner.from_model(_small_cnn((64, 64, 3)), data, preprocessing="tf")
    fixed = ConvLearner.from_model(_small_cnn((32, 32, 3)), data, preprocessing="tf")
    with pytest.raises(ValueError, match=r"set_data: .* takes 32x32 images, but data.image_size=64"):
        fixed.set_data(_data(small_folder, 64))
    one_conv = keras.Model(inputs := keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3, name="only")(inputs))
    with pytest.raises(ValueError, match=r"layer_groups=None: .* 1 layer\(s\) with weights, fewer than the 2"):
        ConvLearner.from_model(one_conv, data, preprocessing="tf")
    with pytest.raises(ValueError, match=r"preprocessing must say how .*'caffe', 'tf', 'torch', 'raw'.*Received preprocessing=None"):
        ConvLearner.from_model(_small_cnn(), data)
    with pytest.raises(ValueError, match=r"Received preprocessing='tensorflow'"):
        ConvLearner.from_model(_small_cnn(), data, preprocessing="tensorflow")
    with pytest.raises(ValueError, match=r"layer_groups=.*'c3' of model 'small_cnn' is in no layer group"):
        ConvLearner.from_model(_small_cnn(), data, [["c1", "b1"], ["c2", "b2"]], preprocessing="tf")
    with pytest.raises(ValueError, match=r"layer_groups: group\(s\) \['group1'\] match no layer"):
        ConvLearner.from_model(_small_cnn(), data, [["c1", "b1", "c2", "b2", "c3"], ["c4"]], preprocessing="tf")
    with pytest.raises(TypeError, match=r"layer_groups=.*exact layer names"):
        ConvLearner.from_model(_small_cnn(), data, [["c1", 2]], preprocessing="tf")


def test_a_model_with_its_own_preprocess_layer_keeps_it(small_folder):
    # e.g. a kertransfer backbone passed back in: ours is named apart.
    inputs = keras.Input((None, None, 3))
    x = ImagePreprocessing((0.0,) * 3, (255.0,) * 3, name="preprocess")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(x))
    body = ConvLearner.from_model(model, _data(small_folder, 32), [["conv"]], preprocessing="raw").backbone
    assert [layer.name for layer in body.layers] == ["image", "preprocess_1", "preprocess", "conv"]


@pytest.mark.one_backend
def test_registered_keras_backbone_builds_by_name(small_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_IMPORTED", set())
    constructor = functools.partial(keras.applications.MobileNetV2, alpha=0.35)
    spec = register_keras_backbone("tiny_mobilenet_v2", constructor, preprocessing="tf", image_size=64)
    assert get_backbone("tiny_mobilenet_v2") is spec and spec.preprocessing == MINUS_ONE_TO_ONE
    set_seed(0)
    learn = ConvLearner.pretrained("tiny_mobilenet_v2", _data(small_folder, 64), weights=None)
    assert _names(learn.layer_groups[:2]) == _weighted_halves(learn.backbone)
    assert learn.backbone.layers[1].name == "preprocess"
    # The kertransfer command finds a backbone registered by the code named
    # in $KERTRANSFER_BACKBONES (a .py file here).
    plugin = tmp_path / "my_backbones.py"
    plugin.write_text(
        "import keras\n"
        "from kertransfer import register_keras_backbone\n"
        "def my_net(include_top, weights, input_shape):\n"
        "    inputs = keras.Input(input_shape)\n"
        "    x = keras.layers.Conv2D(4, 3, name='a')(inputs)\n"
        "    return keras.Model(inputs, keras.layers.Conv2D(4, 3, name='b')(x))\n"
        "register_keras_backbone('my_net', my_net, preprocessing='raw', image_size=32)\n"
    )
    with pytest.raises(ValueError, match="Unknown backbone arch='my_net'.*KERTRANSFER_BACKBONES"):
        get_backbone("my_net")
    monkeypatch.setenv("KERTRANSFER_BACKBONES", str(plugin))
    assert get_backbone("my_net").default_image_size == 32
    from kertransfer.config import TrainConfig

    assert TrainConfig(arch="my_net").arch == "my_net"
    monkeypatch.setenv("KERTRANSFER_BACKBONES", str(tmp_path / "missing.py"))
    with pytest.raises(ImportError, match=r"KERTRANSFER_BACKBONES=.*could not import .*missing.py"):
        get_backbone("their_net")
