"""ResNet and ResNeXt in Keras 3, in torchvision's layout, with exact weights.

ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
ResNeXt: Xie et al., "Aggregated Residual Transformations for Deep Neural
Networks", CVPR 2017 -- a ResNet whose 3x3 convolutions are grouped
(`cardinality` groups of `base_width`-channel paths).

The layout is torchvision's (`torchvision/models/resnet.py`), "ResNet v1.5":
the stride of a downsampling bottleneck sits on its 3x3 convolution.
PyTorch pads symmetrically (`padding=k // 2`), whereas Keras' `"same"` pads
one pixel less on the top/left at stride 2, so every convolution is an
explicit `ZeroPadding2D` followed by a `"valid"` `Conv2D`. BatchNorm epsilon
is PyTorch's 1e-5; convolutions have no bias.

Presets (architecture, weights file and hash, preprocessing, layer
groups) are data in `resnet_presets.py`; the five constructors below are
`resnet_from_preset` with a name, as timm writes them.

Keras layer names are torchvision's parameter prefixes with `.` -> `_`
(`layer2.0.downsample.0` -> `layer2_0_downsample_0`), so importing a
torchvision or timm state dict is a name mapping and layer groups are name
regexes. Padding and activation layers carry no weights and get names of
their own (`conv1_pad`, `layer1_0_relu1`, ...).
"""

import os

import keras
import numpy as np
from keras import layers

from kertransfer.backbones import weights as weights_lib
from kertransfer.backbones.registry import register_presets
from kertransfer.backbones.resnet_presets import LAYER_GROUPS  # noqa: F401
from kertransfer.backbones.resnet_presets import RESNET_PRESETS
from kertransfer.backbones.resnet_presets import TORCHVISION_MEAN
from kertransfer.backbones.resnet_presets import TORCHVISION_STD
from kertransfer.backbones.resnet_presets import TORCHVISION_URL  # noqa: F401
from kertransfer.backbones.weights import DOWNLOAD_TIMEOUT_S  # noqa: F401
from kertransfer.backbones.weights import TORCH_SUFFIXES
from kertransfer.backbones.weights import fetch_weights
from kertransfer.layers import ImagePreprocessing

# The F401 names were defined here in kertransfer 0.1 (now data in
# `resnet_presets`, and the resolver's in `weights`): they still import.

__all__ = [
    "RESNET_PRESETS",
    "build_resnet",
    "convert_torchvision_state_dict",
    "fetch_weights",
    "resnet_from_preset",
    "resnet18",
    "resnet34",
    "tv_resnet50",
    "resnext50_32x4d",
    "resnext101_32x8d",
]

BN_EPSILON = 1e-5  # PyTorch's default.
BN_MOMENTUM = 0.9  # Keras' convention for PyTorch's momentum=0.1.
STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
WEIGHTS_FORMATS = "a .pth, .safetensors or .weights.h5 file"

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for
# convolutions; nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_CONV_INIT = keras.initializers.VarianceScaling(
    2.0, mode="fan_out", distribution="untruncated_normal"
)
_DENSE_INIT = keras.initializers.VarianceScaling(
    1.0 / 3.0, mode="fan_in", distribution="uniform"
)


def _conv(x, filters, kernel_size, strides=1, groups=1, name=None):
    """PyTorch `Conv2d(padding=kernel_size // 2, bias=False)`."""
    if kernel_size // 2:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        groups=groups,
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=name,
    )(x)


def _bn(name):
    return layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name
    )


def _shortcut(x, filters, strides, name):
    """Identity, or torchvision's `downsample` (1x1 conv + BN)."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    x = _conv(x, filters, 1, strides, name=f"{name}_downsample_0")
    return _bn(f"{name}_downsample_1")(x)


def _basic_block(x, planes, strides, cardinality, base_width, name):
    shortcut = _shortcut(x, planes, strides, name)
    x = _conv(x, planes, 3, strides, name=f"{name}_conv1")
    x = _bn(f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(x, planes, 3, name=f"{name}_conv2")
    x = _bn(f"{name}_bn2")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def _bottleneck_block(x, planes, strides, cardinality, base_width, name):
    width = int(planes * (base_width / 64.0)) * cardinality
    shortcut = _shortcut(x, planes * 4, strides, name)
    x = _conv(x, width, 1, name=f"{name}_conv1")
    x = _bn(f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(x, width, 3, strides, groups=cardinality, name=f"{name}_conv2")
    x = _bn(f"{name}_bn2")(x)
    x = layers.ReLU(name=f"{name}_relu2")(x)
    x = _conv(x, planes * 4, 1, name=f"{name}_conv3")
    x = _bn(f"{name}_bn3")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


_BLOCKS = {"basic": _basic_block, "bottleneck": _bottleneck_block}


def build_resnet(
    stage_depths,
    block="bottleneck",
    cardinality=1,
    base_width=64,
    input_shape=(None, None, 3),
    include_top=False,
    classes=1000,
    classifier_activation="softmax",
    name="resnet",
    mean=TORCHVISION_MEAN,
    std=TORCHVISION_STD,
):
    """Builds a randomly initialised ResNet/ResNeXt in torchvision's layout.

    One builder for both families (as timm does): `block="basic"` gives
    ResNet-18/34, `block="bottleneck"` ResNet-50/101/152, and a bottleneck
    with `cardinality > 1` is ResNeXt (He et al. 2016; Xie et al. 2017).

    Args:
        stage_depths: blocks per stage, four ints, e.g. `(3, 4, 6, 3)`.
        block: `"basic"` (two 3x3 convs) or `"bottleneck"` (1x1, 3x3, 1x1,
            expansion 4).
        cardinality: groups of the bottleneck's 3x3 convolution (ResNeXt).
        base_width: channels per group at the first stage (64 for ResNet,
            4 for ResNeXt 32x4d, 8 for 32x8d).
        input_shape: `(height, width, 3)`; `None` sizes allowed.
        include_top: add global average pooling and the `fc` classifier.
        classes: outputs of `fc` when `include_top=True`.
        classifier_activation: activation of `fc`; `None` returns logits.
        name: name of the model.
        mean, std: per-channel input normalisation in pixel units, RGB
            (default torchvision's ImageNet statistics).

    Returns:
        A `keras.Model` taking RGB pixels in `[0, 255]`,
        `(batch, height, width, 3)`, normalised inside with `mean` and
        `std`. Output: the `(batch, h/32, w/32, C)` feature
        map of `layer4` (C = 512 basic, 2048 bottleneck), or
        `(batch, classes)` with `include_top=True`.

    Raises:
        ValueError: on an unknown `block`, a basic block with
            `cardinality != 1` or `base_width != 64`, or a bad `input_shape`.

    Example:

    >>> model = build_resnet((1, 1, 1, 1), block="basic",
    ...                      input_shape=(64, 64, 3))
    >>> model.output_shape
    (None, 2, 2, 512)
    """
    if block not in _BLOCKS:
        raise ValueError(
            f"block must be 'basic' or 'bottleneck'. Received block={block!r}."
        )
    if block == "basic" and (cardinality != 1 or base_width != 64):
        raise ValueError(
            "A basic-block ResNet supports only cardinality=1 and "
            f"base_width=64 (as torchvision). Received cardinality="
            f"{cardinality}, base_width={base_width}; use block='bottleneck' "
            "for ResNeXt."
        )
    if len(stage_depths) != 4:
        raise ValueError(
            "stage_depths needs one depth per stage, four ints. Received "
            f"stage_depths={stage_depths!r}."
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            "input_shape must be (height, width, 3), channels last. "
            f"Received input_shape={input_shape!r}."
        )
    block_fn = _BLOCKS[block]
    inputs = keras.Input(shape=input_shape, name="image")
    x = ImagePreprocessing(mean=mean, std=std, name="preprocess")(inputs)
    x = _conv(x, 64, 7, strides=2, name="conv1")
    x = _bn("bn1")(x)
    x = layers.ReLU(name="relu")(x)
    # PyTorch pads max-pooling with -inf; after a ReLU, zeros are the same.
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (depth, planes, stride) in enumerate(
        zip(stage_depths, STAGE_PLANES, STAGE_STRIDES), start=1
    ):
        for index in range(depth):
            x = block_fn(
                x,
                planes,
                stride if index == 0 else 1,
                cardinality,
                base_width,
                name=f"layer{stage}_{index}",
            )
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avgpool")(x)
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=_DENSE_INIT,
            bias_initializer=_DENSE_INIT,
            name="fc",
        )(x)
    return keras.Model(inputs, x, name=name)


def _torch_slots(layer):
    """`[(torch parameter suffix, keras variable, converter)]` of a layer."""
    if isinstance(layer, layers.Conv2D):
        return [("weight", layer.kernel, lambda w: w.transpose(2, 3, 1, 0))]
    if isinstance(layer, layers.BatchNormalization):
        return [
            ("weight", layer.gamma, None),
            ("bias", layer.beta, None),
            ("running_mean", layer.moving_mean, None),
            ("running_var", layer.moving_variance, None),
        ]
    if isinstance(layer, layers.Dense):
        return [
            ("weight", layer.kernel, lambda w: w.T),
            ("bias", layer.bias, None),
        ]
    raise ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has weights but no "
        "torchvision counterpart; only Conv2D, BatchNormalization and Dense "
        "layers can be converted."
    )


def _torch_shape(variable, convert):
    """The shape the torch tensor for `variable` must have."""
    shape = tuple(variable.shape)
    if convert is None:
        return shape
    if len(shape) == 4:  # (kh, kw, in / groups, out) -> (out, in, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1]  # dense (in, out) -> (out, in)


def _preview(keys, limit=8):
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def convert_torchvision_state_dict(model, state_dict):
    """Loads a torchvision or timm ResNet/ResNeXt state dict into `model`.

    Every layer with weights is looked up by its name with `_` -> `.`:
    conv kernels `(out, in / groups, kh, kw)` become
    `(kh, kw, in / groups, out)`; BatchNorm takes `weight`, `bias`,
    `running_mean`, `running_var`; `fc.weight` `(out, in)` becomes
    `(in, out)`. timm's ResNets use the same names (`conv1`, `bn1`,
    `layerN.M.*`, `fc`), so its `.safetensors` files load too.
    `num_batches_tracked` and a `module.` prefix (DataParallel) are ignored,
    and so are `fc.*` when `model` has no `fc` (`include_top=False`).

    Args:
        model: a model from `build_resnet` with matching architecture.
        state_dict: `dict[str, np.ndarray]`, e.g. from
            `kertransfer.backbones.torch_weights.load_torch_state_dict`.

    Returns:
        `model`, with its weights replaced.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape
            mismatches, before any weight is changed.

    Example:

    >>> model = resnet18(weights=None)
    >>> state = load_torch_state_dict("resnet18-f37072fd.pth")
    >>> convert_torchvision_state_dict(model, state)
    """
    state = {
        k: v
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    targets = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = layer.name.replace("_", ".")
        for suffix, variable, convert in _torch_slots(layer):
            targets[f"{prefix}.{suffix}"] = (variable, convert)
    has_fc = any(k.startswith("fc.") for k in targets)
    missing = [k for k in targets if k not in state]
    unexpected = [
        k
        for k in state
        if k not in targets and (has_fc or not k.startswith("fc."))
    ]
    mismatched = []
    updates = []
    for key, (variable, convert) in targets.items():
        if key not in state:
            continue
        array = np.asarray(state[key], dtype="float32")
        expected = _torch_shape(variable, convert)
        if array.shape != expected:
            mismatched.append(
                f"{key}: checkpoint {array.shape}, model expects {expected}"
            )
            continue
        updates.append((variable, convert(array) if convert else array))
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys {_preview(missing)}")
        if unexpected:
            problems.append(
                f"{len(unexpected)} unexpected keys {_preview(unexpected)}"
            )
        if mismatched:
            problems.append(
                f"{len(mismatched)} shape mismatches {_preview(mismatched, 4)}"
            )
        raise ValueError(
            f"The checkpoint does not fit model {model.name!r}: "
            + "; ".join(problems)
            + ". Expected a torchvision/timm state dict of the same "
            "architecture (depth, block, cardinality and width; with "
            "include_top=True also the same number of classes). Check the "
            "arch you chose matches the checkpoint."
        )
    for variable, array in updates:
        variable.assign(array)
    return model


def _converted_cache(arch, include_top):
    """Where the `"imagenet"` weights of `arch` are cached as `.weights.h5`."""
    stem = RESNET_PRESETS[arch]["weights"]["file"].rsplit(".", 1)[0]
    suffix = "" if include_top else "_notop"
    return os.path.join(weights_lib.cache_dir(), f"{stem}{suffix}.weights.h5")


def resnet_from_preset(
    arch,
    weights="imagenet",
    input_shape=(None, None, 3),
    include_top=False,
    classifier_activation="softmax",
):
    """Builds the ResNet/ResNeXt preset `arch` and loads its weights.

    Args:
        arch: a key of `RESNET_PRESETS`, e.g. `"resnet34"`.
        weights: `"imagenet"` (torchvision's ImageNet weights, downloaded
            once into the Keras cache and converted once to a cached
            `.weights.h5`), `None` (random init), or a local file: a
            torchvision/timm `.pth`/`.safetensors` state dict, or a Keras
            `.weights.h5` saved from the same architecture and
            `include_top`.
        input_shape: `(height, width, 3)`; `None` sizes allowed.
        include_top: with the 1000-class ImageNet classifier `fc`.
        classifier_activation: activation of `fc`; `None` gives logits.

    Returns:
        A `keras.Model` taking RGB pixels in `[0, 255]`,
        `(batch, height, width, 3)`. Output: the last feature map
        `(batch, ceil(height/32), ceil(width/32), channels)`, or
        `(batch, 1000)` probabilities with `include_top=True`.

    Raises:
        OSError: if `"imagenet"` weights are neither cached nor downloadable;
            the message names the file and how to pass a local one.
        FileNotFoundError: if a weights path does not exist.
        ValueError: on an unknown `arch`, or a checkpoint that does not fit.

    Example:

    >>> model = resnet_from_preset("resnet18", weights=None,
    ...                            input_shape=(64, 64, 3))
    >>> model.output_shape
    (None, 2, 2, 512)
    """
    if arch not in RESNET_PRESETS:
        raise ValueError(
            f"Unknown ResNet preset arch={arch!r}. Available: "
            f"{', '.join(RESNET_PRESETS)}."
        )
    preset = RESNET_PRESETS[arch]
    resolved = weights_lib.resolve_weights(
        arch, weights, preset["weights"], WEIGHTS_FORMATS,
        (".weights.h5", *TORCH_SUFFIXES), _converted_cache(arch, include_top),
    )
    # Every variable is loaded: the initializers need not run.
    with weights_lib.initialized_by_loading(resolved is not None):
        model = build_resnet(
            **preset["config"],
            **preset["preprocessing"],
            input_shape=input_shape,
            include_top=include_top,
            classifier_activation=classifier_activation,
            name=arch,
        )
        return weights_lib.load_weights(model, resolved, convert_torchvision_state_dict)


def resnet18(weights="imagenet", **kwargs):
    """ResNet-18 (He et al. 2016), 11.69 M parameters, 512 feature channels; see `resnet_from_preset`."""
    return resnet_from_preset("resnet18", weights, **kwargs)


def resnet34(weights="imagenet", **kwargs):
    """ResNet-34 (He et al. 2016), 21.80 M parameters, 512 feature channels; see `resnet_from_preset`."""
    return resnet_from_preset("resnet34", weights, **kwargs)


def tv_resnet50(weights="imagenet", **kwargs):
    """ResNet-50 v1.5, torchvision's (`resnet50` is keras.applications' v1), 25.56 M parameters, 2048 channels."""
    return resnet_from_preset("tv_resnet50", weights, **kwargs)


def resnext50_32x4d(weights="imagenet", **kwargs):
    """ResNeXt-50 32x4d (Xie et al. 2017), 25.03 M parameters, 2048 feature channels; see `resnet_from_preset`."""
    return resnet_from_preset("resnext50_32x4d", weights, **kwargs)


def resnext101_32x8d(weights="imagenet", **kwargs):
    """ResNeXt-101 32x8d (Xie et al. 2017), 88.79 M parameters, 2048 feature channels; see `resnet_from_preset`."""
    return resnet_from_preset("resnext101_32x8d", weights, **kwargs)


register_presets(RESNET_PRESETS, resnet_from_preset)
