"""Deployment exports: TF Serving SavedModel, LiteRT flatbuffers, a report.

A trained run folder (`model.keras`, `metrics.json`, `predictions.npz`)
becomes:

```
OUT/
  serving/NAME/VERSION/     TF Serving layout (saved_model.pb, variables/)
  litert/model.tflite       fp32, plus model_float16/_dynamic/_int8.tflite
  litert/labels.txt         one class name per line, output order
  export_report.json        agreement, accuracy, size and latency per file
```

Everything here needs TensorFlow (SavedModel and the LiteRT converter are
TF-only), but nothing imports it at module level. When the current Keras
backend is JAX or torch, each public function re-runs itself in a
subprocess with `KERAS_BACKEND=tensorflow` (`python -m kertransfer.export`),
which loads the `.keras` file with `compile=False`: a model trained under
any backend exports the same way.

Sources:
- TF Serving REST API: https://www.tensorflow.org/tfx/serving/api_rest
- SavedModel signatures: https://www.tensorflow.org/guide/saved_model
- LiteRT conversion and quantization:
  https://ai.google.dev/edge/litert/models/convert_tf and
  https://ai.google.dev/edge/litert/models/post_training_quantization
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import keras
import numpy as np

import kertransfer
from kertransfer import images as images_lib
from kertransfer.images import IMAGE_EXTENSIONS
from kertransfer.images import Framing
from kertransfer.images import find_images
from kertransfer.images import frame_images
from kertransfer.run_folder import load_model_file

__all__ = [
    "ExportWarning",
    "QUANTIZATIONS",
    "export",
    "format_report",
    "onnx",
    "saved_model",
    "tflite",
    "validate",
]

logger = logging.getLogger(__name__)


class ExportWarning(UserWarning):
    """A missed export target, or a fallback worth knowing about."""


QUANTIZATIONS = (None, "float16", "dynamic", "int8")
REPORT_NAME = "export_report.json"
TOP_K = 5
# Targets checked by `validate` against the learner's own prediction path
# (`kertransfer.predict`) on the same files: top-1 agreement and the largest
# absolute probability difference per quantization; SavedModel size /
# weights; int8 .tflite size / fp32 .tflite.
AGREEMENT_TARGETS = {None: 0.995, "float16": 0.995, "dynamic": 0.99, "int8": 0.99}
MAX_PROB_DIFF_TARGETS = {None: 0.02, "float16": 0.02}
LEAN_SAVED_MODEL_RATIO = 1.1
INT8_SIZE_RATIO = 0.3

_TF_HINT = (
    "Exports need TensorFlow installed (any Keras backend may be active). "
    "Install it with `pip install 'kertransfer[tensorflow]'`."
)


# ---------------------------------------------------------------------------
# Images: `kertransfer.images` is the one decode path (Pillow); the SavedModel
# graph below reproduces it in TensorFlow.
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


def _list_images(images):
    """A folder (searched recursively), one file, or a list -> list of str."""
    if isinstance(images, (str, os.PathLike)):
        images = os.fspath(images)
        if os.path.isdir(images):
            found = find_images(images)
            if not found:
                raise ValueError(
                    f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                    f"{images!r}. Pass a folder of images or a list of paths."
                )
            return found
        if os.path.isfile(images):
            return [images]
        raise FileNotFoundError(
            f"Expected an image folder, an image file or a list of paths. "
            f"Received {images!r}, which does not exist."
        )
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


def _read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _model_path(model_or_run_dir):
    path = os.fspath(model_or_run_dir)
    if os.path.isdir(path):
        model_path = os.path.join(path, "model.keras")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"No model.keras in the run folder {path!r}. Pass a run "
                "folder written by the trainer, a .keras file or a model."
            )
        return model_path, path
    if os.path.isfile(path) and path.endswith(".keras"):
        return path, os.path.dirname(os.path.abspath(path))
    raise FileNotFoundError(
        "Expected a run folder holding model.keras, a .keras file or a "
        f"keras.Model. Received {path!r}."
    )


def _load_model(model_or_run_dir):
    """-> (model, run_dir or None, model_path or None). TF backend only."""
    if isinstance(model_or_run_dir, keras.Model):
        return model_or_run_dir, None, None
    model_path, run_dir = _model_path(model_or_run_dir)
    return load_model_file(model_path), run_dir, model_path


def _resolve_meta(model, run_dir, class_names, image_size):
    """-> (class_names, framing, metrics) from arguments, the run, the model.

    The framing (`kertransfer.images.Framing`) is the run's own
    (`preprocessing.json`, else `metrics.json`), so the exports frame
    photos exactly as validation did; an explicit `image_size` keeps the
    run's `crop_pct`.
    """
    from kertransfer.predict import run_framing

    metrics = _read_metrics(run_dir) if run_dir else {}
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


def _unique_variables(model):
    """The model's backing `tf.Variable`s, each once."""
    seen, variables = set(), []
    for variable in model.variables:
        value = getattr(variable, "value", variable)
        if id(value) not in seen:
            seen.add(id(value))
            variables.append(value)
    return variables


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


def _import_tensorflow():
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(_TF_HINT) from error
    return tf


# ---------------------------------------------------------------------------
# Running under the TensorFlow backend from JAX or torch.
# ---------------------------------------------------------------------------


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


_BUILTIN_ERRORS = {
    e.__name__: e
    for e in (ValueError, TypeError, FileNotFoundError, FileExistsError,
              ImportError, RuntimeError)
}


def _delegate(function_name, model_or_run_dir, **kwargs):
    """Runs `function_name(model_or_run_dir, **kwargs)` under TensorFlow.

    The model is passed by path (a `keras.Model` is saved to a temporary
    `.keras` file first); the result and any warnings come back as JSON.
    """
    with tempfile.TemporaryDirectory(prefix="kertransfer-export-") as tmp:
        if isinstance(model_or_run_dir, keras.Model):
            model_path = os.path.join(tmp, "model.keras")
            model_or_run_dir.save(model_path)
            model_or_run_dir = model_path
        request = os.path.join(tmp, "request.json")
        response = os.path.join(tmp, "response.json")
        with open(request, "w") as f:
            json.dump(
                {"function": function_name,
                 "model_or_run_dir": os.fspath(model_or_run_dir),
                 "kwargs": kwargs},
                f,
            )
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The folder holding this `kertransfer` package, first on the path:
        # the child imports the same code as this process.
        package_root = os.path.dirname(
            os.path.dirname(os.path.abspath(kertransfer.__file__))
        )
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH")) if p
        )
        logger.info(
            "Keras backend is %r: running %s() in a TensorFlow subprocess.",
            keras.backend.backend(), function_name,
        )
        process = subprocess.run(
            [sys.executable, "-m", "kertransfer.export", "--_call", request,
             response],
            env=env, capture_output=True, text=True,
        )
        result = None
        if os.path.isfile(response):
            with open(response) as f:
                result = json.load(f)
    if result is None or (process.returncode != 0 and "error" not in result):
        tail = (process.stdout + process.stderr)[-4000:]
        raise RuntimeError(
            f"{function_name}() failed in its TensorFlow subprocess (exit "
            f"code {process.returncode}; the current Keras backend is "
            f"{keras.backend.backend()!r}). Its last output:\n{tail}"
        )
    for message in result.get("warnings", []):
        warnings.warn(message, ExportWarning, stacklevel=3)
    if "error" in result:
        error = _BUILTIN_ERRORS.get(result["error"]["type"], RuntimeError)
        raise error(result["error"]["message"])
    return result["value"]


def _serve_call(request_path, response_path):
    """Child side of `_delegate`."""
    with open(request_path) as f:
        request = json.load(f)
    functions = {"saved_model": saved_model, "tflite": tflite,
                 "onnx": onnx, "validate": validate, "export": export}
    result = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            kwargs = dict(request["kwargs"])
            if request["function"] in ("validate", "export"):
                kwargs["print_fn"] = None
            result["value"] = functions[request["function"]](
                request["model_or_run_dir"], **kwargs
            )
        except Exception as error:  # reported to the parent process
            logger.exception("export subprocess failed")
            result["error"] = {"type": type(error).__name__,
                               "message": str(error)}
    result["warnings"] = [
        str(w.message) for w in caught if issubclass(w.category, ExportWarning)
    ]
    with open(response_path, "w") as f:
        json.dump(result, f)
    return 1 if "error" in result else 0


# ---------------------------------------------------------------------------
# SavedModel for TF Serving.
# ---------------------------------------------------------------------------


def _tf_read_uint(tf, data, offsets, num_bytes, little_endian):
    """Unsigned `num_bytes`-byte integers at `offsets` of an int64 byte vector."""
    last = tf.cast(tf.size(data), offsets.dtype) - 1
    values = [
        tf.gather(data, tf.clip_by_value(offsets + k, 0, last))
        for k in range(num_bytes)
    ]
    little = tf.add_n([v * 256 ** k for k, v in enumerate(values)])
    big = tf.add_n([v * 256 ** (num_bytes - 1 - k) for k, v in enumerate(values)])
    return tf.where(little_endian, little, big)


def _tf_exif_orientation(tf, image_bytes, max_bytes=65536, max_entries=64):
    """The EXIF Orientation tag (1-8) of JPEG bytes, 1 when absent or odd.

    Finds the first APP1 segment holding `Exif\\0\\0` in the first
    `max_bytes` bytes, reads its TIFF header (byte order `II` or `MM`) and
    looks up tag 0x0112 among the first `max_entries` entries of IFD0 (EXIF
    2.32, section 4.5-4.6), as Pillow's `getexif()` does.
    """
    data = tf.cast(tf.io.decode_raw(
        tf.strings.substr(image_bytes, 0, max_bytes), tf.uint8), tf.int64)
    data = tf.concat([data, tf.zeros([16], tf.int64)], 0)
    size = tf.size(data) - 16
    positions = tf.range(size)
    pattern = {0: 0xFF, 1: 0xE1, 4: ord("E"), 5: ord("x"), 6: ord("i"),
               7: ord("f"), 8: 0, 9: 0}
    hit = tf.ones([size], tf.bool)
    for offset, value in pattern.items():
        hit = tf.logical_and(hit, tf.equal(tf.gather(data, positions + offset),
                                           value))
    found = tf.cast(tf.where(hit)[:, 0], tf.int32)

    def parse():
        tiff = found[0] + 10
        little = tf.equal(tf.gather(data, tiff), ord("I"))
        ifd = tiff + tf.cast(_tf_read_uint(tf, data, tiff + 4, 4, little),
                             tf.int32)
        count = tf.cast(_tf_read_uint(tf, data, ifd, 2, little), tf.int32)
        entries = ifd + 2 + 12 * tf.range(max_entries)
        tags = _tf_read_uint(tf, data, entries, 2, little)
        match = (tf.range(max_entries) < count) & tf.equal(tags, 0x0112) & (
            entries + 12 <= size)
        values = _tf_read_uint(tf, data, entries + 8, 2, little)
        index = tf.where(match)[:, 0]
        return tf.cond(
            tf.size(index) > 0,
            lambda: tf.cast(tf.gather(values, index[0]), tf.int32),
            lambda: tf.constant(1, tf.int32))

    orientation = tf.cond(tf.size(found) > 0, parse,
                          lambda: tf.constant(1, tf.int32))
    in_range = tf.logical_and(orientation >= 1, orientation <= 8)
    return tf.where(in_range, orientation, 1)


def _tf_orient(tf, image, orientation):
    """`(h, w, c)` pixels turned upright, as Pillow's `exif_transpose`."""

    def transposed():
        return tf.transpose(image, [1, 0, 2])

    return tf.switch_case(orientation, [
        lambda: image,                                  # (unused)
        lambda: image,                                  # 1 upright
        lambda: tf.reverse(image, [1]),                 # 2 mirrored
        lambda: tf.reverse(image, [0, 1]),              # 3 rotated 180
        lambda: tf.reverse(image, [0]),                 # 4 flipped
        transposed,                                     # 5 transpose
        lambda: tf.reverse(transposed(), [1]),          # 6 rotated 90 cw
        lambda: tf.reverse(transposed(), [0, 1]),       # 7 transverse
        lambda: tf.reverse(transposed(), [0]),          # 8 rotated 90 ccw
    ])


def _tf_decode(tf, image_bytes, framing):
    """Encoded image -> float32 `(h, w, 3)` RGB, as `images.open_image`.

    JPEG: libjpeg's reduced-size decoding (`ratio`, Pillow's `draft`) by
    `images.jpeg_draft_scale`, the accurate integer DCT Pillow uses, then
    the EXIF orientation. PNG, GIF (first frame), BMP: transparent pixels
    composited onto white; grayscale to RGB; 16-bit PNGs keep their high
    byte.
    """
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 3), b"\xff\xd8\xff")
    short_side = framing.decode_size

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        reduction = tf.minimum(shape[0] // short_side, shape[1] // short_side)
        branch = tf.where(reduction >= 8, 3, tf.where(
            reduction >= 4, 2, tf.where(reduction >= 2, 1, 0)))
        image = tf.switch_case(branch, [
            (lambda ratio=ratio: tf.io.decode_jpeg(
                image_bytes, channels=3, ratio=ratio,
                dct_method="INTEGER_ACCURATE"))
            for ratio in (1, 2, 4, 8)
        ])
        image = _tf_orient(tf, image, _tf_exif_orientation(tf, image_bytes))
        return tf.cast(image, tf.float32)

    def other():
        image = tf.io.decode_image(image_bytes, channels=0,
                                   expand_animations=False, dtype=tf.uint8)
        image = tf.cast(image, tf.float32)
        channels = tf.shape(image)[-1]
        gray = image[..., :1]
        opaque = tf.fill(tf.shape(gray), 255.0)
        rgb = tf.cond(channels >= 3, lambda: image[..., :3],
                      lambda: tf.tile(gray, [1, 1, 3]))
        alpha = tf.switch_case(channels - 1, [
            lambda: opaque, lambda: image[..., 1:2], lambda: opaque,
            lambda: image[..., 3:4]])
        return tf.round((rgb * alpha + 255.0 * (255.0 - alpha)) / 255.0)

    image = tf.cond(is_jpeg, jpeg, other)
    image.set_shape([None, None, 3])
    return image


def _tf_resize_and_crop(tf, image, framing):
    """TF twin of `images.decode_image`'s resize plus `center_crop`.

    The short side of `(h, w, 3)` pixels goes to `framing.decode_size`
    (`tf.image.resize`, bilinear with antialiasing: Pillow's filter, in
    Pillow's order: rows, round to whole pixel values, columns, round),
    then the center `image_size` square is cut.
    """
    size, short_side = framing.image_size, framing.decode_size
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    scale = short_side / tf.cast(tf.minimum(height, width), tf.float64)
    new_height = tf.maximum(short_side, tf.cast(
        tf.round(tf.cast(height, tf.float64) * scale), tf.int32))
    new_width = tf.maximum(short_side, tf.cast(
        tf.round(tf.cast(width, tf.float64) * scale), tf.int32))
    def to_pixels(values):  # Pillow's uint8 result: round half up, clip
        return tf.clip_by_value(tf.floor(values + 0.5), 0.0, 255.0)

    def resize():
        # Pillow resamples rows first, rounds to uint8, then columns;
        # doing the same keeps all but ~0.1% of pixels identical.
        wide = to_pixels(tf.image.resize(
            image, tf.stack([height, new_width]), method="bilinear",
            antialias=True))
        return to_pixels(tf.image.resize(
            wide, tf.stack([new_height, new_width]), method="bilinear",
            antialias=True))

    same = tf.logical_and(tf.equal(new_height, height),
                          tf.equal(new_width, width))
    image = tf.cond(same, lambda: image, resize)
    top = (new_height - size) // 2
    left = (new_width - size) // 2
    return tf.ensure_shape(image[top:top + size, left:left + size, :],
                           [size, size, 3])


# The files `serving_default` takes; a bad item gets its own error message.
_FILE_FORMATS = (  # (name, leading bytes), as `_tf_frame_bytes` accepts them
    ("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG"), ("GIF", b"GIF8"),
    ("BMP", b"BM"))
# What base64 text of those files starts with: bytes sent without REST's
# {"b64": ...} wrapper, or base64-encoded twice.
_BASE64_STARTS = (b"/9j/", b"iVBORw0KGgo", b"R0lGOD", b"Qk")
_HEX_BYTES = [f"{i:02x}" for i in range(256)]


def _tf_frame_bytes(tf, image_bytes, framing):
    """One encoded image -> `(image_size, image_size, 3)` float32 pixels."""
    known = tf.reduce_any(tf.stack([
        tf.equal(tf.strings.substr(image_bytes, 0, len(magic)), magic)
        for _, magic in _FILE_FORMATS]))
    check = tf.debugging.Assert(
        known,
        [
            "serving_default expects image_bytes to hold the raw bytes of "
            "a JPEG, PNG, GIF or BMP file, but received",
            tf.strings.length(image_bytes),
            "bytes starting with",
            tf.strings.substr(image_bytes, 0, 16),
            ". Over REST, send {\"b64\": \"<base64 of the file>\"} so the "
            "server decodes the base64; over gRPC or from Python, send "
            "the file's bytes unchanged; for decoded pixels use the "
            "predict_images signature.",
        ],
        name="check_image_bytes",
    )
    with tf.control_dependencies([check]):
        image = _tf_decode(tf, image_bytes, framing)
    return _tf_resize_and_crop(tf, image, framing)


def _tf_frame_decodable(tf, image_bytes, framing):
    """The framed images of the items that decode, and their positions.

    Graph ops cannot catch an error per element, but `tf.data` can: each
    item is framed by `_tf_frame_bytes` inside `Dataset.map`, and
    `ignore_errors()` drops the items whose decoding failed (any error
    status but cancellation; tensorflow/core/kernels/data/experimental/
    ignore_errors_dataset_op.cc). Each item carries its position, so the
    survivors are known. `get_single_element()` runs the pipeline as one
    tensor-in tensor-out op, without an iterator to initialize, which is
    what it is for at serving time (`tf.data.Dataset.get_single_element`).
    A blank sentinel keeps the single batch non-empty when no item decodes.

    Returns:
        `(images, positions)`: float32 `(m, image_size, image_size, 3)` and
        int32 `(m,)`, in input order, `m <= len(image_bytes)`.
    """
    size = framing.image_size
    count = tf.shape(image_bytes)[0]
    items = tf.data.Dataset.from_tensor_slices(
        (tf.range(count), image_bytes))
    framed = items.map(
        lambda position, data: (position,
                                _tf_frame_bytes(tf, data, framing)),
        num_parallel_calls=10,  # as tf.map_fn's parallel_iterations
        deterministic=True,
    ).ignore_errors()
    sentinel = tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int32), tf.zeros([size, size, 3], tf.float32)))
    positions, images = framed.concatenate(sentinel).batch(
        tf.cast(count, tf.int64) + 1).get_single_element()
    return images[:-1], positions[:-1]


def _tf_bytes_error(tf, image_bytes, decoded):
    """Why each item of a `(batch,)` string tensor was not classified.

    Only string ops that cannot fail on any input (positions clamped to
    each item's length), so the messages never fail the batch.

    Args:
        tf: the `tensorflow` module.
        image_bytes: `tf.string` `(batch,)`, the request.
        decoded: `tf.bool` `(batch,)`, which items were framed.

    Returns:
        `tf.string` `(batch,)`: `""` for decoded items; otherwise a message
        starting with `empty`, `not an image` or `undecodable <FORMAT>`.
    """
    length = tf.strings.length(image_bytes)
    padded = tf.strings.join([image_bytes, b"\0" * 8])

    def tail(num_bytes):  # the last num_bytes bytes (fewer if shorter)
        return tf.strings.substr(
            image_bytes, tf.maximum(length - num_bytes, 0),
            tf.fill(tf.shape(length), num_bytes))

    def hex_bytes(data, num_bytes):  # "ff d8 ff" of each item's first bytes
        values = tf.io.decode_raw(tf.strings.substr(data, 0, num_bytes),
                                  tf.uint8)
        digits = tf.gather(tf.constant(_HEX_BYTES), tf.cast(values, tf.int32))
        digits = tf.RaggedTensor.from_tensor(
            digits, lengths=tf.minimum(length, num_bytes))
        return tf.strings.reduce_join(digits, axis=-1, separator=" ")

    size = tf.strings.as_string(length)
    format_name = tf.fill(tf.shape(image_bytes), "")
    for name, magic in reversed(_FILE_FORMATS):
        format_name = tf.where(
            tf.equal(tf.strings.substr(padded, 0, len(magic)), magic),
            name, format_name)
    base64_text = tf.zeros(tf.shape(image_bytes), tf.bool)
    for start in _BASE64_STARTS:
        base64_text |= tf.equal(
            tf.strings.substr(padded, 0, len(start)), start)
    # A BMP header's file size: bytes 2-5, little-endian.
    bmp_size_bytes = tf.reshape(tf.cast(tf.io.decode_raw(
        tf.strings.substr(padded, 2, 4), tf.uint8), tf.int64), [-1, 4])
    bmp_declared = tf.reduce_sum(
        bmp_size_bytes * tf.constant([1, 256, 256 ** 2, 256 ** 3], tf.int64),
        axis=1)
    is_format = {name: tf.equal(format_name, name)
                 for name, _ in _FILE_FORMATS}
    truncation_hints = [
        (is_format["JPEG"] & tf.not_equal(tail(2), b"\xff\xd9"),
         ("; it does not end with the JPEG end-of-image marker ff d9 "
          "(truncated?)")),
        (is_format["PNG"] & tf.not_equal(
            tf.strings.substr(tail(8), 0, 4), b"IEND"),
         "; it does not end with a PNG IEND chunk (truncated?)"),
        (is_format["GIF"] & tf.not_equal(tail(1), b"\x3b"),
         "; it does not end with the GIF trailer byte 3b (truncated?)"),
        (is_format["BMP"] & (tf.cast(length, tf.int64) < bmp_declared),
         tf.strings.join(["; it is shorter than the ",
                          tf.strings.as_string(bmp_declared),
                          " bytes its header declares (truncated)"])),
    ]
    hint = tf.strings.join(
        [tf.where(found, text, "") for found, text in truncation_hints])
    not_an_image = tf.strings.join([
        "not an image: starts with ", hex_bytes(padded, 8), " (", size,
        " bytes), not like a JPEG, PNG, GIF or BMP file",
        tf.where(
            base64_text,
            "; this looks like base64 text: over REST send {\"b64\": "
            "\"<base64 of the file>\"} so that the server decodes it, over "
            "gRPC the file's bytes unchanged", ""),
    ])
    undecodable = tf.strings.join([
        "undecodable ", format_name, ": starts like a ", format_name,
        " file but does not decode (", size, " bytes)", hint])
    error = tf.where(tf.equal(format_name, ""), not_an_image, undecodable)
    error = tf.where(tf.equal(length, 0),
                     "empty: 0 bytes received, expected the bytes of an "
                     "image file", error)
    return tf.where(decoded, "", error)


def _serving_module(tf, model, class_names, framing, top_k=TOP_K):
    """A `tf.Module` with the variables once and two signatures."""
    module = tf.Module()
    module.model_variables = _unique_variables(model)
    top_k = min(top_k, len(class_names))
    image_size = framing.image_size
    framed = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    @tf.function(input_signature=[
        tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def classify(images):
        probabilities = tf.cast(model(images, training=False), tf.float32)
        top_scores, top_indices = tf.math.top_k(probabilities, k=top_k)
        names = tf.constant(class_names, dtype=tf.string)
        return {
            "probabilities": probabilities,
            "top_classes": tf.gather(names, top_indices),
            "top_scores": top_scores,
        }

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        images, positions = _tf_frame_decodable(tf, image_bytes, framing)
        classified = classify(images)
        # Row 0 of each output stands for "not classified"; item i takes
        # row 1 + (its place among the decoded items), or row 0.
        count = tf.shape(image_bytes)[0]
        rows = tf.scatter_nd(positions[:, None],
                             tf.range(1, tf.size(positions) + 1), [count])
        outputs = {}
        for key, value in classified.items():
            shape = tf.concat([[1], tf.shape(value)[1:]], 0)
            blank = (tf.fill(shape, "") if value.dtype == tf.string
                     else tf.zeros(shape, value.dtype))
            outputs[key] = tf.gather(tf.concat([blank, value], 0), rows)
        decoded = rows > 0
        outputs["status"] = tf.where(decoded, "ok", "error")
        outputs["error"] = _tf_bytes_error(tf, image_bytes, decoded)
        return outputs

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def predict_images(images):
        shape = tf.shape(images)
        right_size = tf.logical_and(tf.equal(shape[1], image_size),
                                    tf.equal(shape[2], image_size))
        images = tf.cond(
            right_size, lambda: images,
            lambda: tf.map_fn(
                lambda image: _tf_resize_and_crop(tf, image, framing), images,
                fn_output_signature=framed),
        )
        return classify(
            tf.ensure_shape(images, [None, image_size, image_size, 3]))

    module.classify = classify
    module.serving_default = serving_default
    module.predict_images = predict_images
    return module


def saved_model(
    model_or_run_dir,
    out_dir,
    name="kertransfer",
    version=1,
    class_names=None,
    image_size=None,
    overwrite=False,
):
    """Writes a lean SavedModel in TF Serving's `NAME/VERSION/` layout.

    The model's variables are stored once (a `tf.Module` holding them plus
    `tf.saved_model.save` with explicit signatures; `model.export()` stores
    them twice), so the folder is about the size of the weights. Class names
    are embedded in the graph and copied to `assets/labels.txt`, the
    framing to `assets/preprocessing.json`. The version
    folder is written under a temporary name and renamed at the end, so a
    running TF Serving never sees a half-written version.

    Signatures (see the TF Serving REST API,
    https://www.tensorflow.org/tfx/serving/api_rest):

    - `serving_default(image_bytes)`: `tf.string` `(batch,)` of JPEG, PNG,
      GIF (first frame) or BMP file bytes. Each image is framed exactly as
      the run's validation images were (`kertransfer.images`, the run's
      `preprocessing.json`): decoded (JPEG EXIF orientation applied,
      transparency onto white), its short side resized to
      `round(image_size / crop_pct)` (bilinear, antialiased) and
      center-cropped to `image_size x image_size`. Over REST send
      `{"instances": [{"b64": "<base64 file>"}]}`: the file's bytes as
      they are, so the graph sees the EXIF orientation.
    - `predict_images(images)`: float32 `(batch, height, width, 3)` RGB
      pixels in `[0, 255]`. Batches of `image_size x image_size` are taken
      as already-framed crops (`kertransfer.images.frame_image`); any other
      size as whole, upright photos, which get the resize and center crop
      above.

    Both return `probabilities` float32 `(batch, num_classes)`,
    `top_classes` string `(batch, k)` and `top_scores` float32 `(batch, k)`,
    with `k = min(5, num_classes)`, best first.

    `serving_default` judges each item on its own and also returns
    `status` string `(batch,)`, `"ok"` or `"error"`, and `error` string
    `(batch,)`, `""` or why the item was not classified. A bad item does
    not fail the request: the other items are classified as if sent alone,
    and the bad item's row holds zero probabilities and scores and empty
    class names (zeros, not NaN: TF Serving's REST API writes NaN as a bare
    `NaN`, which JSON parsers reject). Each item is decoded inside
    `tf.data` (`Dataset.map(...).ignore_errors()`, then
    `get_single_element()`), so whatever makes the decoder fail is caught
    per item; the message then says what the bytes look like:

    - `empty: ...`: zero bytes.
    - `not an image: starts with 68 65 6c ... (N bytes), ...`: not the
      signature of a JPEG, PNG, GIF or BMP file (text, HTML, WebP, ...);
      base64 text of an image is recognised and the `{"b64": ...}` fix
      named.
    - `undecodable JPEG|PNG|GIF|BMP: ...`: the format's signature, but the
      decoder failed: truncated files (a JPEG cut anywhere, even just
      its 2-byte end marker; PNG, GIF and BMP files cut inside their image
      data), broken headers. A missing JPEG end-of-image marker, PNG IEND
      chunk or GIF trailer, or a BMP shorter than its header declares, is
      added as the likely cause.

    Damage the decoder tolerates is not an error: a complete JPEG with
    corrupt entropy-coded data decodes to damaged pixels (libjpeg warns;
    Pillow, so `kertransfer predict`, reads it too), and a GIF missing only
    its trailer byte decodes. The request as a whole still fails on what is not
    per item: an input that is not a 1-D string tensor, or a batch too
    large for memory.

    Args:
        model_or_run_dir: a run folder holding `model.keras` (and
            `metrics.json`), a `.keras` file, or a `keras.Model` taking raw
            pixels in `[0, 255]`.
        out_dir: the model base folder TF Serving watches; the export goes
            to `out_dir/name/version/`.
        name: model name in TF Serving URLs (`/v1/models/NAME:predict`).
        version: positive int, the version folder.
        class_names: class names in output order. Defaults to
            `metrics.json["classes"]`.
        image_size: input size in pixels. Defaults to
            `metrics.json["image_size"]` or the model's input shape.
        overwrite: replace an existing `out_dir/name/version/`.

    Returns:
        The path of the version folder, `out_dir/name/version`.

    Raises:
        FileExistsError: if the version folder exists and `overwrite` is
            False.
        ValueError: on an invalid name, version, image size or class names.
        ImportError: if TensorFlow is not installed.

    Example:

    >>> path = saved_model("runs/ants", "runs/ants/export/serving",
    ...                    name="ants")
    >>> import tensorflow as tf
    >>> serve = tf.saved_model.load(path).signatures["serving_default"]
    >>> serve(image_bytes=tf.constant([open("ant.jpg", "rb").read()]))
    """
    if not isinstance(name, str) or not name or os.sep in name or (
            name.startswith(".")):
        raise ValueError(
            "name must be a non-empty folder name without path separators, "
            f"e.g. 'kertransfer'. Received name={name!r}."
        )
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)
                                                   ) or version < 1:
        raise ValueError(
            "version must be a positive int (TF Serving only loads numeric "
            f"version folders). Received version={version!r}."
        )
    version = int(version)
    out_dir = os.fspath(out_dir)
    if not _on_tensorflow():
        return _delegate(
            "saved_model", model_or_run_dir, out_dir=out_dir, name=name,
            version=version, class_names=class_names, image_size=image_size,
            overwrite=overwrite,
        )
    tf = _import_tensorflow()
    model, run_dir, _ = _load_model(model_or_run_dir)
    class_names, framing, _ = _resolve_meta(
        model, run_dir, class_names, image_size)
    export_dir = os.path.join(out_dir, name, str(version))
    if os.path.exists(export_dir) and not overwrite:
        raise FileExistsError(
            f"{export_dir!r} already exists. TF Serving versions should not "
            "change once served: pass a new version, or overwrite=True "
            "(`--overwrite` on the command line)."
        )
    os.makedirs(os.path.dirname(export_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=os.path.dirname(
        export_dir))
    try:
        module = _serving_module(tf, model, class_names, framing)
        labels = os.path.join(staging, "labels.txt")
        with open(labels, "w") as f:
            f.write("\n".join(class_names) + "\n")
        module.labels = tf.saved_model.Asset(labels)
        module.preprocessing = tf.saved_model.Asset(framing.save(staging))
        tf.saved_model.save(
            module, os.path.join(staging, "model"),
            signatures={
                "serving_default": module.serving_default,
                "predict_images": module.predict_images,
            },
        )
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(os.path.join(staging, "model"), export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote SavedModel %s", export_dir)
    return export_dir


# ---------------------------------------------------------------------------
# LiteRT (TFLite).
# ---------------------------------------------------------------------------


def _representative_paths(representative_images, run_dir, metrics):
    """Calibration images: given, else the run's training data."""
    if representative_images is not None:
        return _list_images(representative_images)
    for key in ("train_dir", "data_dir"):
        folder = metrics.get(key)
        if folder and key == "data_dir":
            folder = os.path.join(folder, "train")
        if folder and os.path.isdir(folder):
            return _list_images(folder)
    if run_dir and os.path.isfile(os.path.join(run_dir, "predictions.npz")):
        warnings.warn(
            "int8 calibration fell back to the validation images listed in "
            "predictions.npz (no representative_images given and no "
            "metrics.json 'train_dir'/'data_dir'). Pass "
            "representative_images=<training folder> "
            "(`--representative-images`) to calibrate on training images.",
            ExportWarning,
            stacklevel=3,
        )
        return _validation_set(run_dir, None, None, [])[0]
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
    frame photos exactly as validation did).

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
    if not _on_tensorflow():
        return _delegate(
            "tflite", model_or_run_dir, path=path, quantize=quantize,
            representative_images=representative_images,
            num_calibration_images=num_calibration_images,
            class_names=class_names, image_size=image_size, seed=seed,
        )
    tf = _import_tensorflow()
    model, run_dir, _ = _load_model(model_or_run_dir)
    class_names, framing, metrics = _resolve_meta(
        model, run_dir, class_names, image_size)
    image_size = framing.image_size

    with tempfile.TemporaryDirectory(prefix="kertransfer-litert-") as tmp:
        module = tf.Module()
        module.model_variables = _unique_variables(model)

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
    framing.save(folder)
    # The framing code itself, for `export/mobile/litert_runner.py` on a
    # device without kertransfer: the same file, NumPy and Pillow only.
    shutil.copyfile(images_lib.__file__,
                    os.path.join(folder, "kertransfer_images.py"))
    logger.info("Wrote LiteRT model %s (%d bytes)", path, len(flatbuffer))
    return path


# ---------------------------------------------------------------------------
# ONNX (optional extra).
# ---------------------------------------------------------------------------


def onnx(model_or_run_dir, path, class_names=None, image_size=None):
    """Converts a model to ONNX with `tf2onnx`, with labels.txt beside it.

    Uses Keras's own `model.export(path, format="onnx")` under the
    TensorFlow backend (https://keras.io/api/models/model_saving_apis/
    export/). The graph takes float32 `(batch, image_size, image_size, 3)`
    RGB pixels in `[0, 255]` and returns float32 probabilities
    `(batch, num_classes)`, as the Keras model does.

    Args:
        model_or_run_dir: a run folder, a `.keras` file or a `keras.Model`.
        path: output `.onnx` file.
        class_names: class names in output order, for `labels.txt`.
        image_size: input size in pixels (default: from the run/model).

    Returns:
        The path of the `.onnx` file.

    Raises:
        ImportError: if `tf2onnx` or TensorFlow is not installed
            (`pip install 'kertransfer[onnx]'`).
        ValueError: if `path` does not end with `.onnx`.

    Example:

    >>> onnx("runs/ants", "runs/ants/export/onnx/model.onnx")
    """
    import importlib.util

    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(
            f"path must end with '.onnx'. Received path={path!r}.")
    if importlib.util.find_spec("tf2onnx") is None:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: "
            "`pip install 'kertransfer[onnx]'` (tf2onnx onnx onnxruntime)."
        )
    if not _on_tensorflow():
        return _delegate("onnx", model_or_run_dir, path=path,
                         class_names=class_names, image_size=image_size)
    _import_tensorflow()
    model, run_dir, _ = _load_model(model_or_run_dir)
    class_names, framing, _ = _resolve_meta(
        model, run_dir, class_names, image_size)
    image_size = framing.image_size
    model(np.zeros((1, image_size, image_size, 3), np.float32))  # build
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's np.object
        model.export(path, format="onnx", verbose=False)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("\n".join(class_names) + "\n")
    logger.info("Wrote ONNX model %s", path)
    return path


# ---------------------------------------------------------------------------
# Validation and report.
# ---------------------------------------------------------------------------


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
            stacklevel=3,
        )
        Interpreter = _import_tensorflow().lite.Interpreter
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


def _validation_set(run_dir, images, labels, class_names):
    """-> (paths, labels or None)."""
    if images is None:
        npz = os.path.join(run_dir or "", "predictions.npz")
        if not run_dir or not os.path.isfile(npz):
            raise ValueError(
                "No validation images: pass images=<folder or list of "
                "paths> (`--images`), or a run folder with predictions.npz."
            )
        with np.load(npz, allow_pickle=False) as data:
            paths = [str(p) for p in data["paths"]]
            if labels is None and "targets" in data:
                labels = data["targets"]
        paths = [
            p if os.path.isabs(p) or os.path.exists(p)
            else os.path.join(run_dir, p)
            for p in paths
        ]
    else:
        paths = _list_images(images)
    if labels is None:
        labels = _labels_from_folders(paths, class_names)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.ndim == 2:  # one-hot targets
            labels = labels.argmax(-1)
        if len(labels) != len(paths):
            raise ValueError(
                f"Received {len(labels)} labels for {len(paths)} images. "
                "Pass one integer label per image."
            )
    return paths, labels


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


def _compare(row, probabilities, reference, labels):
    difference = np.abs(probabilities - reference)
    row["top1_agreement"] = round(float(np.mean(
        probabilities.argmax(-1) == reference.argmax(-1))), 4)
    row["max_abs_prob_diff"] = float(np.max(difference))
    row["mean_abs_prob_diff"] = float(np.mean(difference))
    row["accuracy"] = None if labels is None else round(float(np.mean(
        probabilities.argmax(-1) == labels)), 4)


def _targets(quantize):
    targets = {"top1_agreement": AGREEMENT_TARGETS[quantize]}
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
        labels: int class indices aligned with `images`, optional.
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
    if labels is not None:
        labels = np.asarray(labels)
        labels = labels.argmax(-1) if labels.ndim == 2 else labels
        labels = [int(i) for i in labels]
    if not _on_tensorflow():
        report = _delegate(
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

    is_run = (run_dir and model_path == os.path.join(run_dir, "model.keras")
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
    tf = _import_tensorflow()
    model, run_dir, model_path = _load_model(model_or_run_dir)
    class_names, framing, metrics = _resolve_meta(
        model, run_dir, class_names, image_size)
    paths, labels = _validation_set(run_dir, images, labels, class_names)
    paths, labels, reference, description = _reference(
        model, run_dir, model_path, metrics, paths, labels, framing)
    pixels = frame_images(paths, framing)
    timed = pixels[:max_timed_images]
    timings = []
    for image in timed:
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
            "accuracy": None if labels is None else round(float(np.mean(
                reference.argmax(-1) == labels)), 4),
            "median_latency_ms": _median_ms(timings[1:]),
            "size_bytes": (os.path.getsize(model_path) if model_path
                           else None),
        },
        "artifacts": [],
    }
    rows = report["artifacts"]
    fp32_tflite_bytes = None
    for artifact in artifacts:
        kind = _artifact_kind(artifact)
        if kind == "saved_model":
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
            _compare(bytes_row, probabilities, reference, labels)
            # Files the learner reads but the serving graph refuses.
            bytes_row["not_decoded"] = [
                f"{path} ({error})" for path, error in zip(paths, errors)
                if error]
            bytes_row["median_latency_ms"] = _median_ms(timings[1:])
            bytes_row["targets"] = dict(_targets(None),
                                        size_ratio=LEAN_SAVED_MODEL_RATIO)
            rows.append(bytes_row)

            predict = loaded.signatures["predict_images"]
            probabilities = np.concatenate([
                predict(images=tf.constant(pixels[i:i + 32]))[
                    "probabilities"].numpy()
                for i in range(0, len(pixels), 32)
            ])
            timings = []
            for image in timed:
                start = time.perf_counter()
                predict(images=tf.constant(image[None]))
                timings.append(time.perf_counter() - start)
            row = dict(bytes_row, name="saved_model:predict_images",
                       runtime="tf.saved_model (framed pixels)",
                       targets=_targets(None))
            del row["not_decoded"]
            _compare(row, probabilities, reference, labels)
            row["median_latency_ms"] = _median_ms(timings[1:])
            rows.append(row)
        elif kind == "onnx":
            try:
                import onnxruntime
            except ImportError:
                warnings.warn(
                    f"Not validating {artifact}: onnxruntime is not "
                    "installed (`pip install onnxruntime`).",
                    ExportWarning,
                    stacklevel=3,
                )
                continue
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                artifact, options, providers=["CPUExecutionProvider"])
            input_name = session.get_inputs()[0].name
            probabilities, timings = [], []
            for image in pixels:
                start = time.perf_counter()
                probabilities.append(session.run(
                    None, {input_name: image[None]})[0])
                timings.append(time.perf_counter() - start)
            row = {"name": "onnx:float32", "format": "onnx",
                   "quantize": None, "path": artifact,
                   "runtime": f"onnxruntime {onnxruntime.__version__} "
                              "(1 thread)",
                   "size_bytes": os.path.getsize(artifact),
                   "size_ratio": round(os.path.getsize(artifact)
                                       / weights_bytes, 4),
                   "size_ratio_of": "weights"}
            _compare(row, np.concatenate(probabilities).astype(np.float32),
                     reference, labels)
            row["median_latency_ms"] = _median_ms(
                timings[1:max_timed_images + 1])
            row["targets"] = _targets(None)
            rows.append(row)
        else:
            quantize = _tflite_quantization(artifact)
            interpreter, runtime = _interpreter(artifact)
            probabilities, timings = [], []
            for image in pixels:
                start = time.perf_counter()
                probabilities.append(_run_interpreter(interpreter,
                                                      image[None]))
                timings.append(time.perf_counter() - start)
            probabilities = np.concatenate(probabilities)
            row = {"name": f"tflite:{quantize or 'float32'}",
                   "format": "tflite", "quantize": quantize,
                   "path": artifact, "runtime": f"{runtime} (1 thread)",
                   "size_bytes": os.path.getsize(artifact)}
            if quantize is None:
                fp32_tflite_bytes = row["size_bytes"]
            _compare(row, probabilities, reference, labels)
            row["median_latency_ms"] = _median_ms(
                timings[1:max_timed_images + 1])
            row["targets"] = _targets(quantize)
            if quantize == "int8":
                row["targets"]["size_ratio"] = INT8_SIZE_RATIO
            rows.append(row)
    for row in rows:
        if row["format"] == "tflite":
            base = fp32_tflite_bytes or weights_bytes
            row["size_ratio"] = round(row["size_bytes"] / base, 4)
            row["size_ratio_of"] = ("tflite:float32" if fp32_tflite_bytes
                                    else "weights")
        failures = []
        targets = row["targets"]
        if row["top1_agreement"] < targets.get("top1_agreement", 0.0):
            failures.append(
                f"top-1 agreement {row['top1_agreement']:.2%} < "
                f"{targets['top1_agreement']:.1%}")
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


def _human_size(num_bytes):
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return (f"{num_bytes:.0f} {unit}" if unit == "B"
                    else f"{num_bytes:.1f} {unit}")
        num_bytes /= 1024


def format_report(report):
    """Renders a validation report as a plain-text table.

    Args:
        report: the dict returned by `validate` or `export`.

    Returns:
        A multi-line string, one row per artifact plus the Keras reference.
    """
    header = ("artifact", "size", "ratio", "top-1 agree", "max |dp|",
              "mean |dp|", "accuracy", "ms/img", "ok")

    def pct(value):
        return "-" if value is None else f"{value:.1%}"

    keras_row = report["keras"]
    lines = [(
        "reference (kertransfer predict)",
        _human_size(keras_row["size_bytes"]) if keras_row["size_bytes"]
        else "-", "-", "-", "-", "-", pct(keras_row["accuracy"]),
        str(keras_row["median_latency_ms"]), "",
    )]
    for row in report["artifacts"]:
        lines.append((
            row["name"], _human_size(row["size_bytes"]),
            f"{row['size_ratio']:.2f}x {row['size_ratio_of']}",
            pct(row["top1_agreement"]), f"{row['max_abs_prob_diff']:.2e}",
            f"{row.get('mean_abs_prob_diff', float('nan')):.2e}",
            pct(row["accuracy"]), str(row["median_latency_ms"]),
            "yes" if row["passed"] else "NO: " + "; ".join(row["failures"]),
        ))
    widths = [max(len(line[i]) for line in [header] + lines)
              for i in range(len(header))]
    framing = report.get("framing") or {}
    valid = report.get("valid_accuracy")
    text = [
        f"{report['num_images']} validation images, {report['image_size']} "
        f"px (short side {framing.get('decode_size', '?')}, center crop), "
        f"weights {_human_size(report['weights_bytes'])}"
        + ("" if valid is None else f", metrics.json valid_accuracy "
           f"{valid:.1%}")
    ]
    for line in [header] + lines:
        text.append("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    if report.get("report_path"):
        text.append(f"report: {report['report_path']}")
    return "\n".join(text)


# ---------------------------------------------------------------------------
# Everything at once.
# ---------------------------------------------------------------------------


FORMATS = ("saved_model", "tflite", "onnx")


def export(
    run_dir,
    out_dir=None,
    formats=("saved_model", "tflite"),
    quantize=(),
    name="kertransfer",
    version=1,
    representative_images=None,
    images=None,
    overwrite=False,
    print_fn=print,
):
    """Exports a run folder for serving and devices, validates every file.

    Writes `out_dir/serving/NAME/VERSION/` (see `saved_model`),
    `out_dir/litert/model.tflite` plus `model_<quantize>.tflite` for each
    requested quantization and `labels.txt` (see `tflite`), optionally
    `out_dir/onnx/model.onnx` (see `onnx`), then
    `out_dir/export_report.json` (see `validate`).

    Args:
        run_dir: trainer run folder (`model.keras`, `metrics.json`,
            `predictions.npz`), or a `.keras` file.
        out_dir: output folder. Defaults to `run_dir/export/`.
        formats: iterable (or comma-separated string) of `"saved_model"`,
            `"tflite"`, `"onnx"` (needs the `onnx` extra).
        quantize: iterable of extra `.tflite` quantizations among
            `"float16"`, `"dynamic"`, `"int8"` (the fp32 `.tflite` is always
            written, as the reference for sizes).
        name: TF Serving model name.
        version: TF Serving version (positive int).
        representative_images: int8 calibration images (folder or list);
            see `tflite`.
        images: validation images (folder or list). Defaults to
            `predictions.npz`.
        overwrite: replace an existing SavedModel version.
        print_fn: prints the report table; `None` for silence.

    Returns:
        The report dict, with `report_path` and `artifacts` paths.

    Raises:
        ValueError: on unknown formats or quantizations.

    Example:

    >>> report = export("runs/ants", quantize=["int8"],
    ...                 representative_images="data/hymenoptera/train")
    >>> report["passed"]
    True
    """
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f]
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(
            f"formats must be a non-empty subset of {FORMATS}. Received "
            f"formats={formats}."
        )
    if isinstance(quantize, str) or quantize is None:
        quantize = [quantize]
    quantize = [q for q in quantize if q not in (None, "none", "float32")]
    unknown = [q for q in quantize if q not in QUANTIZATIONS]
    if unknown:
        raise ValueError(
            f"quantize entries must be among {QUANTIZATIONS[1:]}. Received "
            f"{unknown}."
        )
    if quantize and "tflite" not in formats:
        raise ValueError(
            f"quantize={quantize} applies to LiteRT files; add 'tflite' to "
            f"formats (received formats={formats})."
        )
    run_dir = os.fspath(run_dir)
    _model_path(run_dir)  # fail early, before any subprocess
    if out_dir is None:
        base = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
        out_dir = os.path.join(base, "export")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if representative_images is not None and not isinstance(
            representative_images, (str, os.PathLike)):
        representative_images = [os.fspath(p) for p in representative_images]
    if images is not None and not isinstance(images, (str, os.PathLike)):
        images = [os.fspath(p) for p in images]
    if not _on_tensorflow():
        report = _delegate(
            "export", run_dir, out_dir=out_dir, formats=formats,
            quantize=quantize, name=name, version=version,
            representative_images=representative_images, images=images,
            overwrite=overwrite,
        )
        if print_fn is not None:
            print_fn(format_report(report))
        return report
    artifacts = []
    if "saved_model" in formats:
        artifacts.append(saved_model(
            run_dir, os.path.join(out_dir, "serving"), name=name,
            version=version, overwrite=overwrite))
    if "tflite" in formats:
        litert_dir = os.path.join(out_dir, "litert")
        for q in [None] + [q for q in QUANTIZATIONS[1:] if q in quantize]:
            filename = "model.tflite" if q is None else f"model_{q}.tflite"
            artifacts.append(tflite(
                run_dir, os.path.join(litert_dir, filename), quantize=q,
                representative_images=representative_images))
    if "onnx" in formats:
        artifacts.append(onnx(run_dir, os.path.join(out_dir, "onnx",
                                                    "model.onnx")))
    return validate(
        run_dir, artifacts, images=images,
        report_path=os.path.join(out_dir, REPORT_NAME), print_fn=print_fn,
    )
