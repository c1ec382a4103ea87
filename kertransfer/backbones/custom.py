"""Your own backbone: any Keras image model as a kertransfer body.

A `keras.applications` model, a KerasHub backbone or your own functional
model becomes a kertransfer body in three steps, here:

1. checked, before any work: a `keras.Model` with one 4-D image input
   `(batch, height, width, 3)` (channels last);
2. cut, when it is a whole classifier: fast.ai cuts at the pooling layer,
   so the body ends at the input of its last `GlobalAveragePooling2D`,
   `GlobalMaxPooling2D` or `Flatten` (the feature map the head pools);
3. given kertransfer's input: an `ImagePreprocessing` layer named
   `"preprocess"` (`"preprocess_1"` if that name is taken) maps raw RGB pixels in `[0, 255]` to the scaling the
   model was trained on, which must be said (`preprocessing`: Keras'
   `preprocess_input` modes `"caffe"`, `"tf"`, `"torch"`, or `"raw"` for a
   model that scales inside; see `PREPROCESSING_MODES`).

The body is one flat functional model (`preprocess`, then the model's own
layers, shared: the same weights), as `keras_apps.build_keras_app` builds
them, so layer groups match the model's layer names
(`kertransfer.groups`). `ConvLearner.from_model` puts the head on such a
body; `register_keras_backbone` registers a constructor by name for
`ConvLearner.pretrained(name, ...)` and `kertransfer train --arch name`.
"""

import functools

import keras

from kertransfer.backbones.keras_apps_presets import PREPROCESSING_MODES
from kertransfer.backbones.registry import BackboneSpec
from kertransfer.backbones.registry import register_backbone
from kertransfer.groups import group_patterns
from kertransfer.groups import match_layer_groups
from kertransfer.groups import split_layer_groups
from kertransfer.images import DEFAULT_CROP_PCT
from kertransfer.layers import ImagePreprocessing

__all__ = [
    "PREPROCESSING_MODES",
    "body_layer_groups",
    "image_body",
    "register_keras_backbone",
    "resolve_preprocessing",
]

# Layers a classifier's top starts with; the body ends at the last one's input.
_CUT_LAYERS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)


def resolve_preprocessing(preprocessing, argument="preprocessing"):
    """The `ImagePreprocessing` arguments of a preprocessing mode.

    Args:
        preprocessing: `"caffe"` (BGR, minus the ImageNet mean in pixels:
            ResNet50/101/152, VGG), `"tf"` (`x / 127.5 - 1`: MobileNet,
            MobileNetV2, Xception, Inception), `"torch"` (`x / 255`, then
            the ImageNet mean and std: DenseNet, torchvision and timm
            ports), `"raw"` (pixels in `[0, 255]` as they are, for a model
            that scales inside: EfficientNet, ConvNeXt, MobileNetV3 with
            `include_preprocessing=True`), or a dict of `ImagePreprocessing`
            arguments: `mean` and `std` (three values each, pixel units,
            model channel order) and maybe `channel_order="bgr"`.
        argument: the caller's name of the argument, for errors.

    Returns:
        `dict` with `mean`, `std` (and maybe `channel_order`).

    Raises:
        ValueError: on an unknown mode or a bad dict; the message lists the
            modes.

    Example:

    >>> resolve_preprocessing("tf")
    {'mean': (127.5, 127.5, 127.5), 'std': (127.5, 127.5, 127.5)}
    """
    modes = ", ".join(repr(m) for m in PREPROCESSING_MODES)
    if isinstance(preprocessing, str) and preprocessing in PREPROCESSING_MODES:
        return dict(PREPROCESSING_MODES[preprocessing])
    if isinstance(preprocessing, dict):
        try:
            ImagePreprocessing(**preprocessing)  # checks the values
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{argument} as a dict holds ImagePreprocessing arguments: mean and std "
                f"(three values each, pixel units) and maybe channel_order ({e}). "
                f"Received {argument}={preprocessing!r}."
            ) from e
        return dict(preprocessing)
    raise ValueError(
        f"{argument} must say how the model expects its input scaled: one of {modes} "
        "(the modes of keras.applications' preprocess_input; 'raw': pixels in [0, 255], "
        "for a model that rescales inside), or a dict(mean=..., std=...) in pixel units. "
        "keras.applications.MobileNetV2 wants 'tf', ResNet50 'caffe', DenseNet121 "
        f"'torch', EfficientNetB0 'raw'. Received {argument}={preprocessing!r}."
    )


def _image_input(keras_model, argument):
    """The model's one image input tensor, checked."""
    if not isinstance(keras_model, keras.Model):
        raise TypeError(
            f"{argument} must be a keras.Model, e.g. keras.applications.MobileNetV2("
            f"include_top=False). Received {argument} of type {type(keras_model).__name__}."
        )
    try:
        inputs = list(keras_model.inputs)
    except (AttributeError, ValueError):
        inputs = []
    if not inputs:
        raise ValueError(
            f"{argument} ({keras_model.name!r}) has no symbolic inputs: a subclassed model "
            "cannot be cut into layer groups. Pass a functional or Sequential model built "
            "on keras.Input((height, width, 3))."
        )
    shape = tuple(inputs[0].shape)
    if len(inputs) != 1 or len(shape) != 4 or shape[-1] != 3:
        found = [tuple(x.shape) for x in inputs]
        raise ValueError(
            f"{argument} ({keras_model.name!r}) needs one 4-D image input (batch, height, "
            f"width, 3), channels last. Received inputs of shapes {found}. Build it with "
            "input_shape=(height, width, 3) (or (None, None, 3)) and "
            'keras.config.set_image_data_format("channels_last").'
        )
    return inputs[0]


def _feature_map(keras_model, argument):
    """The model's 4-D output, or, for a classifier, its last layer before pooling."""
    if len(keras_model.outputs) != 1:
        raise ValueError(
            f"{argument} ({keras_model.name!r}) has {len(keras_model.outputs)} outputs; a body "
            "has one, the last feature map. Pass keras.Model(model.input, <that tensor>)."
        )
    output = keras_model.outputs[0]
    if len(output.shape) == 4:
        return output
    # A whole classifier: fast.ai cuts at the pooling layer.
    cuts = [
        layer for layer in keras_model.layers
        if isinstance(layer, _CUT_LAYERS) and len(layer.input.shape) == 4
    ]
    if not cuts:
        raise ValueError(
            f"{argument} ({keras_model.name!r}) outputs shape {tuple(output.shape)} and has no "
            "global pooling or Flatten layer to cut its top at. Pass the body: "
            "include_top=False, or keras.Model(model.input, model.get_layer(NAME).output) "
            "with NAME its last 4-D layer."
        )
    return cuts[-1].input


def _free_name(model, name):
    """`name`, or `name_1`, `name_2`, ... if `model` has a layer of that name."""
    taken = {layer.name for layer in model.layers}
    candidates = (name if i == 0 else f"{name}_{i}" for i in range(len(taken) + 1))
    return next(c for c in candidates if c not in taken)


def _with_preprocessing(model, preprocessing):
    """`model` with `ImagePreprocessing` first, as one flat functional model.

    The model's layers are reused (not copied): the result shares their
    weights. `keras.models.clone_model` replays the graph on a new
    `"image"` input, calling `preprocess` before the layers that read it.
    """
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name=_free_name(model, "image"))
    pixels = ImagePreprocessing(**preprocessing, name=_free_name(model, "preprocess"))(inputs)

    def call(layer, *args, **kwargs):
        args, kwargs = keras.tree.map_structure(lambda t: pixels if t is inputs else t, (args, kwargs))
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call
    )


def image_body(keras_model, preprocessing, image_size=None, argument="keras_model"):
    """An existing Keras image model as a kertransfer body (raw pixels in).

    Args:
        keras_model: a `keras.Model` with one image input `(batch, height,
            width, 3)`: a body (`include_top=False`, output `(batch, h, w,
            channels)`) or a whole classifier, cut before its last global
            pooling (or `Flatten`) layer.
        preprocessing: its input scaling (see `resolve_preprocessing`).
        image_size: None, or the side (pixels) of the images it will get;
            checked against a fixed input size.
        argument: the caller's name of `keras_model`, for errors.

    Returns:
        A flat functional `keras.Model` named as `keras_model`: input
        `"image"`, raw RGB pixels in `[0, 255]`, `(batch, height, width, 3)`;
        then `ImagePreprocessing` `"preprocess"`; then the layers of
        `keras_model` (the same layer objects, sharing weights) up to the
        feature map `(batch, h, w, channels)`.

    Raises:
        TypeError: if `keras_model` is not a `keras.Model`.
        ValueError: without one 4-D 3-channel input, without a feature map
            to cut at, on a fixed input size other than `image_size`, or a
            bad `preprocessing`.

    Example:

    ```python
    model = keras.applications.MobileNetV2(include_top=False, weights=None)
    body = image_body(model, "tf")  # pixels in [0, 255] -> x / 127.5 - 1 -> MobileNetV2
    ```
    """
    image = _image_input(keras_model, argument)
    preprocessing = resolve_preprocessing(preprocessing)
    height, width = image.shape[1:3]
    if image_size is not None and (height, width) != (None, None) and (height, width) != (image_size, image_size):
        raise ValueError(
            f"{argument} ({keras_model.name!r}) takes {height}x{width} images, but the data "
            f"gives {image_size}x{image_size} (data.image_size={image_size}). Build the model "
            f"with input_shape=({image_size}, {image_size}, 3), or (None, None, 3) for any "
            f"size; or resize the data: data.resize({height})."
        )
    features = _feature_map(keras_model, argument)
    view = keras.Model(image, features, name=keras_model.name)
    return _with_preprocessing(view, preprocessing)


def body_layer_groups(body, layer_groups, argument="layer_groups"):
    """A body's layer groups `{name: regex}`, checked against its layers.

    Args:
        body: a kertransfer body (e.g. from `image_body`).
        layer_groups: None (fast.ai's split of the layers with weights into
            two halves by layer order: `kertransfer.groups.split_layer_groups`),
            or the body's groups, earliest first, in any form
            `kertransfer.groups.group_patterns` reads: a dict `{name:
            regex}` (each matching whole layer names), a list of prefix
            regexes, or a list of lists of exact layer names. The head is
            added after them as the last group.
        argument: the caller's name of `layer_groups`, for errors.

    Returns:
        `dict` `{group name: regex}`: every layer of `body` with weights is
        in exactly one group, and no group is empty.

    Raises:
        ValueError: if the body has fewer layers with weights than groups,
            a layer with weights is in no group or two, or a group is empty.
        TypeError: on a malformed `layer_groups`.
    """
    try:
        patterns = split_layer_groups(body) if layer_groups is None else group_patterns(layer_groups)
        groups = match_layer_groups(body, patterns)
    except (TypeError, ValueError) as e:
        hint = (
            "A model nested inside counts as one layer: pass the inner model itself (e.g. "
            "the keras.applications model, not a Sequential around it), or your own layer_groups."
            if layer_groups is None
            else "Every layer with weights needs exactly one group; list them with "
            "[l.name for l in model.layers if l.weights]."
        )
        raise type(e)(f"{argument}={layer_groups!r}: {e} {hint}") from e
    empty = [name for name, layers in groups.items() if not layers]
    if empty:
        raise ValueError(
            f"{argument}: group(s) {empty} match no layer with weights of model {body.name!r} "
            f"({ {name: patterns[name] for name in empty} }). Each group needs at least one; "
            "check the names against [l.name for l in model.layers if l.weights]."
        )
    return patterns


def _build(constructor, name, preprocessing, weights=None, input_shape=(None, None, 3), include_top=False):
    """`BackboneSpec.builder` of a backbone registered by `register_keras_backbone`."""
    model = constructor(include_top=include_top, weights=weights, input_shape=tuple(input_shape))
    argument = f"the model that the constructor of backbone {name!r} returned"
    if include_top:
        _image_input(model, argument)
        return _with_preprocessing(model, preprocessing)
    return image_body(model, preprocessing, argument=argument)


def register_keras_backbone(
    name, constructor, preprocessing, image_size=224, layer_groups=None, crop_pct=DEFAULT_CROP_PCT, weights_note="",
):
    """Registers a Keras model constructor as the backbone `name`.

    After this, `ConvLearner.pretrained(name, data)`, `build_backbone(name)`
    and `kertransfer train --arch name` (with the registering code named in
    `$KERTRANSFER_BACKBONES`, see `registry.import_backbone_modules`) build
    it like a built-in backbone: `preprocess` first, the layer groups, the
    head on top.

    Args:
        name: the registry name (replaces a backbone of the same name).
        constructor: called as `constructor(include_top=..., weights=...,
            input_shape=...)`, the signature of `keras.applications`
            (`keras.applications.DenseNet121`, or
            `functools.partial(keras.applications.MobileNetV2, alpha=0.35)`);
            `weights` is what the learner was given (`"imagenet"`, None or a
            file), `input_shape` `(None, None, 3)` unless asked otherwise.
            Returns a model as `ConvLearner.from_model` takes (a whole
            classifier is cut at its pooling layer).
        preprocessing: how the model expects its input scaled:
            `"caffe"`, `"tf"`, `"torch"`, `"raw"` or a dict (see
            `resolve_preprocessing`).
        image_size: the size (pixels) it was trained at.
        layer_groups: None (fast.ai's split of the layers with weights into
            two halves by layer order, made at each build), or groups as
            `BackboneSpec.layer_groups` takes them.
        crop_pct: center-crop fraction of its evaluation framing.
        weights_note: where its `"imagenet"` weights come from, for docs.

    Returns:
        The registered `BackboneSpec`.

    Raises:
        ValueError: on a bad `preprocessing` or `layer_groups`, or a
            `constructor` that is not callable.

    Example:

    ```python
    register_keras_backbone("densenet121", keras.applications.DenseNet121,
                            preprocessing="torch", image_size=224)
    learn = ConvLearner.pretrained("densenet121", data)
    ```
    """
    if not callable(constructor):
        raise ValueError(
            "constructor must be callable as constructor(include_top=..., weights=..., "
            f"input_shape=...), e.g. keras.applications.DenseNet121. Received {constructor!r}."
        )
    preprocessing = resolve_preprocessing(preprocessing)
    return register_backbone(
        BackboneSpec(
            name=name,
            builder=functools.partial(_build, constructor, name, preprocessing),
            layer_groups=layer_groups,
            default_image_size=image_size,
            weights_note=weights_note,
            preprocessing=preprocessing,
            crop_pct=crop_pct,
        )
    )
