"""What every export shares: the model, its class names, its framing, images.

Each exporter takes a trained run folder (`model.keras`, `metrics.json`,
`preprocessing.json`, `predictions.npz`), a `.keras` file or a
`keras.Model`; the helpers here load the model and resolve its class names
and its framing (`kertransfer.images.Framing`) the same way for every
format, and list the image files to calibrate or validate on.
TensorFlow is imported only by `import_tensorflow`, when a function needs it.
The names here are the export package's own helpers, shared by its
modules; users call `kertransfer.export.*` instead.
"""

import os
import warnings

import keras
import numpy as np

from kertransfer import images as images_lib
from kertransfer.images import IMAGE_EXTENSIONS
from kertransfer.images import Framing
from kertransfer.predict import find_images
from kertransfer.predict import run_framing
from kertransfer.run_folder import RunFolder
from kertransfer.run_folder import load_model_file


class ExportWarning(UserWarning):
    """A missed export target, or a fallback worth knowing about."""


QUANTIZATIONS = (None, "float16", "dynamic", "int8")
REPORT_NAME = "export_report.json"


_TF_HINT = (
    "Exports need TensorFlow installed (any Keras backend may be active). "
    "Install it with `pip install 'kertransfer[tensorflow]'`."
)


def import_tensorflow():
    """Returns the `tensorflow` module.

    Raises:
        ImportError: with the pip command, if TensorFlow is not installed.
    """
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(_TF_HINT) from error
    return tf


def on_tensorflow():
    """Whether the Keras backend is TensorFlow (else: `bridge.delegate`).

    Returns:
        bool.
    """
    return keras.backend.backend() == "tensorflow"


# ---------------------------------------------------------------------------
# Image files. `kertransfer.images` is the one decode path (Pillow);
# `tf_images.py` reproduces it in the SavedModel's graph.
# ---------------------------------------------------------------------------


def _check_image_size(image_size):
    if isinstance(image_size, bool) or not isinstance(
        image_size, (int, np.integer)
    ):
        raise ValueError(
            "image_size must be a positive int (pixels). "
            f"Received image_size={image_size!r}."
        )
    if image_size <= 0:
        raise ValueError(
            f"image_size must be positive. Received image_size={image_size}."
        )
    return int(image_size)


def list_images(images):
    """The image files to calibrate or validate on.

    A folder is searched recursively, as `kertransfer predict` does
    (`kertransfer.predict.find_images`); a file is used as it is; a list of
    paths is taken as given.

    Args:
        images: a folder, an image file, or a list of image paths.

    Returns:
        list of paths (str).

    Raises:
        FileNotFoundError: if `images` names no file or folder.
        ValueError: if the folder holds no image, or the list is empty.
    """
    if isinstance(images, (str, os.PathLike)):
        images = os.fspath(images)
        if not os.path.exists(images):
            raise FileNotFoundError(
                f"Expected an image folder, an image file or a list of paths. "
                f"Received {images!r}, which does not exist."
            )
        found = find_images(images)
        if found[0][1] is not None:  # a folder without images
            raise ValueError(
                f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                f"{images!r}. Pass a folder of images or a list of paths."
            )
        return [path for path, _ in found]
    paths = [os.fspath(p) for p in images]
    if not paths:
        raise ValueError("Received an empty list of images.")
    return paths


def _labels_from_folders(paths, class_names):
    """Class index from each image's parent folder name, or None."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index.get(os.path.basename(os.path.dirname(p))) for p in paths]
    return None if None in labels else np.asarray(labels, np.int64)


# ---------------------------------------------------------------------------
# Run folders and models.
# ---------------------------------------------------------------------------


def locate_model(model_or_run_dir):
    """The `.keras` file to export and the folder of its run.

    Args:
        model_or_run_dir: a run folder (holding `model.keras`) or a `.keras`
            file.

    Returns:
        `(model_path, run_dir)`; `run_dir` is the `.keras` file's folder
        when a file is given.

    Raises:
        FileNotFoundError: if it is neither.
    """
    path = os.fspath(model_or_run_dir)
    if os.path.isdir(path):
        return RunFolder(path).require(RunFolder.MODEL), path
    if os.path.isfile(path) and path.endswith(".keras"):
        return path, os.path.dirname(os.path.abspath(path))
    raise FileNotFoundError(
        "Expected a run folder holding model.keras, a .keras file or a "
        f"keras.Model. Received {path!r}."
    )


def load_model(model_or_run_dir):
    """Loads the model to export (TensorFlow backend only).

    Args:
        model_or_run_dir: a `keras.Model`, a run folder or a `.keras` file.

    Returns:
        `(model, run_dir or None, model_path or None)`; both None for a
        `keras.Model`.
    """
    if isinstance(model_or_run_dir, keras.Model):
        return model_or_run_dir, None, None
    model_path, run_dir = locate_model(model_or_run_dir)
    return load_model_file(model_path), run_dir, model_path


def resolve_meta(model, run_dir, class_names, image_size):
    """The class names, framing and metrics of an export.

    From the arguments first, then the run folder, then the model.

    The framing (`kertransfer.images.Framing`) is the run's own
    (`preprocessing.json`, else `metrics.json`), so the exports frame
    photos exactly as validation did; an explicit `image_size` keeps the
    run's `crop_pct`.

    Args:
        model: the loaded `keras.Model`.
        run_dir: its run folder, or None.
        class_names: names given by the caller, or None (the run's).
        image_size: side in pixels given by the caller, or None.

    Returns:
        `(class_names, framing, metrics)`: list of str, a
        `kertransfer.images.Framing`, the run's `metrics.json` (or `{}`).

    Raises:
        ValueError: if names or size do not match the model.
    """
    # A bare .keras file may have no metrics.json beside it.
    metrics = RunFolder(run_dir).read_metrics(required=False) if run_dir else {}
    num_classes = model.output_shape[-1]
    if class_names is None:
        class_names = metrics.get("classes")
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
        warnings.warn(
            "No class names given and no metrics.json with 'classes'; "
            f"using {class_names[:3]}... Pass class_names=[...] to embed "
            "real names.",
            ExportWarning,
            stacklevel=3,
        )
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"The model outputs {num_classes} classes but "
            f"{len(class_names)} class names were given ({class_names}). "
            "Pass one name per output unit, in output order."
        )
    model_size = model.input_shape[1]
    run_has_size = bool(run_dir) and (
        "image_size" in metrics
        or os.path.isfile(os.path.join(run_dir, images_lib.PREPROCESSING_FILE)))
    framing = run_framing(run_dir, metrics) if run_has_size else None
    if image_size is None:
        image_size = framing.image_size if framing else model_size
    if image_size is None:
        raise ValueError(
            "The model has no fixed input size and no image_size was given. "
            "Pass image_size=<pixels>."
        )
    image_size = _check_image_size(image_size)
    if model_size is not None and model_size != image_size:
        raise ValueError(
            f"image_size={image_size} does not match the model input "
            f"{model.input_shape}. Pass image_size={model_size}."
        )
    crop_pct = framing.crop_pct if framing else images_lib.DEFAULT_CROP_PCT
    return class_names, Framing(image_size, crop_pct), metrics


def resolve_thresholds(metrics, class_names, thresholds=None):
    """Per-tag thresholds of a multi-label model, float32 `(num_classes,)`, or None.

    Given `thresholds` (one float or one per class) mark the model
    multi-label; else a multi-label run's own
    (`kertransfer.predict.run_thresholds`).
    """
    from kertransfer.predict import run_thresholds

    if thresholds is None:
        metrics = dict(metrics, classes=class_names)
    else:
        metrics = {"multi_label": True, "classes": class_names, "thresholds": thresholds}
    resolved = run_thresholds(metrics)
    return None if resolved is None else resolved.astype(np.float32)


def write_thresholds(folder, thresholds):
    """Writes `thresholds.txt` (one per line, `labels.txt` order); returns its path."""
    path = os.path.join(folder, "thresholds.txt")
    with open(path, "w") as f:
        f.write("\n".join(f"{float(t):.6g}" for t in thresholds) + "\n")
    return path


def unique_variables(model):
    """The model's backing `tf.Variable`s, each once (for `tf.Module`s).

    Returns:
        list of variables, in `model.variables` order.
    """
    seen, variables = set(), []
    for variable in model.variables:
        value = getattr(variable, "value", variable)
        if id(value) not in seen:
            seen.add(id(value))
            variables.append(value)
    return variables


def validation_set(run_dir, images, labels, class_names, multi_hot=False):
    """The images and labels the exports are validated on.

    Args:
        run_dir: the run folder, or None.
        images: a folder, file or list (`list_images`), or None: the run's
            validation images (`predictions.npz`).
        labels: one integer class per image, or None: the run's, else the
            images' folder names.
        class_names: the model's classes, in output order.
        multi_hot: a multi-label model: labels are 0/1 rows
            `(n, num_classes)`, which image folders do not give.

    Returns:
        `(paths, labels or None)`.

    Raises:
        ValueError: without images and without a run's predictions, or when
            the labels do not match the images.
    """
    if images is None:
        if not run_dir or not RunFolder(run_dir).has(RunFolder.PREDICTIONS):
            raise ValueError(
                "No validation images: pass images=<folder or list of "
                "paths> (`--images`), or a run folder with predictions.npz."
            )
        data = RunFolder(run_dir).read_predictions(keys=("paths",))
        paths = [str(p) for p in data["paths"]]
        if labels is None and "targets" in data:
            labels = data["targets"]
        paths = [
            p if os.path.isabs(p) or os.path.exists(p)
            else os.path.join(run_dir, p)
            for p in paths
        ]
    else:
        paths = list_images(images)
    if labels is None and not multi_hot:
        labels = _labels_from_folders(paths, class_names)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if multi_hot and labels.shape[1:] != (len(class_names),):
            raise ValueError(
                f"A multi-label model needs 0/1 labels of shape (images, {len(class_names)}) "
                f"(one column per tag). Received shape {labels.shape}."
            )
        if labels.ndim == 2 and not multi_hot:  # one-hot targets
            labels = labels.argmax(-1)
        if len(labels) != len(paths):
            raise ValueError(
                f"Received {len(labels)} labels for {len(paths)} images. "
                "Pass one label per image."
            )
    return paths, labels
