"""Backbone registry: name -> builder, weights, preprocessing, layer groups.

Presets are plain data (keras-hub style); the architectures live in their
own modules and register themselves here on import.
"""

import dataclasses
import os
import re
from typing import Callable

__all__ = [
    "BackboneSpec",
    "register_backbone",
    "get_backbone",
    "list_backbones",
    "build_backbone",
    "assign_layer_groups",
    "cache_dir",
]

_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Everything kertransfer needs to know about one backbone.

    Args:
        name: registry key, e.g. `"efficientnet_lite0"`.
        builder: `builder(weights, input_shape, include_top) -> keras.Model`.
            The model takes raw RGB pixels in `[0, 255]`,
            `(batch, height, width, 3)`, and does its own preprocessing
            (an `ImagePreprocessing` layer first). With `include_top=False` it
            returns the last feature map `(batch, h, w, channels)`; with
            `include_top=True`, ImageNet probabilities `(batch, 1000)`.
            `weights` is `"imagenet"`, `None` (random init) or a local file.
        layer_groups: regexes on layer names, one per body group, earliest
            first (fast.ai: early body, late body; the head is added as the
            last group by the learner). A layer belongs to the first group
            whose regex matches it with `re.match`.
        default_image_size: the image size (pixels) it was trained at.
        weights_note: where the `"imagenet"` weights come from, for errors
            and docs.
    """

    name: str
    builder: Callable
    layer_groups: tuple
    default_image_size: int = 224
    weights_note: str = ""


def register_backbone(spec):
    """Adds `spec` to the registry (replacing one of the same name)."""
    if not isinstance(spec, BackboneSpec):
        raise TypeError(
            f"register_backbone expects a BackboneSpec. Received: {spec!r}"
        )
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name):
    """Returns the `BackboneSpec` registered as `name`.

    Raises:
        ValueError: if no backbone of that name exists; the message lists the
            available names.
    """
    if isinstance(name, BackboneSpec):
        return name
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone arch={name!r}. Available: "
            f"{', '.join(sorted(_REGISTRY))}."
        )
    return _REGISTRY[name]


def list_backbones():
    """Returns the sorted names of all registered backbones."""
    return sorted(_REGISTRY)


def build_backbone(
    name, weights="imagenet", input_shape=(None, None, 3), include_top=False
):
    """Builds the registered backbone `name` (see `BackboneSpec.builder`)."""
    spec = get_backbone(name)
    return spec.builder(
        weights=weights, input_shape=input_shape, include_top=include_top
    )


def assign_layer_groups(model, patterns):
    """Splits `model`'s layers with weights into groups by name regex.

    Args:
        model: a Keras model whose layers are matched by name.
        patterns: one regex per group; a layer goes to the first that matches.

    Returns:
        A list of `len(patterns)` lists of layers.

    Raises:
        ValueError: if a layer with weights matches no pattern (a backbone
            whose layer groups would silently miss layers is a bug).
    """
    compiled = [re.compile(p) for p in patterns]
    groups = [[] for _ in patterns]
    for layer in model.layers:
        if not layer.weights:
            continue
        for i, pattern in enumerate(compiled):
            if pattern.match(layer.name):
                groups[i].append(layer)
                break
        else:
            raise ValueError(
                f"Layer {layer.name!r} of {model.name!r} matches none of the "
                f"layer-group patterns {list(patterns)}."
            )
    return groups


def cache_dir():
    """Returns (and creates) kertransfer's folder in the Keras cache.

    `$KERAS_HOME/kertransfer` when `KERAS_HOME` is set, else
    `~/.keras/kertransfer` (falling back to `/tmp/.keras/kertransfer` when the
    home folder is not writable, as Keras does).
    """
    base = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    if not os.access(os.path.dirname(base) or ".", os.W_OK):
        base = os.path.join("/tmp", ".keras")
    path = os.path.join(base, "kertransfer")
    os.makedirs(path, exist_ok=True)
    return path


def local_weights_file(arch, weights, formats):
    """Checks a `weights=` path argument and returns it as a string.

    Args:
        arch: backbone name, for the messages.
        weights: a file path (`str` or `os.PathLike`).
        formats: the file kinds `arch` reads, for the messages (e.g.
            `"a .pth, .safetensors or .weights.h5 file"`).

    Returns:
        The path, as a string.

    Raises:
        ValueError: if `weights` is not a path.
        FileNotFoundError: if no file is there.
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be 'imagenet', None or a file path. Received "
            f"weights={weights!r} for arch={arch!r}."
        )
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{arch} weights file not found: {path}. Pass weights='imagenet', "
            f"None, or the path of {formats}."
        )
    return path
