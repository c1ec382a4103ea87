"""`keras.applications` backbones in the kertransfer registry.

Each application is built on the output of an `ImagePreprocessing` layer
(`input_tensor=`), so its layers sit flat in the returned model next to
`preprocess` and layer groups match them by their Keras names
(`conv4_block1_1_conv`, `block_6_expand`, ...). The model takes raw RGB
pixels in `[0, 255]`, as every kertransfer backbone does; the preprocessing
reproduces each application's own `preprocess_input` exactly:

- ResNet50/101/152 (He et al. 2016, the original v1 "caffe" models): BGR,
  minus the ImageNet mean `[103.939, 116.779, 123.68]` (BGR order), no
  scaling.
- MobileNetV2 (Sandler et al. 2018) and MobileNetV3Small (Howard et al.
  2019): `x / 127.5 - 1`. MobileNetV3's own `Rescaling` is switched off
  (`include_preprocessing=False`) so that the scaling lives in `preprocess`.
- EfficientNetB0 (Tan & Le 2019) normalises inside (`Rescaling(1/255)` and
  a `Normalization` layer whose ImageNet mean/variance come with the
  weights), so `preprocess` is the identity. `keras.applications` adds one
  more `Rescaling(1/sqrt(std))` only when it loads its ImageNet file; here
  the same factor is folded into the `Normalization` variance whenever such
  a file (a legacy `.h5`) is loaded, which gives identical outputs.

The ImageNet files are Keras' own, in `~/.keras/models/` (or
`$KERAS_HOME/models/`) where `keras.applications` keeps them; offline, a
missing file fails at once with a message saying how to pass a local one.
"""

import functools

import keras
import numpy as np

from kertransfer.backbones.registry import BackboneSpec
from kertransfer.backbones.registry import local_weights_file
from kertransfer.backbones.registry import register_backbone
from kertransfer.backbones.resnet import fetch_weights
from kertransfer.layers import ImagePreprocessing

__all__ = ["KERAS_APP_PRESETS", "build_keras_app"]

CAFFE = {
    "mean": (103.939, 116.779, 123.68),  # BGR order
    "std": (1.0, 1.0, 1.0),
    "channel_order": "bgr",
}
MINUS_ONE_TO_ONE = {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
# keras.applications.efficientnet.IMAGENET_STDDEV_RGB.
EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)
WEIGHTS_FORMATS = "the Keras .h5 file above or a .weights.h5"

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
_RESNET_GROUPS = (
    r"^(preprocess|conv1_|pool1_|conv2_|conv3_)",
    r"^(conv4_|conv5_)",
)
_MOBILENET_V2 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels"


def _resnet_files(name, top_hash, notop_hash):
    stem = f"{name}_weights_tf_dim_ordering_tf_kernels"
    return {
        True: (f"{stem}.h5", top_hash),
        False: (f"{stem}_notop.h5", notop_hash),
    }


# Presets are plain data: the application, its preprocessing in pixel units,
# Keras' ImageNet files `{include_top: (file name, md5)}` (copied from
# keras/src/applications/*.py, Keras 3.15) and the layer groups: fast.ai's
# split into early body (to stride 8) and late body (strides 16 and 32); the
# learner adds the head as the last group.
KERAS_APP_PRESETS = {
    "resnet50": {
        "application": "ResNet50",
        "preprocessing": CAFFE,
        "weights_url": _KERAS_URL + "resnet/",
        "weights_files": _resnet_files(
            "resnet50",
            "2cb95161c43110f7111970584f804107",
            "4d473c1dd8becc155b73f8504c6f6626",
        ),
        "layer_groups": _RESNET_GROUPS,
    },
    "resnet101": {
        "application": "ResNet101",
        "preprocessing": CAFFE,
        "weights_url": _KERAS_URL + "resnet/",
        "weights_files": _resnet_files(
            "resnet101",
            "f1aeb4b969a6efcfb50fad2f0c20cfc5",
            "88cf7a10940856eca736dc7b7e228a21",
        ),
        "layer_groups": _RESNET_GROUPS,
    },
    "resnet152": {
        "application": "ResNet152",
        "preprocessing": CAFFE,
        "weights_url": _KERAS_URL + "resnet/",
        "weights_files": _resnet_files(
            "resnet152",
            "100835be76be38e30d865e96f2aaae62",
            "ee4c566cf9a93f14d82f913c2dc6dd0c",
        ),
        "layer_groups": _RESNET_GROUPS,
    },
    "mobilenet_v2": {
        "application": "MobileNetV2",
        "preprocessing": MINUS_ONE_TO_ONE,
        "weights_url": _KERAS_URL + "mobilenet_v2/",
        # `{rows}`: Keras has one file per training size; no hashes.
        "weights_files": {
            True: (_MOBILENET_V2 + "_1.0_{rows}.h5", None),
            False: (_MOBILENET_V2 + "_1.0_{rows}_no_top.h5", None),
        },
        "layer_groups": (
            r"^(preprocess|Conv1|bn_Conv1|expanded_conv_|block_[1-5]_)",
            r"^(block_([6-9]|1[0-6])_|Conv_1)",
        ),
    },
    "mobilenet_v3_small": {
        "application": "MobileNetV3Small",
        "app_kwargs": {"include_preprocessing": False},
        "preprocessing": MINUS_ONE_TO_ONE,
        "weights_url": _KERAS_URL + "mobilenet_v3/",
        "weights_files": {
            True: (
                "weights_mobilenet_v3_small_224_1.0_float.h5",
                "8768d4c2e7dee89b9d02b2d03d65d862",
            ),
            False: (
                "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                "d3e8ec802a04aa4fc771ee12a9a9b836",
            ),
        },
        "layer_groups": (
            r"^(preprocess|conv$|conv_bn$|expanded_conv_(?!\d)"
            r"|expanded_conv_[12]_)",
            r"^(expanded_conv_([3-9]|10)_|conv_1)",
        ),
    },
    "efficientnet_b0": {
        "application": "EfficientNetB0",
        "preprocessing": IDENTITY,
        "weights_url": "https://storage.googleapis.com/keras-applications/",
        "weights_files": {
            True: ("efficientnetb0.h5", "902e53a9f72be733fc0bcb005b3ebbac"),
            False: (
                "efficientnetb0_notop.h5",
                "50bc09e76180e00e4465e1a485ddc09d",
            ),
        },
        "layer_groups": (
            r"^(preprocess|rescaling|normalization|stem_|block[1-3][a-z]_)",
            r"^(block[4-7][a-z]_|top_)",
        ),
    },
}


def _imagenet_file(arch, include_top, input_shape):
    """`(file name, md5 or None)` of Keras' ImageNet weights for `arch`."""
    files = KERAS_APP_PRESETS[arch]["weights_files"]
    fname, file_hash = files[bool(include_top)]
    if "{rows}" in fname:
        # As keras.applications.MobileNetV2: the file trained at the input
        # size when there is one, else the 224 px file.
        rows, cols = input_shape[0], input_shape[1]
        fname = fname.format(
            rows=rows if rows == cols and rows in MOBILENET_V2_SIZES else 224
        )
    return fname, file_hash


def _resolve_weights(arch, weights, include_top, input_shape):
    """Checks `weights` and returns `None` or a local file to load."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        fname, file_hash = _imagenet_file(arch, include_top, input_shape)
        url = KERAS_APP_PRESETS[arch]["weights_url"] + fname
        return fetch_weights(
            fname, url, arch, file_hash=file_hash, formats=WEIGHTS_FORMATS
        )
    path = local_weights_file(arch, weights, "a Keras .h5 / .weights.h5 file")
    if not path.endswith(".h5"):
        expected = _imagenet_file(arch, include_top, input_shape)[0]
        raise ValueError(
            f"Cannot read {arch} weights from {path}: expected a Keras "
            "weights file, .weights.h5 (Keras 3) or .h5 (keras.applications' "
            f"own ImageNet file, here {expected})."
        )
    return path


def _fold_efficientnet_rescaling(model):
    """Folds keras.applications' ImageNet-only `Rescaling` into the variance.

    `EfficientNetB0(weights="imagenet")` computes
    `(x / 255 - mean) / sqrt(variance) / sqrt(std)`; scaling the loaded
    variance by `std` gives the same without the extra layer.
    """
    (norm,) = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Normalization)
    ]
    std = np.asarray(EFFICIENTNET_STDDEV_RGB, dtype="float32")
    variance = keras.ops.convert_to_numpy(norm.adapt_variance)
    norm.adapt_variance.assign(variance * std)
    norm.finalize_state()


def build_keras_app(
    arch,
    weights="imagenet",
    input_shape=(None, None, 3),
    include_top=False,
    classifier_activation="softmax",
):
    """Builds the `keras.applications` backbone `arch` on raw pixels.

    Args:
        arch: a key of `KERAS_APP_PRESETS`: `"resnet50"`, `"resnet101"`,
            `"resnet152"`, `"mobilenet_v2"`, `"mobilenet_v3_small"` or
            `"efficientnet_b0"`.
        weights: `"imagenet"` (Keras' ImageNet file, from the Keras cache
            `~/.keras/models/` or downloaded there), `None` (random init),
            or a local file: Keras' ImageNet `.h5` (as downloaded by
            `keras.applications`) or a `.weights.h5` saved from this model.
        input_shape: `(height, width, 3)`; `None` sizes allowed.
        include_top: with the 1000-class ImageNet classifier.
        classifier_activation: activation of the classifier; `None` gives
            logits.

    Returns:
        A `keras.Model` named `arch` taking RGB pixels in `[0, 255]`,
        `(batch, height, width, 3)`: an `ImagePreprocessing` layer named
        `"preprocess"`, then the application's layers. Output: the last
        feature map `(batch, h/32, w/32, channels)`, or `(batch, 1000)` with
        `include_top=True`.

    Raises:
        OSError: if `"imagenet"` weights are neither cached nor downloadable;
            the message names the file and how to pass a local one.
        FileNotFoundError: if a weights path does not exist.
        ValueError: on an unknown `arch`, a file that is not `.h5`, or a file
            that does not fit the model.

    Example:

    >>> model = build_keras_app("mobilenet_v2", weights=None,
    ...                         input_shape=(64, 64, 3))
    >>> model.output_shape
    (None, 2, 2, 1280)
    """
    if arch not in KERAS_APP_PRESETS:
        raise ValueError(
            f"Unknown keras.applications backbone arch={arch!r}. Available: "
            f"{', '.join(KERAS_APP_PRESETS)}."
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            "input_shape must be (height, width, 3), channels last. "
            f"Received input_shape={input_shape!r}."
        )
    preset = KERAS_APP_PRESETS[arch]
    path = _resolve_weights(arch, weights, include_top, input_shape)
    inputs = keras.Input(shape=input_shape, name="image")
    x = ImagePreprocessing(**preset["preprocessing"], name="preprocess")(inputs)
    application = getattr(keras.applications, preset["application"])
    # With input_tensor, the application's graph starts at `inputs`, so its
    # layers and `preprocess` sit in one flat model. Rewrapping it takes a
    # single input tensor (the application's own model expects a list).
    application_model = application(
        include_top=include_top,
        weights=None,
        input_tensor=x,
        classifier_activation=classifier_activation,
        **preset.get("app_kwargs", {}),
    )
    model = keras.Model(inputs, application_model.output, name=arch)
    if path is None:
        return model
    try:
        model.load_weights(path)
    except ValueError as e:
        raise ValueError(
            f"Could not load {path} into {arch} (include_top={include_top}): "
            f"{e}. The file must come from the same application with the "
            "same include_top; Keras' ImageNet file for this configuration "
            f"is {_imagenet_file(arch, include_top, input_shape)[0]}."
        ) from e
    if arch == "efficientnet_b0" and not path.endswith(".weights.h5"):
        _fold_efficientnet_rescaling(model)
    return model


for _arch, _preset in KERAS_APP_PRESETS.items():
    register_backbone(
        BackboneSpec(
            name=_arch,
            builder=functools.partial(build_keras_app, _arch),
            layer_groups=_preset["layer_groups"],
            default_image_size=224,
            weights_note="ImageNet, keras.applications."
            f"{_preset['application']} ({_preset['weights_url']})",
        )
    )
