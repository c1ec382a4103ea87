"""ONNX (the optional `onnx` extra), through Keras's own `model.export`."""

import importlib.util
import logging
import os
import warnings

import numpy as np

from kertransfer.export.bridge import delegate
from kertransfer.export.common import import_tensorflow
from kertransfer.export.common import load_model
from kertransfer.export.common import on_tensorflow
from kertransfer.export.common import resolve_meta

logger = logging.getLogger(__name__)


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
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(
            f"path must end with '.onnx'. Received path={path!r}.")
    if importlib.util.find_spec("tf2onnx") is None:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: "
            "`pip install 'kertransfer[onnx]'` (tf2onnx onnx onnxruntime)."
        )
    if not on_tensorflow():
        return delegate("onnx", model_or_run_dir, path=path,
                         class_names=class_names, image_size=image_size)
    import_tensorflow()
    model, run_dir, _ = load_model(model_or_run_dir)
    class_names, framing, _ = resolve_meta(
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
