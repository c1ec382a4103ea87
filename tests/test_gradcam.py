"""Grad-CAM against a hand computation, on every backend."""

import keras
import numpy as np
import pytest

from kertransfer.gradcam import grad_cam
from kertransfer.gradcam import last_feature_layer
from kertransfer.no_tensorflow import set_seed


def _tiny_model(nested=False):
    """conv(relu) -> global average pool -> dense(tanh) -> dense(softmax).

    With `nested`, the conv is a backbone sub-model, as in a learner's model.
    """
    set_seed(1)
    inputs = keras.Input((7, 6, 3))
    conv = keras.layers.Conv2D(4, 3, activation="relu", name="last_conv")
    if nested:
        image = keras.Input((None, None, 3))
        conv = keras.Model(image, conv(image), name="backbone")
    x = conv(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(5, activation="tanh", name="hidden")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs)


def _probs(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def _hand_grad_cam(model, images, classes):
    """Grad-CAM of `_tiny_model` in float64 numpy, from its weights alone.

    A = relu(conv(x)) (valid 3x3), m = mean_ij A, h = tanh(m W1 + b1),
    z = h W2 + b2 (the logits). dz_c/dA[i, j, k] = (W1 (W2[:, c] (1 - h^2)))_k / (H W)
    at every (i, j), so alpha_k is that value and the heatmap is
    relu(sum_k alpha_k A[:, :, k]).
    """
    conv = model.get_layer("backbone") if "backbone" in [layer.name for layer in model.layers] else model.get_layer("last_conv")
    kernel, bias = (np.asarray(w, "float64") for w in conv.get_weights())
    w1, b1 = (np.asarray(w, "float64") for w in model.get_layer("hidden").get_weights())
    w2, _ = (np.asarray(w, "float64") for w in model.get_layer("out").get_weights())
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(images, "float64"), (3, 3), axis=(1, 2))
    # windows: (n, H, W, channels, 3, 3); kernel: (3, 3, channels, k).
    features = np.maximum(np.einsum("nhwcab,abck->nhwk", windows, kernel) + bias, 0.0)
    n, height, width, _ = features.shape
    hidden = np.tanh(features.mean(axis=(1, 2)) @ w1 + b1)
    heatmaps = []
    for i in range(n):
        alpha = w1 @ (w2[:, classes[i]] * (1 - hidden[i] ** 2)) / (height * width)
        heatmaps.append(np.maximum(features[i] @ alpha, 0.0))
    return np.stack(heatmaps)


@pytest.mark.parametrize("nested", [False, True])
def test_grad_cam_equals_the_hand_computation(nested):
    model = _tiny_model(nested)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, 7, 6, 3)).astype("float32")
    feature_layer = "backbone" if nested else "last_conv"
    assert last_feature_layer(model).name == feature_layer
    predicted = _probs(model, images).argmax(1)
    expected = _hand_grad_cam(model, images, predicted)
    assert expected.shape == (4, 5, 4) and expected.max() > 0  # a real map, not all zeros
    heatmaps = grad_cam(model, images)  # the predicted class
    np.testing.assert_allclose(heatmaps, expected, rtol=1e-4, atol=1e-6)
    # An explicit class per image, and the layer by name.
    classes = np.array([0, 1, 2, 1])
    expected = _hand_grad_cam(model, images, classes)
    np.testing.assert_allclose(grad_cam(model, images, classes, layer=feature_layer), expected, rtol=1e-4, atol=1e-6)
    # The model's softmax is back in place afterwards.
    np.testing.assert_allclose(_probs(model, images).sum(1), 1.0, rtol=1e-5)


def test_grad_cam_errors_name_the_fix():
    model = _tiny_model()
    images = np.zeros((1, 7, 6, 3), "float32")
    with pytest.raises(ValueError, match=r"class_indices must be in \[0, 3\). Received \[3\]"):
        grad_cam(model, images, 3)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no layer of the model .* has a 4-D output"):
        grad_cam(dense, np.zeros((1, 4)))
