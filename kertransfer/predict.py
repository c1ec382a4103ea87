"""Predictions of a trained run folder on new images (`kertransfer predict`).

A run folder written by `kertransfer train` holds everything needed to
classify new photos: `model.keras` (preprocessing included: it takes raw
pixels) and `metrics.json` (`classes`, `image_size`, `arch`). Images get the
training run's validation transforms (short side resized to `image_size /
crop_pct`, center crop), and with `tta=True` the same test-time augmentation
as `ConvLearner.TTA` (`kertransfer.tta.tta_probs`). Files that cannot be
read are reported per file instead of stopping the batch.
"""

import logging
import os

import numpy as np
import pandas as pd

from kertransfer import images
from kertransfer.images import IMAGE_EXTENSIONS
from kertransfer.run_folder import RunFolder

__all__ = ["find_images", "load_run", "predict_images", "predict_probs", "run_framing", "run_thresholds"]

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 3


def find_images(inputs):
    """Expands files and folders into the image files to predict.

    Folders are searched recursively by `kertransfer.images.find_images`
    (hidden files and folders skipped, extensions in `IMAGE_EXTENSIONS`,
    sorted). Files named explicitly are kept whatever their extension (a
    non-image is reported when decoding fails).

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
            files = images.find_images(item)
            if files:
                found += [(path, None) for path in files]
            else:
                found.append(
                    (item, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
                )
        else:
            found.append((item, "file not found"))
    return found


def run_framing(run_dir, metrics):
    """The `Framing` a run was validated with.

    Read from the run folder's `preprocessing.json` (written by `kertransfer
    train`); runs written before it existed fall back to `metrics.json`'s
    `image_size` (and `crop_pct` if present, else the default 0.875).

    Raises:
        ValueError: if neither file gives an image size.
    """
    path = os.path.join(os.fspath(run_dir), images.PREPROCESSING_FILE)
    if os.path.isfile(path):
        return images.Framing.load(path)
    if "image_size" not in metrics:
        raise ValueError(
            f"The run folder {run_dir!r} has no {images.PREPROCESSING_FILE} and its "
            "metrics.json has no 'image_size'; pass a folder written by `kertransfer train`."
        )
    return images.Framing(
        int(metrics["image_size"]), float(metrics.get("crop_pct", images.DEFAULT_CROP_PCT))
    )


def run_thresholds(metrics):
    """The per-tag thresholds of a multi-label run, or None for a single-label one.

    A multi-label run (`metrics.json` `"multi_label": true`, written by
    `kertransfer train --csv`) predicts a tag when its probability is above
    the tag's threshold: `metrics.json` `"thresholds"`, chosen on the
    validation set, else 0.5.

    Args:
        metrics: the run's `metrics.json` dict (with `classes`).

    Returns:
        None, or float64 array `(num_classes,)`.

    Raises:
        ValueError: if `thresholds` does not hold one number in [0, 1] per
            class.
    """
    if not metrics.get("multi_label"):
        return None
    num_tags = len(metrics["classes"])
    thresholds = np.asarray(metrics.get("thresholds", 0.5), dtype=np.float64)
    thresholds = np.broadcast_to(thresholds, (num_tags,)) if thresholds.ndim == 0 else thresholds
    if thresholds.shape != (num_tags,) or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise ValueError(
            f"The thresholds of a multi-label run (metrics.json 'thresholds') must be one number "
            f"in [0, 1], or one per tag ({num_tags}: {metrics['classes']}). Received "
            f"thresholds={metrics.get('thresholds')!r}."
        )
    return np.array(thresholds, dtype=np.float64)


_RUN_KEYS = ("classes", "image_size", "arch")


def _read_metrics(run_dir):
    """`metrics.json` of a run folder that has a model (`RunFolder`'s policy)."""
    run = RunFolder(run_dir)
    run.require(RunFolder.MODEL)
    return run.read_metrics(keys=_RUN_KEYS)


def load_run(run_dir):
    """Loads the model and metadata of a run folder.

    `model.keras` holds Keras's own layers (`kertransfer.portable`), or
    kertransfer's in run folders of earlier versions, which are registered
    before loading (`kertransfer.run_folder.load_model_file`).

    Args:
        run_dir: a folder written by `kertransfer train`, holding
            `model.keras` and `metrics.json`.

    Returns:
        `(model, metrics)`: the `keras.Model` (raw pixels `(batch, height,
        width, 3)` in `[0, 255]` -> probabilities `(batch, num_classes)`) and
        the `metrics.json` dict (`classes`, `image_size`, `arch`, ...).

    Raises:
        FileNotFoundError: if the folder, `model.keras` or `metrics.json` is
            missing (`kertransfer.run_folder.MissingRunFileError`).
        ValueError: if `metrics.json` is unreadable, newer than this
            kertransfer or lacks a key (`RunFolderError`), or the model's
            outputs do not match its classes, or `model.keras` cannot be
            loaded.
    """
    run = RunFolder(run_dir)
    metrics = _read_metrics(run_dir)
    model = run.load_model()
    num_outputs = model.output_shape[-1]
    if num_outputs != len(metrics["classes"]):
        raise ValueError(
            f"{run.model_path} outputs {num_outputs} classes but metrics.json lists "
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


def _frame(found, predicted, columns, prediction):
    """One row per input item, in input order.

    The i-th predicted file's row holds `prediction(i)` (a dict of its
    columns); an item not predicted holds its error.
    """
    row_of = {}
    for i, path in enumerate(predicted):
        row_of.setdefault(path, []).append({"file": path, "status": "ok", "error": "", **prediction(i)})
    rows = []
    for path, error in found:
        if error is None and row_of.get(path):
            rows.append(row_of[path].pop(0))
        else:
            rows.append({"file": path, "status": "error", "error": error})
    return pd.DataFrame(rows, columns=columns)


def _result_frame(found, predicted, probs, classes, top_k):
    """The top-k classes of each input item, in input order."""
    columns = ["file", "status"]
    for rank in range(1, top_k + 1):
        columns += [f"class_{rank}", f"prob_{rank}"]
    columns.append("error")
    order = None if probs is None else np.argsort(-probs, axis=1, kind="stable")[:, :top_k]

    def prediction(i):
        row = {}
        for rank, c in enumerate(order[i], start=1):
            row[f"class_{rank}"] = classes[c]
            row[f"prob_{rank}"] = float(probs[i, c])
        return row

    return _frame(found, predicted, columns, prediction)


def _tags_frame(found, predicted, probs, classes, thresholds):
    """The tags above their thresholds of each input item, most probable first."""

    def prediction(i):
        above = [c for c in np.argsort(-probs[i], kind="stable") if probs[i, c] > thresholds[c]]
        return {
            "tags": " ".join(classes[c] for c in above),
            "probs": " ".join(f"{probs[i, c]:.4f}" for c in above),
        }

    return _frame(found, predicted, ["file", "status", "tags", "probs", "error"], prediction)


def _check_count(name, value, minimum):
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received {name}={value!r}.")
    return int(value)


def predict_probs(run_dir, paths, tta=False, n_aug=4, seed=0, batch_size=32):
    """Class probabilities of image files under a trained run's model.

    The prediction path of `predict_images`, without the table: each file is
    decoded and framed like the run's validation images
    (`kertransfer.images`, the run's `Framing`), and with `tta=True`
    averaged over augmented copies as `ConvLearner.TTA` does. Crops and
    augmentation are seeded per image, so the result does not depend on
    `batch_size`.

    Args:
        run_dir: folder written by `kertransfer train`.
        paths: an image file, a folder (searched recursively), or a sequence
            of them.
        tta: blend in `n_aug` augmented copies too, as the run's TTA did
            (its `metrics.json` `tta_beta`: fast.ai v2's weighting, or the
            plain mean when absent).
        n_aug: augmented copies per image with `tta=True`.
        seed: seed of the TTA augmentation.
        batch_size: images per model call.

    Returns:
        `(found, predicted, probs)`: `found` is `[(path, error)]` for every
        input in order (`error` None when predicted), `predicted` the list
        of predicted paths and `probs` float32 `(len(predicted),
        num_classes)` (None when nothing could be predicted).

    Raises:
        FileNotFoundError, ValueError: as `predict_images`.
    """
    from kertransfer.data import ImageClassifierData
    from kertransfer.transforms import tfms_from_model

    metrics = _read_metrics(run_dir)
    classes = [str(c) for c in metrics["classes"]]
    n_aug = _check_count("n_aug", n_aug, 0)
    batch_size = _check_count("batch_size", batch_size, 1)
    framing = run_framing(run_dir, metrics)
    # The main job's transforms (`tfms_from_model` defaults): center crop,
    # and for TTA side-on augmentation with max_zoom=1.1. The backbone
    # itself lives in model.keras, so its name need not be registered here.
    tfms = tfms_from_model(None, framing.image_size, crop_pct=framing.crop_pct)
    found = find_images(paths)
    to_decode = [path for path, error in found if error is None]
    data = ImageClassifierData.from_files(to_decode, classes, tfms, batch_size=batch_size)
    errors = dict(data.skipped)
    found = [(path, error or errors.get(path)) for path, error in found]
    for path, error in found:
        if error is not None:
            logger.info("Cannot predict %s: %s", path, error)
    if not data.test_paths:
        return found, [], None
    model, metrics = load_run(run_dir)
    from kertransfer.tta import tta_probs

    n_aug = n_aug if tta else 0
    # The run's own blend of the copies (`metrics.json` `tta_beta`; runs of
    # earlier versions have none: the plain mean).
    beta = metrics.get("tta_beta") if n_aug else None
    probs = tta_probs(model, data, n_aug, split="test", seed=seed, beta=beta)
    return found, data.test_paths, probs


def predict_images(
    run_dir, paths, tta=False, top_k=None, n_aug=4, seed=0, batch_size=32
):
    """Top-k classes of images (files or folders) under a trained run's model.

    Each image is decoded by `kertransfer.images` (EXIF orientation applied,
    alpha onto white), its short side resized to `round(image_size /
    crop_pct)` pixels and center-cropped to `image_size`: the run's
    validation framing (`preprocessing.json`), as in training. With
    `tta=True` the probabilities blend the center crop with `n_aug`
    augmented copies as the run's own TTA did (`ConvLearner.TTA` with the
    run's `tta_beta`: fast.ai v2's weighting, or v0.7's plain mean for runs
    without one); copies are seeded per image, so any `batch_size` gives the
    same result. Unreadable files (missing, corrupt, not an image) get a
    row with `status="error"` and the reason; the others are still
    predicted.

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

    A multi-label run (`kertransfer train --csv`) lists, instead of the
    top-k classes, every tag whose probability is above the run's threshold
    for it (`run_thresholds`).

    Returns:
        `pandas.DataFrame`, one row per file in input order (folders expanded
        in sorted order), columns `file`, `status` (`"ok"` or `"error"`),
        `class_1`, `prob_1`, ..., `class_k`, `prob_k` (probabilities in
        `[0, 1]`; empty on error rows) and `error` (the reason, or `""`).
        For a multi-label run, `file`, `status`, `tags` (the tags above
        their thresholds, space-separated as in Kaggle Planet's CSVs, most
        probable first; `""` for none), `probs` (their probabilities, in
        the same order) and `error`.

    Raises:
        FileNotFoundError: if `run_dir`, its `model.keras` or its
            `metrics.json` is missing.
        ValueError: on `top_k` larger than the number of classes or not a
            positive integer, or given for a multi-label run, a negative `n_aug`, a non-positive
            `batch_size`, or a run folder whose files do not fit together.

    Example:

    ```python
    frame = predict_images("runs/dogscats", ["photos/", "rex.jpg"], tta=True)
    frame[["file", "class_1", "prob_1"]]
    ```
    """
    metrics = _read_metrics(run_dir)
    classes = [str(c) for c in metrics["classes"]]
    thresholds = run_thresholds(metrics)
    if thresholds is not None and top_k is not None:
        raise ValueError(
            f"top_k={top_k} (--top-k) ranks the classes of a single-label run; {run_dir} is a "
            "multi-label run, which lists every tag above its threshold. Leave top_k out."
        )
    top_k = None if thresholds is not None else _check_top_k(top_k, classes)
    found, predicted, probs = predict_probs(
        run_dir, paths, tta=tta, n_aug=n_aug, seed=seed, batch_size=batch_size
    )
    if thresholds is not None:
        return _tags_frame(found, predicted, probs, classes, thresholds)
    return _result_frame(found, predicted, probs, classes, top_k)
