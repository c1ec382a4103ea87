"""Grad-CAM: where in an image the evidence for a class lies.

Source: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
via Gradient-based Localization", ICCV 2017 (arXiv:1610.02391). For a
feature map `A` of shape `(h, w, k)` (the last convolutional activations)
and the class score `y_c` (the logit, before softmax or sigmoid):

    alpha_k = mean over (i, j) of d y_c / d A[i, j, k]
    heatmap = ReLU(sum_k alpha_k A[:, :, k])        # (h, w)

The arithmetic is `keras.ops`, so it runs on every backend; Keras has no
backend-neutral gradient, so `_gradient` asks the backend for
`d y_c / d A` (TensorFlow `GradientTape`, `jax.grad`, `torch.autograd`).
Nothing else here is backend-specific.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["grad_cam", "last_feature_layer"]


def last_feature_layer(model):
    """The last top-level layer of `model` with a 4-D output `(n, h, w, k)`.

    For a kertransfer learner's model that is the backbone (its final
    feature map, before the head's pooling).

    Raises:
        ValueError: if no layer has a 4-D output.
    """
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            return layer
    raise ValueError(
        f"grad_cam needs a convolutional feature map, but no layer of the model "
        f"{model.name!r} has a 4-D output (batch, height, width, channels). Pass "
        "layer=<name of a convolutional layer of the top-level model>."
    )


def _gradient(score_fn, features):
    """`d score_fn(features) / d features` with the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        features = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(features)
            score = score_fn(features)
        return tape.gradient(score, features)
    if backend == "jax":
        import jax

        return jax.grad(score_fn)(features)
    if backend == "torch":
        import torch

        features = features.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(score_fn(features), features)
        return grad
    raise ValueError(f"grad_cam supports the tensorflow, jax and torch backends. Received backend {backend!r}.")


class _Logits:
    """Within the block, the model's last layer leaves out its softmax/sigmoid.

    Grad-CAM differentiates the class score before the output activation
    (the paper's `y_c`); a saturated softmax would give vanishing gradients.
    """

    def __init__(self, model):
        last = model.layers[-1]
        activation = getattr(last, "activation", None)
        names = ("softmax", "sigmoid")
        self.layer = last if getattr(activation, "__name__", None) in names else None

    def __enter__(self):
        if self.layer is not None:
            self.saved, self.layer.activation = self.layer.activation, keras.activations.linear
        return self

    def __exit__(self, *exc):
        if self.layer is not None:
            self.layer.activation = self.saved


def _split(model, layer):
    """`(inputs -> layer's output, layer's output -> outputs)` sub-models.

    The split point is the layer's output in `model`'s graph: for a nested
    model (a backbone), `layer.output` is its own graph's output, so the
    tensor is taken from the node where `model` calls it.
    """
    for node in reversed(layer._inbound_nodes):  # Keras keeps no public handle on it.
        for tensor in node.output_tensors[:1]:
            try:
                return keras.Model(model.inputs[0], tensor), keras.Model(tensor, model.outputs[0])
            except ValueError:  # a call of the layer outside this model
                continue
    raise ValueError(
        f"grad_cam: the output of layer {layer.name!r} does not lead to the outputs of the model "
        f"{model.name!r}. Pass layer=<a layer of the top-level model on the path to its output>."
    )


def grad_cam(model, images, class_indices=None, layer=None):
    """Grad-CAM heatmaps of `images` for one class each.

    Args:
        model: a functional `keras.Model` (e.g. `learn.model`, or one loaded
            from a run folder's `model.keras`) taking what `images` holds.
        images: float array `(n, height, width, 3)`, the model's input
            (raw pixels in `[0, 255]` for a kertransfer model, e.g. from
            `kertransfer.images.frame_images`).
        class_indices: the class of each image to explain, int `(n,)` or one
            int for all; None: the class the model predicts.
        layer: the feature layer (a name or a layer of the top-level model);
            None: `last_feature_layer(model)`.

    Returns:
        float32 numpy array `(n, h, w)`, `ReLU(sum_k alpha_k A_k)` on the
        feature map's grid (not normalised; 0 where no evidence).

    Raises:
        ValueError: if the model has no 4-D feature layer, `layer` is not
            one of its layers, or a class index is out of range.

    Example:

    ```python
    x = frame_images(paths, Framing(224))
    heatmaps = grad_cam(learn.model, x)  # (n, 7, 7) for a 224-px ResNet
    ```
    """
    if layer is None:
        layer = last_feature_layer(model)
    elif isinstance(layer, str):
        layer = model.get_layer(layer)
    elif layer not in model.layers:
        raise ValueError(f"grad_cam: layer={layer.name!r} is not a layer of the top-level model {model.name!r}.")
    images = ops.convert_to_tensor(np.asarray(images, dtype="float32"))
    features_model, head_model = _split(model, layer)
    features = features_model(images, training=False)
    with _Logits(model):
        logits = head_model(features, training=False)
        num_classes = logits.shape[-1]
        if class_indices is None:
            class_indices = ops.convert_to_numpy(ops.argmax(logits, axis=-1))
        class_indices = np.broadcast_to(np.asarray(class_indices, dtype="int64"), (images.shape[0],))
        if class_indices.size and (class_indices.min() < 0 or class_indices.max() >= num_classes):
            raise ValueError(
                f"grad_cam: class_indices must be in [0, {num_classes}). Received {class_indices.tolist()}."
            )
        pick = ops.one_hot(ops.convert_to_tensor(class_indices), num_classes, dtype=logits.dtype)

        def score(feature_map):
            # Images are independent (inference mode): one sum gives each
            # image's own gradient.
            return ops.sum(head_model(feature_map, training=False) * pick)

        grads = _gradient(score, features)
    alpha = ops.mean(grads, axis=(1, 2))  # (n, k)
    heatmaps = ops.relu(ops.einsum("nhwk,nk->nhw", features, alpha))
    return np.asarray(ops.convert_to_numpy(heatmaps), dtype="float32")
