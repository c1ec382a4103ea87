"""Saved models anyone can load: Keras's own layers, the facts in the file.

A `model.keras` written by `ConvLearner.save` (and so by `kertransfer
train`) loads with plain `keras.saving.load_model(path)`, on any backend,
without kertransfer installed: `portable_model` rebuilds the learner's model
from Keras's own layers, with the same weights and outputs (to float32
rounding), before it is saved:

| kertransfer layer (training model)   | saved as (Keras layers)                         |
|--------------------------------------|-------------------------------------------------|
| `ImagePreprocessing`                 | `Rescaling(scale=1 / std, offset=-mean / std)`, named as the layer; BGR models get a fixed 1x1 `Conv2D` `<name>_bgr` (channel flip) before it |
| `AdaptiveConcatPooling2D`            | `Concatenate` of `GlobalAveragePooling2D` (`<name>_avg`) and `GlobalMaxPooling2D` (`<name>_max`) |
| `Conv2D`, `DepthwiseConv2D`          | `keras.layers.Conv2D`, `keras.layers.DepthwiseConv2D` (same config) |

The training model keeps kertransfer's layers (the convolutions are the
fast forms under JAX, see `kertransfer.layers`); only the saved copy
changes. The file's facts (class names, multi-label, the framing: image
size and crop, and the normalization the model applies) go into the
archive's own `metadata.json`, beside Keras's `keras_version`, under the
key `"kertransfer"`; `read_model_info` reads them back, and so does any
zip reader:

```python
import json, zipfile
info = json.loads(zipfile.ZipFile("model.keras").read("metadata.json"))["kertransfer"]
info["classes"], info["multi_label"], info["preprocessing"]["image_size"]
```

Files written before this module existed hold kertransfer's layers; they
still load through kertransfer's loaders
(`kertransfer.run_folder.load_model_file`, `ConvLearner.load`), which
register those layers first.
"""

import json
import os
import shutil
import zipfile

import keras
import numpy as np

from kertransfer import layers as kt_layers
from kertransfer.backbones.weights import initialized_by_loading
from kertransfer.distribute import portable_config
from kertransfer.files import atomic_path
from kertransfer.no_tensorflow import tensorflow_unimported

__all__ = [
    "MODEL_INFO_KEY",
    "copy_weights",
    "portable_model",
    "read_model_info",
    "save_portable",
    "write_model_info",
]

# Key of kertransfer's facts in a `.keras` archive's `metadata.json`.
MODEL_INFO_KEY = "kertransfer"
# Version of the facts' layout; raise it when a reader of the old one
# would misread the new one.
MODEL_INFO_FORMAT = 1
_METADATA = "metadata.json"  # Keras's name (`keras.src.saving.saving_lib`)

# Drop-in subclasses whose config is the Keras layer's config.
_KERAS_CLASS = {
    kt_layers.Conv2D: keras.layers.Conv2D,
    kt_layers.DepthwiseConv2D: keras.layers.DepthwiseConv2D,
}
# Replaced by a small graph of Keras layers where the model calls them.
_EXPANDED = (kt_layers.ImagePreprocessing, kt_layers.AdaptiveConcatPooling2D)


def _clone_layer(layer):
    if isinstance(layer, _EXPANDED):
        return layer  # `_call_layer` puts Keras layers in its place.
    cls = _KERAS_CLASS.get(type(layer), type(layer))
    # `portable_config`: a BatchNorm synchronized for MirroredStrategy would
    # not load on JAX or torch.
    config = portable_config({"class_name": cls.__name__, "config": layer.get_config()})["config"]
    return cls.from_config(config)


def _call_layer(layer, *args, **kwargs):
    if isinstance(layer, kt_layers.AdaptiveConcatPooling2D):
        (x,) = args
        name = layer.name
        return keras.layers.Concatenate(name=name)([
            keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")(x),
            keras.layers.GlobalMaxPooling2D(name=f"{name}_max")(x),
        ])
    if isinstance(layer, kt_layers.ImagePreprocessing):
        (x,) = args
        if layer.channel_order == "bgr":
            flip = keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name=f"{layer.name}_bgr")
            x = flip(x)
            # Output channel c is input channel 2 - c: an exact permutation.
            flip.set_weights([np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)])
        # (x - mean) / std as x * (1 / std) - mean / std. Not Normalization:
        # its mean and variance are tensors made at build time, which the
        # ONNX export (tf2onnx) turns into missing graph inputs.
        std = np.asarray(layer.std, "float64")
        scale, offset = 1.0 / std, -np.asarray(layer.mean, "float64") / std
        return keras.layers.Rescaling(scale.tolist(), offset.tolist(), name=layer.name)(x)
    return layer(*args, **kwargs)


def _weighted_pairs(model, other):
    """`(layer, same-named layer of other)` for each layer of `model` with
    weights, through nested models (a backbone)."""
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            twin = other.get_layer(layer.name)
        except ValueError as e:
            raise ValueError(
                f"The model {other.name!r} has no layer {layer.name!r}, which holds weights in "
                f"{model.name!r}: the two are not the same architecture."
            ) from e
        if isinstance(layer, keras.Model) and isinstance(twin, keras.Model):
            yield from _weighted_pairs(layer, twin)
        else:
            yield layer, twin


def copy_weights(source, target):
    """Copies the weights of `source` into `target`, layer by layer by name.

    The two models must have the same layers with weights, under the same
    names (nested models recursively); layers without weights may differ,
    as between a learner's model and its `portable_model`.

    Args:
        source: a `keras.Model`.
        target: a `keras.Model` with the same weighted layers.

    Raises:
        ValueError: if a weighted layer of `target` is missing from
            `source`, or its weights have other shapes.
    """
    for layer, twin in _weighted_pairs(target, source):
        layer.set_weights(twin.get_weights())


def _kertransfer_layers(model):
    stack = [model]
    while stack:
        layer = stack.pop()
        if type(layer).__module__.startswith("kertransfer."):
            yield layer
        stack.extend(getattr(layer, "layers", []))


def portable_model(model):
    """A copy of `model` made of Keras's own layers, with the same weights.

    kertransfer's layers (`ImagePreprocessing`, `AdaptiveConcatPooling2D`,
    the JAX-fast `Conv2D`/`DepthwiseConv2D`) become the Keras layers of the
    table in this module's docstring; every other layer is cloned as is,
    BatchNorm layers unsynchronized. The copy is not compiled (no
    optimizer, loss or metrics), so a `.keras` file of it loads without
    kertransfer and without `compile=False`.

    Args:
        model: a functional `keras.Model`, e.g. `learn.model` (nested
            functional models, such as the backbone, are converted too).

    Returns:
        A new `keras.Model` with the same name, inputs and outputs (to
        float32 rounding).

    Raises:
        ValueError: if a kertransfer layer sits inside a `Sequential` model
            (it cannot be replaced there).

    Example:

    ```python
    portable_model(learn.model).save("model.keras")
    keras.saving.load_model("model.keras")  # in any Python with Keras
    ```
    """
    # A fresh functional view: cloning a compiled model would compile the
    # copy (its loss and metrics, e.g. kertransfer's F-beta, would be saved).
    view = keras.Model(model.inputs, model.outputs, name=model.name)
    # The copy's weights are all copied in: its initializers need not run.
    # Keras's `get_config` (of the dtype policies) imports TensorFlow otherwise.
    with tensorflow_unimported(), initialized_by_loading():
        clone = keras.models.clone_model(
            view, clone_function=_clone_layer, call_function=_call_layer, recursive=True
        )
        left = sorted({type(layer).__name__ for layer in _kertransfer_layers(clone)})
        if left:
            raise ValueError(
                f"portable_model could not replace the kertransfer layer(s) {left} in the model "
                f"{model.name!r} (a Sequential model cannot be rewired). Build that part as a "
                "functional model (keras.Model(inputs, outputs))."
            )
        for layer, twin in _weighted_pairs(model, clone):
            twin.set_weights(layer.get_weights())
    return clone


def _normalization(model):
    """`{"mean", "std", "channel_order"}` of the model's first
    `ImagePreprocessing` layer, or None."""
    stack = [model]
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, kt_layers.ImagePreprocessing):
            return {"mean": list(layer.mean), "std": list(layer.std), "channel_order": layer.channel_order}
        stack.extend(getattr(layer, "layers", []))
    return None


def write_model_info(path, info):
    """Puts `info` into the `metadata.json` of the `.keras` file at `path`.

    Keras's own keys (`keras_version`, `date_saved`) stay; `info` goes
    under `MODEL_INFO_KEY`. The archive is rewritten beside `path` and
    renamed into place (`kertransfer.run_folder.atomic_path`).

    Args:
        path: a `.keras` file (`keras.Model.save`).
        info: a JSON-serializable dict.
    """
    path = os.fspath(path)
    # Both archives are closed (last in, first out) before the rename.
    with atomic_path(path) as tmp, zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w") as out:
        for item in source.infolist():
            if item.filename == _METADATA:
                metadata = json.loads(source.read(item))
                metadata[MODEL_INFO_KEY] = info
                out.writestr(item, json.dumps(metadata, indent=2))
            else:
                with source.open(item) as src, out.open(item, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)


def read_model_info(path):
    """kertransfer's facts about the `.keras` file at `path`.

    Args:
        path: a `.keras` file.

    Returns:
        The dict `save_portable` wrote (`classes`, `multi_label`, `arch`,
        `preprocessing`: the `kertransfer.images.Framing` fields plus
        `mean`, `std`, `channel_order`), or `{}` for a file without it
        (written by Keras, or by kertransfer before the facts were saved).

    Raises:
        ValueError: if `path` is not a `.keras` archive.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(_METADATA)) if _METADATA in archive.namelist() else {}
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path} is not a readable .keras archive ({type(e).__name__}: {e}).") from e
    return metadata.get(MODEL_INFO_KEY, {})


def save_portable(model, path, info=None):
    """Saves `portable_model(model)` to `path` with kertransfer's facts.

    Args:
        model: a functional `keras.Model` (e.g. `learn.model`).
        path: the `.keras` file to write.
        info: dict of facts to store (`classes`, `multi_label`, `arch`,
            `preprocessing`); the normalization of the model's
            `ImagePreprocessing` layer (`mean`, `std`, `channel_order`) is
            added to `preprocessing`, and `format` is set.

    Returns:
        `path`.
    """
    info = dict(info or {})
    normalization = _normalization(model)
    if normalization:
        info["preprocessing"] = {**info.get("preprocessing", {}), **normalization}
    info = {"format": MODEL_INFO_FORMAT, **info}
    with tensorflow_unimported():  # Keras's serializer imports it otherwise
        portable_model(model).save(path)
    write_model_info(path, info)
    return path
