"""The TensorFlow bridge: exports of models trained under JAX or torch.

SavedModel, the LiteRT converter and `tf2onnx` need the TensorFlow Keras
backend. When another backend is active, each public export function calls
`delegate`, which re-runs it in a subprocess with `KERAS_BACKEND=tensorflow`
(`python -m kertransfer.export --_call REQUEST RESPONSE`, whose `__main__`
passes the export functions to `serve_call`: this module imports none of
them, so they can all import it). The child loads the `.keras` file with `compile=False`, so a
model trained under any backend exports the same way. Arguments, the result,
`ExportWarning`s and errors cross as JSON files.
"""

import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings

import keras

import kertransfer
from kertransfer.export.common import ExportWarning

logger = logging.getLogger(__name__)


_BUILTIN_ERRORS = {
    e.__name__: e
    for e in (ValueError, TypeError, FileNotFoundError, FileExistsError,
              ImportError, RuntimeError)
}


def delegate(function_name, model_or_run_dir, **kwargs):
    """Runs `function_name(model_or_run_dir, **kwargs)` under TensorFlow.

    The model is passed by path (a `keras.Model` is saved to a temporary
    `.keras` file first); the result and any warnings come back as JSON.

    Args:
        function_name: an export function's name (`"saved_model"`,
            `"tflite"`, `"onnx"`, `"validate"` or `"export"`).
        model_or_run_dir: a `keras.Model`, a run folder or a `.keras` file.
        **kwargs: the function's other arguments (JSON-serializable).

    Returns:
        What the function returned in the subprocess.

    Raises:
        The subprocess's error, as the same built-in type (else
        `RuntimeError`); `RuntimeError` with its output if it crashed.
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


def serve_call(request_path, response_path, functions):
    """Child side of `delegate`: runs the request, writes the response.

    Args:
        request_path: the JSON file `delegate` wrote.
        response_path: the JSON file to write (the value, the
            `ExportWarning`s and any error).
        functions: `{name: function}`, the export functions that may be
            called (`kertransfer.export.__main__` passes them).

    Returns:
        Exit status: 0, or 1 if the function raised.
    """
    with open(request_path) as f:
        request = json.load(f)
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
