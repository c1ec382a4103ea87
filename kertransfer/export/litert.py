"""LiteRT (`.tflite`) flatbuffers: float32, float16, dynamic-range, int8.

Sources: https://ai.google.dev/edge/litert/models/convert_tf and
https://ai.google.dev/edge/litert/models/post_training_quantization
"""

import logging
import os
import shutil
import tempfile
import warnings

import numpy as np

from kertransfer import images as images_lib
from kertransfer.export.bridge import delegate
from kertransfer.export.common import QUANTIZATIONS
from kertransfer.export.common import ExportWarning
from kertransfer.export.common import import_tensorflow
from kertransfer.export.common import list_images
from kertransfer.export.common import load_model
from kertransfer.export.common import on_tensorflow
from kertransfer.export.common import resolve_meta
from kertransfer.export.common import resolve_thresholds
from kertransfer.export.common import unique_variables
from kertransfer.export.common import validation_set
from kertransfer.export.common import write_thresholds
from kertransfer.images import frame_images
from kertransfer.run_folder import RunFolder

logger = logging.getLogger(__name__)


def _representative_paths(representative_images, run_dir, metrics):
    """Calibration images: given, else the run's training data."""
    if representative_images is not None:
        return list_images(representative_images)
    for key in ("train_dir", "data_dir"):
        folder = metrics.get(key)
        if folder and key == "data_dir":
            folder = os.path.join(folder, "train")
        if folder and os.path.isdir(folder):
            return list_images(folder)
    if run_dir and RunFolder(run_dir).has(RunFolder.PREDICTIONS):
        warnings.warn(
            "int8 calibration fell back to the validation images listed in "
            "predictions.npz (no representative_images given and no "
            "metrics.json 'train_dir'/'data_dir'). Pass "
            "representative_images=<training folder> "
            "(`--representative-images`) to calibrate on training images.",
            ExportWarning,
            stacklevel=3,
        )
        return validation_set(run_dir, None, None, [])[0]
    raise ValueError(
        "int8 quantization needs representative images to calibrate "
        "activation ranges. Pass representative_images=<a folder or list "
        "of training images> (`--representative-images DIR`)."
    )


def tflite(
    model_or_run_dir,
    path,
    quantize=None,
    representative_images=None,
    num_calibration_images=100,
    class_names=None,
    image_size=None,
    seed=0,
    thresholds=None,
):
    """Converts a model to a LiteRT (`.tflite`) flatbuffer, with labels.txt.

    The model (raw pixels in, probabilities out) is first saved as a plain
    SavedModel with one fixed-size signature, then converted with
    `tf.lite.TFLiteConverter.from_saved_model`. The `.tflite` takes float32
    `(1, image_size, image_size, 3)` RGB pixels in `[0, 255]`, framed on
    the device as in validation, and returns float32 probabilities
    `(1, num_classes)`. Beside it go `labels.txt` (one name per line, output
    order), `preprocessing.json` (the run's `kertransfer.images.Framing`:
    image size, crop fraction, resize) and `kertransfer_images.py` (a copy
    of `kertransfer.images`, which `export/mobile/litert_runner.py` uses to
    frame photos exactly as validation did). A multi-label model's
    probabilities are per tag (independent sigmoids); its thresholds go to
    `thresholds.txt` (one per line, in `labels.txt` order), and a tag is
    present when its probability is above its threshold.

    Quantization (https://ai.google.dev/edge/litert/models/
    post_training_quantization):

    - `None`: float32.
    - `"float16"`: float16 weights (about half the size), float compute.
    - `"dynamic"`: int8 weights, activations quantized on the fly (about a
      quarter of the size).
    - `"int8"`: full-integer: int8 weights and activations, calibrated on
      `representative_images` (training images, framed like validation
      images by `kertransfer.images.frame_images`; unreadable ones skipped
      with a warning); only the float32 input and output are
      (de)quantized. Runs on integer-only accelerators (Edge TPU, NPUs).

    Args:
        model_or_run_dir: a run folder, a `.keras` file or a `keras.Model`.
        path: output `.tflite` file.
        quantize: one of `None`, `"float16"`, `"dynamic"`, `"int8"`.
        representative_images: for `"int8"`: a folder (searched
            recursively) or a list of image paths. Defaults to
            `metrics.json["train_dir"]` or `metrics.json["data_dir"]/train`,
            else the validation images with a warning.
        num_calibration_images: int, how many images (sampled with `seed`)
            calibrate `"int8"`; the converter docs suggest 100-500.
        class_names: class names in output order, for `labels.txt`.
        image_size: input size in pixels (default: from the run/model).
        seed: int, seed of the calibration sample.
        thresholds: for a multi-label model, one threshold for all tags
            or one per tag, for `thresholds.txt`. Defaults to
            `metrics.json`'s for a multi-label run.

    Returns:
        The path of the `.tflite` file.

    Raises:
        ValueError: on an unknown `quantize`, a path not ending in
            `.tflite`, or `"int8"` without any calibration images.
        ImportError: if TensorFlow is not installed.

    Example:

    >>> tflite("runs/ants", "runs/ants/export/litert/model_int8.tflite",
    ...        quantize="int8", representative_images="data/train")
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"quantize must be one of {QUANTIZATIONS}. "
            f"Received quantize={quantize!r}."
        )
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(
            f"path must end with '.tflite'. Received path={path!r}."
        )
    if representative_images is not None and not isinstance(
            representative_images, (str, os.PathLike)):
        representative_images = [os.fspath(p) for p in representative_images]
    if not on_tensorflow():
        return delegate(
            "tflite", model_or_run_dir, path=path, quantize=quantize,
            representative_images=representative_images,
            num_calibration_images=num_calibration_images,
            class_names=class_names, image_size=image_size, seed=seed,
            thresholds=thresholds,
        )
    tf = import_tensorflow()
    model, run_dir, _ = load_model(model_or_run_dir)
    class_names, framing, metrics = resolve_meta(
        model, run_dir, class_names, image_size)
    image_size = framing.image_size
    thresholds = resolve_thresholds(metrics, class_names, thresholds)

    with tempfile.TemporaryDirectory(prefix="kertransfer-litert-") as tmp:
        module = tf.Module()
        module.model_variables = unique_variables(model)

        @tf.function(input_signature=[tf.TensorSpec(
            [1, image_size, image_size, 3], tf.float32, name="images")])
        def serve(images):
            return {"probabilities": tf.cast(model(images, training=False),
                                             tf.float32)}

        tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            paths = _representative_paths(
                representative_images, run_dir, metrics)
            rng = np.random.default_rng(seed)
            if len(paths) > num_calibration_images:
                picks = rng.choice(len(paths), num_calibration_images,
                                   replace=False)
                paths = [paths[i] for i in sorted(picks)]

            def representative_dataset():
                unreadable = []
                for image_path in paths:
                    try:
                        yield [frame_images([image_path], framing)]
                    except (FileNotFoundError, ValueError) as error:
                        unreadable.append(f"{image_path} ({error})")
                if unreadable:
                    warnings.warn(
                        f"int8 calibration skipped {len(unreadable)} "
                        "unreadable image(s): " + "; ".join(unreadable[:5]),
                        ExportWarning, stacklevel=2)

            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        flatbuffer = converter.convert()

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    folder = os.path.dirname(os.path.abspath(path))
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("\n".join(class_names) + "\n")
    if thresholds is not None:
        write_thresholds(folder, thresholds)
    elif os.path.exists(os.path.join(folder, "thresholds.txt")):
        os.remove(os.path.join(folder, "thresholds.txt"))  # an earlier multi-label export's
    framing.save(folder)
    # The framing code itself, for `export/mobile/litert_runner.py` on a
    # device without kertransfer: the same file, NumPy and Pillow only.
    shutil.copyfile(images_lib.__file__,
                    os.path.join(folder, "kertransfer_images.py"))
    logger.info("Wrote LiteRT model %s (%d bytes)", path, len(flatbuffer))
    return path
