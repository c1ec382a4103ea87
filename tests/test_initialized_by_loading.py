"""Builds whose weights are all loaded skip the initializers
(`kertransfer.backbones.weights.initialized_by_loading`).

The reference is the same model built outside the block: every variable
the block does not load must hold exactly what its initializer gives, and
the layers keep their configured initializers. Runs in every backend pass:
each backend has its own `keras.Variable`.
"""

import threading

import keras
import numpy as np
import pytest

from kertransfer.backbones import resnet
from kertransfer.backbones.weights import initialized_by_loading
from kertransfer.no_tensorflow import set_seed
from kertransfer.portable import portable_model
from kertransfer.run_folder import load_model_file


@keras.saving.register_keras_serializable(package="kertransfer_tests")
class CountingInitializer(keras.initializers.Initializer):
    """`RandomNormal(seed=seed)` that counts its calls (all instances)."""

    calls = 0

    def __init__(self, seed=1):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        CountingInitializer.calls += 1
        return keras.initializers.RandomNormal(seed=self.seed)(shape, dtype=dtype)

    def get_config(self):
        return {"seed": self.seed}


@pytest.fixture
def counting():
    CountingInitializer.calls = 0
    return CountingInitializer


def _array(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _two_dense(initializer):
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, kernel_initializer=initializer, name="loaded")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    # Keras's unseeded initializers: their seeds come from Python's `random`.
    x = keras.layers.Dense(3, bias_initializer="random_normal", name="not_loaded")(x)
    return keras.Model(inputs, x)


def test_pretrained_build_runs_no_initializer_and_keeps_the_configured_ones(counting, tmp_path, monkeypatch):
    monkeypatch.setattr(resnet, "_CONV_INIT", counting(seed=3))
    random = resnet.resnet18(weights=None, input_shape=(32, 32, 3))
    assert counting.calls == 20  # one per convolution: the reference build draws
    path = tmp_path / "resnet18.weights.h5"
    random.save_weights(path)
    counting.calls = 0
    loaded = resnet.resnet18(weights=path, input_shape=(32, 32, 3))
    assert counting.calls == 0  # every variable came from the file
    for expected, actual in zip(random.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(_array(actual), _array(expected), err_msg=actual.path)
    conv = loaded.get_layer("conv1")
    assert conv.kernel_initializer is resnet._CONV_INIT
    config = keras.layers.Conv2D.from_config(conv.get_config()).get_config()
    assert config["kernel_initializer"] == keras.initializers.serialize(counting(seed=3))


def test_what_the_block_does_not_load_gets_its_initializer(counting):
    set_seed(0)
    reference = _two_dense(counting(seed=7))
    set_seed(0)
    with initialized_by_loading():
        model = _two_dense(counting(seed=7))
        model.get_layer("loaded").set_weights([np.full((5, 4), 0.5), np.full(4, -1.0)])
    assert counting.calls == 1  # the reference's kernel only: the loaded one never ran
    np.testing.assert_array_equal(_array(model.get_layer("loaded").kernel), np.full((5, 4), 0.5))
    np.testing.assert_array_equal(_array(model.get_layer("loaded").bias), np.full(4, -1.0))
    # Exactly the reference's values: BatchNorm's ones and zeros, the random
    # kernel and bias, drawn at the end of the block from the seeds drawn
    # when the layer was made.
    for name in ("bn", "not_loaded"):
        for expected, actual in zip(reference.get_layer(name).weights, model.get_layer(name).weights, strict=True):
            np.testing.assert_array_equal(_array(actual), _array(expected), err_msg=actual.path)
    kernel = _array(model.get_layer("not_loaded").kernel)
    assert np.all(kernel != 0) and np.abs(kernel).max() <= np.sqrt(6 / (4 + 3))  # Glorot uniform


def test_the_block_leaves_keras_as_it_was(counting):
    before = dict(vars(keras.Variable))
    with pytest.raises(RuntimeError, match="stop"), initialized_by_loading():
        keras.layers.Dense(2).build((None, 3))
        raise RuntimeError("stop")
    assert dict(vars(keras.Variable)) == before
    with initialized_by_loading(enabled=False):
        layer = keras.layers.Dense(2, kernel_initializer=counting())
        layer.build((None, 3))
    assert counting.calls == 1
    assert np.isfinite(_array(layer.kernel)).all()


def test_other_threads_and_inner_blocks_initialize_as_usual(counting):
    built = {}

    def build():
        layer = keras.layers.Dense(2, kernel_initializer=counting(seed=2))
        layer.build((None, 3))
        built["kernel"] = _array(layer.kernel)

    with initialized_by_loading():
        thread = threading.Thread(target=build)
        thread.start()
        thread.join()
        with initialized_by_loading():  # belongs to the outer block
            inner = keras.layers.Dense(2, kernel_initializer=counting(seed=2))
            inner.build((None, 3))
        assert np.isnan(_array(inner.kernel)).all()
    assert counting.calls == 2  # the thread's build, then the unloaded inner kernel at the end
    np.testing.assert_array_equal(_array(inner.kernel), built["kernel"])


def test_portable_model_copy_runs_no_initializer(counting):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4, kernel_initializer=counting(seed=5), name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    counting.calls = 0
    copy = portable_model(model)
    assert counting.calls == 0
    assert isinstance(copy.get_layer("hidden").kernel_initializer, CountingInitializer)
    for expected, actual in zip(model.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(_array(actual), _array(expected))


def test_loading_a_saved_model_runs_no_initializer(counting, tmp_path):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4, kernel_initializer=counting(seed=5), name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    model.get_layer("bn").moving_variance.assign(np.full(4, 2.5))  # loaded, not BatchNorm's ones
    path = tmp_path / "model.keras"
    model.save(path)
    counting.calls = 0
    loaded = load_model_file(path)
    assert counting.calls == 0
    for expected, actual in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(_array(actual), _array(expected), err_msg=actual.path)
