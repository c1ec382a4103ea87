"""Predictions of a trained run folder on new images (`kertransfer predict`).

A run folder written by `kertransfer train` holds everything needed to
classify new photos: `model.keras` (preprocessing included: it takes raw
pixels) and `metrics.json` (`classes`, `image_size`, `arch`). Images get the
training run's validation transforms (short side resized to `image_size /
crop_pct`, center crop), and with `tta=True` the same test-time augmentation
as `ConvLearner.TTA` (`kertransfer.tta.tta_probs`). Files that cannot be
read are reported per file instead of stopping the batch.
"""

import json
import logging
import os

import numpy as np
import pandas as pd

__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_run", "predict_images"]

logger = logging.getLogger(__name__)

# Searched for in folders; files named explicitly are tried whatever their
# extension. Same list as `keras.utils.image_dataset_from_directory`.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

DEFAULT_TOP_K = 3


def find_images(inputs):
    """Expands files and folders into the image files to predict.

    Folders are searched recursively (hidden files and folders skipped) for
    files with an extension in `IMAGE_EXTENSIONS`, in sorted order. Files
    named explicitly are kept whatever their extension (a non-image is
    reported when decoding fails).

    Args:
        inputs: a path, or a sequence of file and folder paths.

    Returns:
        list of `(path, error)` in input order: `error` is None for a file to
        predict, else why there is nothing to predict (a missing path, a
        folder without images).

    Example:

    >>> find_images(["data/dogscats/valid/cats", "nope.jpg"])[-1]
    ('nope.jpg', 'file not found')
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isfile(item):
            found.append((item, None))
        elif os.path.isdir(item):
            files = []
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [
                    os.path.join(root, name)
                    for name in names
                    if not name.startswith(".")
                    and name.lower().endswith(IMAGE_EXTENSIONS)
                ]
            if files:
                found += [(path, None) for path in sorted(files)]
            else:
                found.append(
                    (item, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
                )
        else:
            found.append((item, "file not found"))
    return found


def _read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No metrics.json in the run folder {run_dir!r}; it holds the class "
            "names and image size. Pass a folder written by `kertransfer train`."
        )
    with open(path) as f:
        metrics = json.load(f)
    missing = [key for key in ("classes", "image_size", "arch") if key not in metrics]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}; expected the keys 'classes', 'image_size' "
            "and 'arch' that `kertransfer train` writes."
        )
    return metrics


def _check_run_dir(run_dir):
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(
            f"Run folder not found: {run_dir!r}. Pass a folder written by "
            "`kertransfer train` (it holds model.keras and metrics.json)."
        )
    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.isfile(model_path):
        raise FileNotFoundError(
            f"No model.keras in the run folder {run_dir!r}. Pass a folder "
            "written by `kertransfer train`, or save a learner there with "
            "`learn.save(os.path.join(run_dir, 'model.keras'))`."
        )
    return run_dir, model_path


def load_run(run_dir):
    """Loads the model and metadata of a run folder.

    The custom layers of kertransfer (`kertransfer.layers`) are registered
    before loading, so the `.keras` file needs no `custom_objects`.

    Args:
        run_dir: a folder written by `kertransfer train`, holding
            `model.keras` and `metrics.json`.

    Returns:
        `(model, metrics)`: the `keras.Model` (raw pixels `(batch, height,
        width, 3)` in `[0, 255]` -> probabilities `(batch, num_classes)`) and
        the `metrics.json` dict (`classes`, `image_size`, `arch`, ...).

    Raises:
        FileNotFoundError: if the folder, `model.keras` or `metrics.json` is
            missing.
        ValueError: if `metrics.json` lacks a key, or the model's outputs do
            not match its classes, or `model.keras` cannot be loaded.
    """
    run_dir, model_path = _check_run_dir(run_dir)
    metrics = _read_metrics(run_dir)
    import keras

    import kertransfer.layers  # noqa: F401 (registers the custom layers)

    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as e:  # Keras raises many types on a bad file.
        raise ValueError(
            f"Could not load {model_path}: {type(e).__name__}: {e}"
        ) from e
    num_outputs = model.output_shape[-1]
    if num_outputs != len(metrics["classes"]):
        raise ValueError(
            f"{model_path} outputs {num_outputs} classes but metrics.json lists "
            f"{len(metrics['classes'])} ({metrics['classes']}). Was the model "
            "replaced by one from another run?"
        )
    return model, metrics


def _check_top_k(top_k, classes):
    if top_k is None:
        return min(DEFAULT_TOP_K, len(classes))
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be a positive integer. Received top_k={top_k!r}.")
    if top_k > len(classes):
        raise ValueError(
            f"top_k={top_k} is larger than the number of classes of this model "
            f"({len(classes)}: {classes}). Use top_k <= {len(classes)}."
        )
    return int(top_k)


def _result_frame(found, predicted, probs, classes, top_k):
    """One row per input item, in input order."""
    columns = ["file", "status"]
    for rank in range(1, top_k + 1):
        columns += [f"class_{rank}", f"prob_{rank}"]
    columns.append("error")
    row_of = {}
    if probs is not None:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        for i, path in enumerate(predicted):
            row = {"file": path, "status": "ok", "error": ""}
            for rank, c in enumerate(order[i], start=1):
                row[f"class_{rank}"] = classes[c]
                row[f"prob_{rank}"] = float(probs[i, c])
            row_of.setdefault(path, []).append(row)
    rows = []
    for path, error in found:
        if error is None and row_of.get(path):
            rows.append(row_of[path].pop(0))
        else:
            rows.append({"file": path, "status": "error", "error": error})
    return pd.DataFrame(rows, columns=columns)


def predict_images(
    run_dir, paths, tta=False, top_k=None, n_aug=4, seed=0, batch_size=32
):
    """Top-k classes of images (files or folders) under a trained run's model.

    Each image is decoded with EXIF orientation applied, its short side
    resized to `round(image_size / crop_pct)` pixels and center-cropped to
    `image_size` (the validation transforms of `tfms_from_model`, as in
    training). With `tta=True` the probabilities are the mean over the
    center crop and `n_aug` augmented copies, as in `ConvLearner.TTA`
    (fast.ai v0.7 `learn.TTA`). Unreadable files (missing, corrupt, not an
    image) get a row with `status="error"` and the reason; the others are
    still predicted.

    Args:
        run_dir: folder written by `kertransfer train` (`model.keras`,
            `metrics.json` with `classes`, `image_size`, `arch`).
        paths: an image file, a folder (searched recursively for
            `IMAGE_EXTENSIONS`), or a sequence of them.
        tta: average over `n_aug` augmented copies too.
        top_k: classes listed per image, most probable first; None: 3, or
            the number of classes when fewer.
        n_aug: augmented copies per image with `tta=True`.
        seed: seed of the TTA augmentation (equal seeds, equal results).
        batch_size: images per model call.

    Returns:
        `pandas.DataFrame`, one row per file in input order (folders expanded
        in sorted order), columns `file`, `status` (`"ok"` or `"error"`),
        `class_1`, `prob_1`, ..., `class_k`, `prob_k` (probabilities in
        `[0, 1]`; empty on error rows) and `error` (the reason, or `""`).

    Raises:
        FileNotFoundError: if `run_dir`, its `model.keras` or its
            `metrics.json` is missing.
        ValueError: on `top_k` larger than the number of classes or not a
            positive integer, a negative `n_aug`, a non-positive
            `batch_size`, or a run folder whose files do not fit together.

    Example:

    ```python
    frame = predict_images("runs/dogscats", ["photos/", "rex.jpg"], tta=True)
    frame[["file", "class_1", "prob_1"]]
    ```
    """
    from kertransfer.data import ImageClassifierData
    from kertransfer.data import _decode_split
    from kertransfer.transforms import tfms_from_model

    run_dir, _ = _check_run_dir(run_dir)
    metrics = _read_metrics(run_dir)
    classes = [str(c) for c in metrics["classes"]]
    top_k = _check_top_k(top_k, classes)
    if isinstance(n_aug, bool) or int(n_aug) != n_aug or n_aug < 0:
        raise ValueError(f"n_aug must be an integer >= 0. Received n_aug={n_aug!r}.")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer. Received batch_size={batch_size!r}."
        )
    try:
        tfms = tfms_from_model(metrics["arch"], int(metrics["image_size"]))
    except ValueError as e:
        raise ValueError(
            f"{os.path.join(run_dir, 'metrics.json')} names arch="
            f"{metrics['arch']!r}, which is not a registered backbone in this "
            "Python process (a custom backbone: call "
            "kertransfer.backbones.register_backbone(...) first, then "
            f"predict_images). {e}"
        ) from e
    found = find_images(paths)
    to_decode = [path for path, error in found if error is None]
    split, skipped = _decode_split(
        to_decode, None, tfms[1].decode_size, os.cpu_count() or 1
    )
    errors = dict(skipped)
    found = [(path, error or errors.get(path)) for path, error in found]
    for path, error in found:
        if error is not None:
            logger.info("Cannot predict %s: %s", path, error)
    probs = None
    if len(split):
        model, metrics = load_run(run_dir)
        data = ImageClassifierData(
            path=run_dir,
            classes=classes,
            splits={"test": split},
            tfms=tfms,
            batch_size=batch_size,
            skipped=skipped,
        )
        from kertransfer.tta import tta_probs

        probs = tta_probs(model, data, n_aug if tta else 0, split="test", seed=seed)
    return _result_frame(found, split.paths, probs, classes, top_k)
