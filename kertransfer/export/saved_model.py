"""SavedModel for TF Serving: a lean `NAME/VERSION/` folder, two signatures.

Sources:
- TF Serving REST API: https://www.tensorflow.org/tfx/serving/api_rest
- SavedModel signatures: https://www.tensorflow.org/guide/saved_model
"""

import logging
import os
import shutil
import tempfile

import numpy as np

from kertransfer.export.bridge import delegate
from kertransfer.export.common import import_tensorflow
from kertransfer.export.common import load_model
from kertransfer.export.common import on_tensorflow
from kertransfer.export.common import resolve_meta
from kertransfer.export.common import resolve_thresholds
from kertransfer.export.common import unique_variables
from kertransfer.export.common import write_thresholds
from kertransfer.export.tf_images import tf_bytes_error
from kertransfer.export.tf_images import tf_frame_decodable
from kertransfer.export.tf_images import tf_resize_and_crop

logger = logging.getLogger(__name__)

TOP_K = 5


def _serving_module(tf, model, class_names, framing, top_k=TOP_K, thresholds=None):
    """A `tf.Module` with the variables once and two signatures.

    With `thresholds` (one per class: a multi-label model), both signatures
    also return `above_threshold` and `tags`.
    """
    module = tf.Module()
    module.model_variables = unique_variables(model)
    top_k = min(top_k, len(class_names))
    image_size = framing.image_size
    framed = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    @tf.function(input_signature=[
        tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def classify(images):
        # TensorFlow 2.21's oneDNN convolution gives an empty batch its
        # input's shape on some CPUs (seen with AVX512-BF16: a second
        # convolution then fails, "input depth must be evenly divisible by
        # filter depth"), so a batch in which nothing decoded would crash
        # the signature: an empty batch takes the outputs of one blank
        # image, cut to none.
        def blank():
            one = tf.zeros(tf.concat([[1], tf.shape(images)[1:]], 0), images.dtype)
            return model(one, training=False)[:0]

        probabilities = tf.cast(
            tf.cond(tf.shape(images)[0] > 0, lambda: model(images, training=False), blank), tf.float32
        )
        top_scores, top_indices = tf.math.top_k(probabilities, k=top_k)
        names = tf.constant(class_names, dtype=tf.string)
        outputs = {
            "probabilities": probabilities,
            "top_classes": tf.gather(names, top_indices),
            "top_scores": top_scores,
        }
        if thresholds is not None:
            above = probabilities > tf.constant(thresholds, tf.float32)
            # The tags above their thresholds, most probable first.
            order = tf.argsort(probabilities, axis=-1, direction="DESCENDING", stable=True)
            kept = tf.ragged.boolean_mask(tf.gather(names, order), tf.gather(above, order, batch_dims=1))
            outputs["above_threshold"] = above
            outputs["tags"] = tf.strings.reduce_join(kept, axis=-1, separator=" ")
        return outputs

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        images, positions = tf_frame_decodable(tf, image_bytes, framing)
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
        outputs["error"] = tf_bytes_error(tf, image_bytes, decoded)
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
                lambda image: tf_resize_and_crop(tf, image, framing), images,
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
    thresholds=None,
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
    with `k = min(5, num_classes)`, best first. A multi-label model (with
    `thresholds`: a run of `kertransfer train --csv`) has independent
    per-tag probabilities, and both signatures also return
    `above_threshold` bool `(batch, num_classes)` (probability above the
    tag's embedded threshold) and `tags` string `(batch,)`: those tags,
    space-separated, most probable first (Kaggle Planet's format; `""`
    for none), as `kertransfer predict` lists them. The thresholds are
    also copied to `assets/thresholds.txt` (one per line, in
    `labels.txt` order).

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
        thresholds: for a multi-label model, one threshold in [0, 1] for
            all tags or one per tag. Defaults to `metrics.json`'s
            `thresholds` for a multi-label run (None for a single-label
            one).

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
    if not on_tensorflow():
        return delegate(
            "saved_model", model_or_run_dir, out_dir=out_dir, name=name,
            version=version, class_names=class_names, image_size=image_size,
            overwrite=overwrite, thresholds=thresholds,
        )
    tf = import_tensorflow()
    model, run_dir, _ = load_model(model_or_run_dir)
    class_names, framing, metrics = resolve_meta(
        model, run_dir, class_names, image_size)
    thresholds = resolve_thresholds(metrics, class_names, thresholds)
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
        module = _serving_module(tf, model, class_names, framing, thresholds=thresholds)
        labels = os.path.join(staging, "labels.txt")
        with open(labels, "w") as f:
            f.write("\n".join(class_names) + "\n")
        module.labels = tf.saved_model.Asset(labels)
        if thresholds is not None:
            module.thresholds = tf.saved_model.Asset(write_thresholds(staging, thresholds))
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
