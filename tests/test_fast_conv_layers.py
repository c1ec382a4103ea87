"""kertransfer.layers.DepthwiseConv2D and Conv2D against Keras's own layers.

Keras's `DepthwiseConv2D` / `Conv2D` (on the same weights) are the
independent reference: outputs and gradients (inputs and kernel) must agree
to float32 rounding. Under TensorFlow and torch both layers run Keras's
`call`, so these tests guard the fallback; under JAX they test
`kertransfer.jax_convolution`.
"""

import keras
import numpy as np
import pytest

from kertransfer import layers as fast_layers


def _value_and_grads(layer, x, upstream):
    """`(outputs, d inputs, d kernel)` of `sum(layer(x) * upstream)`."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        others = [v.value for v in layer.trainable_variables[1:]]  # the bias

        def loss(inputs, kernel_value):
            outputs = layer.stateless_call([kernel_value] + others, [], inputs)[0]
            return (outputs * upstream).sum(), outputs

        # One compiled program: op by op, JAX compiles every operation apart.
        (_, outputs), (dx, dk) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            x, layer.kernel.value
        )
    elif backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x)
            loss = tf.reduce_sum(outputs * upstream)
        dx, dk = tape.gradient(loss, [x, layer.kernel.value])
    else:
        import torch

        x = torch.tensor(x, requires_grad=True)
        outputs = layer(x)
        (outputs * torch.tensor(upstream)).sum().backward()
        dx, dk = x.grad, layer.kernel.value.grad
    return [keras.ops.convert_to_numpy(a) for a in (outputs, dx, dk)]


def _compare(ours, reference, input_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=input_shape).astype("float32")
    ours.build(input_shape)
    reference.build(input_shape)
    ours.set_weights(reference.get_weights())
    upstream = rng.normal(size=reference.compute_output_shape(input_shape)).astype(
        "float32"
    )
    got = _value_and_grads(ours, x, upstream)
    expected = _value_and_grads(reference, x, upstream)
    for name, a, b in zip(("outputs", "d_inputs", "d_kernel"), got, expected):
        assert a.shape == b.shape, name
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize(
    "kernel, strides, padding, size",
    [
        (3, 1, "same", 9),
        (3, 2, "same", 9),
        (3, 2, "same", 10),
        (5, 2, "same", 11),
        (5, 1, "same", 7),
        (3, 1, "valid", 8),
        (5, 2, "valid", 12),
        ((3, 5), 2, "same", 10),
    ],
)
def test_shifted_depthwise_matches_keras(kernel, strides, padding, size):
    args = dict(kernel_size=kernel, strides=strides, padding=padding)
    _compare(
        fast_layers.DepthwiseConv2D(**args),
        keras.layers.DepthwiseConv2D(**args),
        (2, size, size + 1, 6),
    )


def test_shifted_depthwise_with_bias_and_multiplier_matches_keras():
    # depth_multiplier=2 takes Keras's path; bias and activation ours.
    for extra in (dict(use_bias=True, activation="relu"), dict(depth_multiplier=2)):
        args = dict(kernel_size=3, strides=2, padding="same", **extra)
        _compare(
            fast_layers.DepthwiseConv2D(**args),
            keras.layers.DepthwiseConv2D(bias_initializer="random_normal", **args)
            if extra.get("use_bias")
            else keras.layers.DepthwiseConv2D(**args),
            (2, 9, 9, 4),
        )


@pytest.mark.parametrize(
    "kernel, strides, padding",
    [(1, 1, "same"), (1, 2, "same"), (1, 2, "valid"), (3, 2, "same")],
)
def test_matmul_conv_matches_keras(kernel, strides, padding):
    args = dict(filters=5, kernel_size=kernel, strides=strides, padding=padding)
    _compare(fast_layers.Conv2D(**args), keras.layers.Conv2D(**args), (2, 9, 8, 3))


def test_saved_model_loads_back(tmp_path):
    inputs = keras.Input((9, 9, 4))
    x = fast_layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(inputs)
    x = fast_layers.Conv2D(6, 1, name="pw")(x)
    model = keras.Model(inputs, x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("dw")) is fast_layers.DepthwiseConv2D
    assert type(loaded.get_layer("pw")) is fast_layers.Conv2D
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_weights_file_of_keras_layers_loads(tmp_path):
    # .weights.h5 paths hold snake-cased class names: ours keep Keras's.
    def model(depthwise, conv):
        inputs = keras.Input((9, 9, 4))
        x = depthwise(3, padding="same")(inputs)
        return keras.Model(inputs, conv(6, 1)(x))

    keras_model = model(keras.layers.DepthwiseConv2D, keras.layers.Conv2D)
    path = str(tmp_path / "model.weights.h5")
    keras_model.save_weights(path)
    ours = model(fast_layers.DepthwiseConv2D, fast_layers.Conv2D)
    ours.load_weights(path)
    for a, b in zip(ours.get_weights(), keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
