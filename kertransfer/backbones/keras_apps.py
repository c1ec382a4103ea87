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

import keras
import numpy as np

from kertransfer.backbones import weights as weights_lib
from kertransfer.backbones.keras_apps_presets import CAFFE  # noqa: F401
from kertransfer.backbones.keras_apps_presets import IDENTITY  # noqa: F401
from kertransfer.backbones.keras_apps_presets import KERAS_APP_PRESETS
from kertransfer.backbones.keras_apps_presets import MINUS_ONE_TO_ONE  # noqa: F401
from kertransfer.backbones.registry import register_presets
from kertransfer.layers import ImagePreprocessing

# The F401 names were defined here in kertransfer 0.1 (now data in
# `keras_apps_presets`): they still import.

__all__ = ["KERAS_APP_PRESETS", "build_keras_app"]

# keras.applications.efficientnet.IMAGENET_STDDEV_RGB.
EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)
WEIGHTS_FORMATS = (
    "a Keras weights file: .weights.h5 (Keras 3) or .h5 (keras.applications' "
    "own ImageNet file, here {expected})"
)


def _imagenet_source(arch, include_top, input_shape):
    """The weights source of Keras' ImageNet file for `arch` (see `weights`)."""
    preset = KERAS_APP_PRESETS[arch]
    source = dict(preset["weights" if include_top else "weights_notop"])
    if "{rows}" in source["file"]:
        # As keras.applications.MobileNetV2: the file trained at the input
        # size when there is one, else the 224 px file.
        rows, cols = input_shape[0], input_shape[1]
        source["file"] = source["file"].format(
            rows=rows if rows == cols and rows in MOBILENET_V2_SIZES else 224
        )
    return source


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
    source = _imagenet_source(arch, include_top, input_shape)
    expected = source["file"]
    formats = WEIGHTS_FORMATS.format(expected=expected)
    resolved = weights_lib.resolve_weights(
        arch, weights, source, formats, weights_lib.KERAS_SUFFIXES
    )
    # Every variable is loaded: the initializers need not run.
    with weights_lib.initialized_by_loading(resolved is not None):
        inputs = keras.Input(shape=input_shape, name="image")
        x = ImagePreprocessing(**preset["preprocessing"], name="preprocess")(inputs)
        application = getattr(keras.applications, preset["application"])
        # With input_tensor, the application's graph starts at `inputs`, so
        # its layers and `preprocess` sit in one flat model. Rewrapping it
        # takes a single input tensor (the application's own model expects
        # a list).
        application_model = application(
            include_top=include_top,
            weights=None,
            input_tensor=x,
            classifier_activation=classifier_activation,
            **preset["app_kwargs"],
        )
        model = keras.Model(inputs, application_model.output, name=arch)
        if resolved is None:
            return model
        path = resolved[0]
        try:
            weights_lib.load_weights(model, resolved)
        except ValueError as e:
            raise ValueError(
                f"Could not load {path} into {arch} (include_top={include_top}): "
                f"{e}. The file must come from the same application with the "
                "same include_top; Keras' ImageNet file for this configuration "
                f"is {expected}."
            ) from e
    if arch == "efficientnet_b0" and not path.endswith(".weights.h5"):
        _fold_efficientnet_rescaling(model)
    return model


register_presets(KERAS_APP_PRESETS, build_keras_app)
