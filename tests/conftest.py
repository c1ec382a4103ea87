import os
import pathlib

import keras
import numpy as np
import pytest

from kertransfer.backbones import BackboneSpec
from kertransfer.backbones import register_backbone
from kertransfer.layers import ImagePreprocessing

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name):
    """Path of a sample dataset in ../shared/data; a missing one is an error."""
    path = SHARED / name
    if not (path / "train").is_dir():
        raise FileNotFoundError(
            f"Test data {path} is missing: the tests need ../shared/data beside "
            "the checkout (CI provides it)."
        )
    return path


@pytest.fixture(scope="session")
def hymenoptera():
    return shared_data("hymenoptera")


@pytest.fixture(scope="session")
def dogscats():
    return shared_data("dogscats")


@pytest.fixture(autouse=True)
def _keras_home(tmp_path_factory, monkeypatch):
    # Keep converted weights and precompute caches out of ~/.keras, but share
    # them across tests of one session unless KERAS_HOME is set (Makefile).
    if "KERAS_HOME" not in os.environ:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras_home"))


def tiny_cnn(weights=None, input_shape=(None, None, 3), include_top=False):
    """A 2-group CNN for fast learner tests (random init, seeded)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    x = ImagePreprocessing((127.5,) * 3, (127.5,) * 3, name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="late_conv")(x)
    x = keras.layers.BatchNormalization(name="late_bn")(x)
    x = keras.layers.ReLU(name="late_relu")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


register_backbone(
    BackboneSpec(
        name="tiny_cnn",
        builder=tiny_cnn,
        layer_groups=(r"(preprocess|stem_)", r"late_"),
        default_image_size=32,
    )
)


@pytest.fixture(scope="session")
def tiny_data(hymenoptera):
    from kertransfer.data import ImageClassifierData
    from kertransfer.transforms import tfms_from_model

    tfms = tfms_from_model("tiny_cnn", 32)
    return ImageClassifierData.from_paths(hymenoptera, batch_size=16, tfms=tfms)


def tensorboard_scalars(log_dir):
    """`{tag: [(step, value)]}` read back from the event files of `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
        for tag in events.Tags()["tensors"]
    }
