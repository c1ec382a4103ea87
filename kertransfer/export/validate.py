"""Validation: exported files against the learner's own prediction path.

`validate` runs each exported file the way it runs in deployment (a
SavedModel through both signatures, a `.tflite` in the LiteRT interpreter,
an `.onnx` in onnxruntime: one runner per format), compares its
probabilities with `kertransfer.predict` on the same image files, times
single-image calls and checks the targets below; `format_report` renders the
report as a table.
"""

import json
import os
import time
import warnings

import keras
import numpy as np

from kertransfer.console import progress_bar
from kertransfer.export.bridge import delegate
from kertransfer.export.common import REPORT_NAME
from kertransfer.export.common import ExportWarning
from kertransfer.export.common import import_tensorflow
from kertransfer.export.common import load_model
from kertransfer.export.common import on_tensorflow
from kertransfer.export.common import resolve_meta
from kertransfer.export.common import resolve_thresholds
from kertransfer.export.common import validation_set
from kertransfer.export.report_table import format_report
from kertransfer.images import frame_images
from kertransfer.metrics import fbeta
from kertransfer.run_folder import RunFolder

# Targets checked by `validate` against the learner's own prediction path
# (`kertransfer.predict`) on the same files: top-1 agreement and the largest
# absolute probability difference per quantization; SavedModel size /
# weights; int8 .tflite size / fp32 .tflite.
AGREEMENT_TARGETS = {None: 0.995, "float16": 0.995, "dynamic": 0.99, "int8": 0.99}
MAX_PROB_DIFF_TARGETS = {None: 0.02, "float16": 0.02}
LEAN_SAVED_MODEL_RATIO = 1.1
INT8_SIZE_RATIO = 0.3


def _dir_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )


def _weights_bytes(model):
    return int(
        sum(
            np.prod(v.shape) * np.dtype(keras.backend.standardize_dtype(
                v.dtype)).itemsize
            for v in model.weights
        )
    )


def _artifact_kind(path):
    path = os.fspath(path)
    if path.endswith(".tflite"):
        return "tflite"
    if path.endswith(".onnx"):
        return "onnx"
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "saved_model"
    raise ValueError(
        f"Cannot validate {path!r}: expected a .tflite or .onnx file or a "
        "SavedModel folder (holding saved_model.pb)."
    )


def _tflite_quantization(path):
    name = os.path.basename(path)
    for quantize in ("float16", "dynamic", "int8"):
        if f"_{quantize}" in name:
            return quantize
    return None


def _median_ms(timings):
    return round(float(np.median(timings)) * 1000.0, 3) if timings else None


def _compare(row, probabilities, reference, labels, thresholds=None, tags=None):
    """Fills `row` with how `probabilities` agree with the `reference`.

    Single-label: top-1 agreement and accuracy. Multi-label (`thresholds`,
    one per class): `tags_agreement`, the fraction of images given the
    same set of tags (above their thresholds) as the reference, and `f2`
    against multi-hot `labels`. `tags`: bool `(n, num_classes)`, the tags
    the artifact itself returned (a SavedModel's, `_tag_mask`), compared
    instead of thresholding `probabilities` here.
    """
    difference = np.abs(probabilities - reference)
    row["max_abs_prob_diff"] = float(np.max(difference))
    row["mean_abs_prob_diff"] = float(np.mean(difference))
    if thresholds is None:
        row["top1_agreement"] = round(float(np.mean(
            probabilities.argmax(-1) == reference.argmax(-1))), 4)
        row["accuracy"] = None if labels is None else round(float(np.mean(
            probabilities.argmax(-1) == labels)), 4)
        return
    got = probabilities > thresholds if tags is None else tags
    row["tags_agreement"] = round(float(np.mean(np.all(got == (reference > thresholds), axis=-1))), 4)
    row["f2"] = None if labels is None else round(fbeta(probabilities, labels, threshold=thresholds), 4)


def _tag_mask(tags, class_names):
    """Space-separated tag strings (a SavedModel's `tags`) -> bool `(n, num_classes)`."""
    index = {name: i for i, name in enumerate(class_names)}
    mask = np.zeros((len(tags), len(class_names)), dtype=bool)
    for row, text in enumerate(tags):
        mask[row, [index[tag] for tag in text.decode().split()]] = True
    return mask


def _targets(quantize, agreement="top1_agreement"):
    targets = {agreement: AGREEMENT_TARGETS[quantize]}
    if quantize in MAX_PROB_DIFF_TARGETS:
        targets["max_abs_prob_diff"] = MAX_PROB_DIFF_TARGETS[quantize]
    return targets


def validate(
    model_or_run_dir,
    artifacts,
    images=None,
    labels=None,
    class_names=None,
    image_size=None,
    report_path=None,
    max_timed_images=50,
    print_fn=print,
):
    """Checks exported files against what users of the learner get.

    The reference is the learner's own prediction path on the image files:
    `kertransfer.predict.predict_probs` for a run folder (decode, resize
    and center-crop by `kertransfer.images`, then the Keras model), or the
    same framing (`kertransfer.images.frame_images`) and the Keras model
    for a bare model. Each artifact then sees the images the way it would
    in deployment:

    - SavedModel `serving_default`: the raw file bytes (the graph decodes,
      turns by EXIF, resizes and crops: what TF Serving users send);
    - SavedModel `predict_images`, `.tflite` (LiteRT interpreter,
      `num_threads=1`, as `export/mobile/litert_runner.py`) and `.onnx`:
      the crops of `kertransfer.images.frame_images`.

    Per artifact it records top-1 agreement with the reference, the max and
    mean absolute probability difference, accuracy (if labels are known),
    size on disk and the median latency of single-image calls, then checks
    the targets:

    - fp32 SavedModel (both signatures), fp32 and float16 `.tflite`, ONNX:
      >= 99.5% agreement and max |difference| <= 0.02.
    - dynamic and int8 `.tflite`: >= 99% agreement.
    - SavedModel folder <= 1.1x the weights; int8 `.tflite` <= 0.3x the
      fp32 `.tflite` (or the weights when no fp32 file is validated).
    - `serving_default` decodes every file the reference read (its
      `status` is `"ok"`); the others are listed in the row's
      `not_decoded`.

    A multi-label run (`metrics.json` `multi_label`, `thresholds`) is
    compared by its tags instead of top-1: `tags_agreement` is the
    fraction of images given the same set of tags as the reference (the
    reference's probabilities above the run's thresholds; for a SavedModel,
    the `tags` it returns itself, from its embedded thresholds), with the
    agreement targets above, and `f2` replaces `accuracy`. The report then
    has `multi_label: true` and the `thresholds`.

    Missed targets give a warning and `"passed": false`, not an error.

    Args:
        model_or_run_dir: the reference: run folder, `.keras` file or
            `keras.Model`.
        artifacts: list of paths: SavedModel version folders and `.tflite`
            files (`_float16`/`_dynamic`/`_int8` in a file name sets its
            targets).
        images: validation images: a folder (labels from sub-folder names
            matching the class names) or a list of paths. Defaults to the
            run's `predictions.npz` (`paths`, `targets`).
        labels: int class indices aligned with `images` (multi-hot rows
            `(n, num_classes)` for a multi-label model), optional.
        class_names: class names (default from `metrics.json`).
        image_size: input size in pixels (default from the run/model).
        report_path: where to write the JSON report. Defaults to
            `export_report.json` in the first artifact's parent folder.
        max_timed_images: int, single-image calls timed per artifact.
        print_fn: prints the table (`format_report`); `None` for silence.

    Returns:
        The report dict (also written to `report_path`): `classes`,
        `framing`, `reference`, `num_images`, `weights_bytes`,
        `valid_accuracy` (from `metrics.json`), `keras` (accuracy and latency
        of the reference), `artifacts` (one row per artifact) and `passed`.

    Raises:
        ValueError: if no validation images can be found or an artifact is
            neither a SavedModel nor a `.tflite`/`.onnx` file.

    Example:

    >>> report = validate("runs/ants",
    ...                   ["runs/ants/export/litert/model.tflite"])
    >>> report["artifacts"][0]["top1_agreement"]
    1.0
    """
    if isinstance(artifacts, (str, os.PathLike)):
        artifacts = [artifacts]
    artifacts = [os.path.abspath(os.fspath(a)) for a in artifacts]
    if not artifacts:
        raise ValueError("Received no artifacts to validate.")
    if report_path is None:
        report_path = os.path.join(os.path.dirname(artifacts[0]), REPORT_NAME)
    report_path = os.fspath(report_path)
    if images is not None and not isinstance(images, (str, os.PathLike)):
        images = [os.fspath(p) for p in images]
    if labels is not None:  # JSON for the subprocess: ints, or multi-hot rows
        labels = np.asarray(labels).astype(np.int64).tolist()
    if not on_tensorflow():
        report = delegate(
            "validate", model_or_run_dir, artifacts=artifacts, images=images,
            labels=labels, class_names=class_names, image_size=image_size,
            report_path=report_path, max_timed_images=max_timed_images,
        )
    else:
        report = _validate_tf(
            model_or_run_dir, artifacts, images, labels, class_names,
            image_size, report_path, max_timed_images,
        )
    if print_fn is not None:
        print_fn(format_report(report))
    return report


def _reference(model, run_dir, model_path, metrics, paths, labels, framing):
    """-> (paths, labels, probabilities, description) of the learner's path.

    Files the learner cannot read are left out (with a warning), as
    `kertransfer predict` reports them instead of predicting.
    """
    from kertransfer.predict import predict_probs

    is_run = (run_dir and model_path == RunFolder(run_dir).model_path
              and {"classes", "arch"} <= set(metrics))
    if is_run:
        found, predicted, probabilities = predict_probs(run_dir, paths)
        description = "kertransfer.predict.predict_probs (the run's prediction path)"
    else:
        found, predicted = [], []
        for path in paths:
            try:
                frame_images([path], framing)
                predicted.append(path)
                found.append((path, None))
            except (FileNotFoundError, ValueError) as error:
                found.append((path, str(error)))
        probabilities = (model.predict(frame_images(predicted, framing),
                                       batch_size=32, verbose=0)
                         if predicted else None)
        description = "kertransfer.images.frame_images + the Keras model"
    skipped = [f"{path} ({error})" for path, error in found if error]
    if skipped:
        warnings.warn(
            f"{len(skipped)} validation image(s) cannot be read and are left "
            "out: " + "; ".join(skipped[:5]), ExportWarning, stacklevel=4)
    if not predicted:
        raise ValueError(
            f"None of the {len(paths)} validation images could be read, e.g. "
            f"{skipped[:1]}. Pass readable images (`--images DIR`).")
    if labels is not None:
        index = {path: i for i, path in enumerate(paths)}
        labels = np.asarray([labels[index[p]] for p in predicted])
    return predicted, labels, np.asarray(probabilities, np.float32), description


def _validate_tf(model_or_run_dir, artifacts, images, labels, class_names,
                 image_size, report_path, max_timed_images):
    """`validate` under the TensorFlow backend."""
    tf = import_tensorflow()
    model, run_dir, model_path = load_model(model_or_run_dir)
    class_names, framing, metrics = resolve_meta(
        model, run_dir, class_names, image_size)
    thresholds = resolve_thresholds(metrics, class_names)
    multi_label = thresholds is not None
    paths, labels = validation_set(run_dir, images, labels, class_names, multi_hot=multi_label)
    paths, labels, reference, description = _reference(
        model, run_dir, model_path, metrics, paths, labels, framing)
    pixels = frame_images(paths, framing)
    timings = []
    for image in pixels[:max_timed_images]:
        start = time.perf_counter()
        model(image[None], training=False)
        timings.append(time.perf_counter() - start)
    weights_bytes = _weights_bytes(model)
    report = {
        "model": model_path,
        "arch": metrics.get("arch"),
        "classes": class_names,
        "image_size": framing.image_size,
        "framing": framing.to_dict(),
        "reference": description,
        "num_images": len(paths),
        "images": paths,
        "labels_known": labels is not None,
        "valid_accuracy": metrics.get("valid_accuracy"),
        "weights_bytes": weights_bytes,
        "keras": {
            "accuracy": None if labels is None or multi_label else round(float(np.mean(
                reference.argmax(-1) == labels)), 4),
            "median_latency_ms": _median_ms(timings[1:]),
            "size_bytes": (os.path.getsize(model_path) if model_path
                           else None),
        },
        "artifacts": [],
    }
    if multi_label:
        report["multi_label"] = True
        report["thresholds"] = [float(f"{t:.6g}") for t in thresholds]
        report["valid_f2"] = metrics.get("valid_f2")
        report["keras"]["f2"] = None if labels is None else round(
            fbeta(reference, labels, threshold=thresholds), 4)
    agreement = "tags_agreement" if multi_label else "top1_agreement"
    rows = report["artifacts"]
    for artifact in artifacts:
        kind = _artifact_kind(artifact)
        if kind == "saved_model":
            rows += _saved_model_rows(tf, artifact, paths, pixels, reference,
                                      labels, weights_bytes, max_timed_images,
                                      thresholds, class_names)
        elif kind == "onnx":
            rows += _onnx_rows(artifact, pixels, reference, labels,
                               weights_bytes, max_timed_images, thresholds)
        else:
            rows.append(_tflite_row(artifact, pixels, reference, labels,
                                    max_timed_images, thresholds))
    fp32_tflite_bytes = None
    for row in rows:
        if row["format"] == "tflite" and row["quantize"] is None:
            fp32_tflite_bytes = row["size_bytes"]
    for row in rows:
        if row["format"] == "tflite":
            base = fp32_tflite_bytes or weights_bytes
            row["size_ratio"] = round(row["size_bytes"] / base, 4)
            row["size_ratio_of"] = ("tflite:float32" if fp32_tflite_bytes
                                    else "weights")
        failures = []
        targets = row["targets"]
        if row[agreement] < targets.get(agreement, 0.0):
            failures.append(
                f"{'tags' if multi_label else 'top-1'} agreement {row[agreement]:.2%} < "
                f"{targets[agreement]:.1%}")
        if row["max_abs_prob_diff"] > targets.get("max_abs_prob_diff", np.inf):
            failures.append(
                f"max |prob difference| {row['max_abs_prob_diff']:.3f} > "
                f"{targets['max_abs_prob_diff']}")
        if row["size_ratio"] > targets.get("size_ratio", np.inf):
            failures.append(
                f"size {row['size_ratio']:.2f}x {row['size_ratio_of']} > "
                f"{targets['size_ratio']}x")
        if row.get("not_decoded"):
            failures.append(
                f"{len(row['not_decoded'])} file(s) that kertransfer.images "
                "reads were not decoded: " + "; ".join(row["not_decoded"][:3]))
        row["failures"] = failures
        row["passed"] = not failures
        if failures:
            warnings.warn(
                f"Export {row['name']} ({row['path']}) misses its targets: "
                + "; ".join(failures) + ".",
                ExportWarning,
                stacklevel=3,
            )
    report["passed"] = all(row["passed"] for row in rows)
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    report["report_path"] = os.path.abspath(report_path)
    return report


def _saved_model_rows(tf, artifact, paths, pixels, reference, labels,
                      weights_bytes, max_timed_images, thresholds=None,
                      class_names=None):
    """The rows of a SavedModel's two signatures.

    `serving_default` gets the files' bytes, `predict_images` the pixels.
    A multi-label SavedModel's own `tags` are compared (its embedded
    thresholds), not the probabilities thresholded here.
    """
    agreement = "top1_agreement" if thresholds is None else "tags_agreement"

    def tags(outputs):
        if thresholds is None:
            return None
        return _tag_mask(np.concatenate([out["tags"].numpy() for out in outputs]), class_names)

    loaded = tf.saved_model.load(artifact)
    serve = loaded.signatures["serving_default"]
    encoded = []
    for p in paths:
        with open(p, "rb") as f:
            encoded.append(f.read())
    served = [serve(image_bytes=tf.constant(encoded[i:i + 32]))
              for i in range(0, len(encoded), 32)]
    probabilities = np.concatenate(
        [out["probabilities"].numpy() for out in served])
    errors = [e.decode() for out in served
              for e in out["error"].numpy()]
    timings = []
    for data in encoded[:max_timed_images]:
        start = time.perf_counter()
        serve(image_bytes=tf.constant([data]))
        timings.append(time.perf_counter() - start)
    bytes_row = {"name": "saved_model:serving_default",
                 "format": "saved_model", "quantize": None,
                 "path": artifact,
                 "runtime": "tf.saved_model (file bytes; decode, "
                            "EXIF, resize, crop in the graph)",
                 "size_bytes": _dir_size(artifact)}
    bytes_row["size_ratio"] = round(
        bytes_row["size_bytes"] / weights_bytes, 4)
    bytes_row["size_ratio_of"] = "weights"
    _compare(bytes_row, probabilities, reference, labels, thresholds, tags(served))
    # Files the learner reads but the serving graph refuses.
    bytes_row["not_decoded"] = [
        f"{path} ({error})" for path, error in zip(paths, errors)
        if error]
    bytes_row["median_latency_ms"] = _median_ms(timings[1:])
    bytes_row["targets"] = dict(_targets(None, agreement),
                                size_ratio=LEAN_SAVED_MODEL_RATIO)

    predict = loaded.signatures["predict_images"]
    predicted = [predict(images=tf.constant(pixels[i:i + 32]))
                 for i in range(0, len(pixels), 32)]
    probabilities = np.concatenate(
        [out["probabilities"].numpy() for out in predicted])
    timings = []
    for image in pixels[:max_timed_images]:
        start = time.perf_counter()
        predict(images=tf.constant(image[None]))
        timings.append(time.perf_counter() - start)
    row = dict(bytes_row, name="saved_model:predict_images",
               runtime="tf.saved_model (framed pixels)",
               targets=_targets(None, agreement))
    del row["not_decoded"]
    _compare(row, probabilities, reference, labels, thresholds, tags(predicted))
    row["median_latency_ms"] = _median_ms(timings[1:])
    return [bytes_row, row]


def _onnx_rows(artifact, pixels, reference, labels, weights_bytes,
               max_timed_images, thresholds=None):
    """An `.onnx` file's row in onnxruntime (1 thread); none without it."""
    try:
        import onnxruntime
    except ImportError:
        warnings.warn(
            f"Not validating {artifact}: onnxruntime is not "
            "installed (`pip install onnxruntime`).",
            ExportWarning,
            stacklevel=4,
        )
        return []
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        artifact, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    probabilities, timings = [], []
    bar = progress_bar(len(pixels), unit_name="image")  # within progress_bars()
    for image in pixels:
        start = time.perf_counter()
        probabilities.append(session.run(
            None, {input_name: image[None]})[0])
        timings.append(time.perf_counter() - start)
        bar.add(1)
    row = {"name": "onnx:float32", "format": "onnx",
           "quantize": None, "path": artifact,
           "runtime": f"onnxruntime {onnxruntime.__version__} "
                      "(1 thread)",
           "size_bytes": os.path.getsize(artifact),
           "size_ratio": round(os.path.getsize(artifact)
                               / weights_bytes, 4),
           "size_ratio_of": "weights"}
    _compare(row, np.concatenate(probabilities).astype(np.float32),
             reference, labels, thresholds)
    row["median_latency_ms"] = _median_ms(
        timings[1:max_timed_images + 1])
    row["targets"] = _targets(None, "top1_agreement" if thresholds is None else "tags_agreement")
    return [row]


def _interpreter(path):
    """LiteRT interpreter (ai-edge-litert), else tf.lite with a warning."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        kind = "ai_edge_litert"
    except ImportError:
        warnings.warn(
            "ai-edge-litert is not installed; timing with the deprecated "
            "tf.lite.Interpreter instead. `pip install ai-edge-litert` for "
            "the runtime that ships to devices.",
            ExportWarning,
            stacklevel=4,
        )
        Interpreter = import_tensorflow().lite.Interpreter
        kind = "tf.lite"
    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter, kind


def _run_interpreter(interpreter, image):
    """One `(1, h, w, 3)` float image -> float32 probabilities `(1, n)`."""
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    if input_detail["dtype"] in (np.int8, np.uint8):
        scale, zero_point = input_detail["quantization"]
        info = np.iinfo(input_detail["dtype"])
        image = np.clip(np.round(image / scale + zero_point), info.min,
                        info.max)
    interpreter.set_tensor(input_detail["index"],
                           image.astype(input_detail["dtype"]))
    interpreter.invoke()
    output = interpreter.get_tensor(output_detail["index"])
    if output_detail["dtype"] in (np.int8, np.uint8):
        scale, zero_point = output_detail["quantization"]
        output = (output.astype(np.float32) - zero_point) * scale
    return output.astype(np.float32)


def _tflite_row(artifact, pixels, reference, labels, max_timed_images, thresholds=None):
    """A `.tflite` file's row in the LiteRT interpreter (1 thread)."""
    quantize = _tflite_quantization(artifact)
    interpreter, runtime = _interpreter(artifact)
    probabilities, timings = [], []
    bar = progress_bar(len(pixels), unit_name="image")  # within progress_bars()
    for image in pixels:
        start = time.perf_counter()
        probabilities.append(_run_interpreter(interpreter,
                                              image[None]))
        timings.append(time.perf_counter() - start)
        bar.add(1)
    probabilities = np.concatenate(probabilities)
    row = {"name": f"tflite:{quantize or 'float32'}",
           "format": "tflite", "quantize": quantize,
           "path": artifact, "runtime": f"{runtime} (1 thread)",
           "size_bytes": os.path.getsize(artifact)}
    _compare(row, probabilities, reference, labels, thresholds)
    row["median_latency_ms"] = _median_ms(
        timings[1:max_timed_images + 1])
    row["targets"] = _targets(quantize, "top1_agreement" if thresholds is None else "tags_agreement")
    if quantize == "int8":
        row["targets"]["size_ratio"] = INT8_SIZE_RATIO
    return row
