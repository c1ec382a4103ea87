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

One module per format, as Keras's own `keras/src/export/`:

- `saved_model.py`: `saved_model`, the TF Serving SavedModel; its image
  decode graph (`kertransfer.images` in TF ops) is `tf_images.py`.
- `litert.py`: `tflite`, LiteRT files and their quantizations.
- `onnx.py`: `onnx`, through Keras's `model.export`.
- `validate.py`: `validate` (one runner per format, against
  `kertransfer.predict`) and `format_report`.
- `pipeline.py`: `export`, every requested format then `validate`.
- `bridge.py`: the TensorFlow subprocess; `common.py`: the model, class
  names, framing and image files every export reads.

The command line, `kertransfer export`, is `kertransfer.cli.export_main`.

Everything here needs TensorFlow (SavedModel and the LiteRT converter are
TF-only), but nothing imports it at module level. When the current Keras
backend is JAX or torch, each public function re-runs itself in a
subprocess with `KERAS_BACKEND=tensorflow` (`python -m kertransfer.export`),
which loads the `.keras` file with `compile=False`: a model trained under
any backend exports the same way.
"""

from kertransfer.cli import export_main
from kertransfer.export.common import QUANTIZATIONS
from kertransfer.export.common import REPORT_NAME  # noqa: F401
from kertransfer.export.common import ExportWarning
from kertransfer.export.litert import tflite
from kertransfer.export.onnx import onnx
from kertransfer.export.pipeline import FORMATS  # noqa: F401
from kertransfer.export.pipeline import export
from kertransfer.export.report_table import format_report
from kertransfer.export.saved_model import TOP_K  # noqa: F401
from kertransfer.export.saved_model import saved_model
from kertransfer.export.tf_images import tf_exif_orientation  # noqa: F401
from kertransfer.export.tf_images import tf_frame_bytes  # noqa: F401
from kertransfer.export.validate import AGREEMENT_TARGETS  # noqa: F401
from kertransfer.export.validate import INT8_SIZE_RATIO  # noqa: F401
from kertransfer.export.validate import LEAN_SAVED_MODEL_RATIO  # noqa: F401
from kertransfer.export.validate import MAX_PROB_DIFF_TARGETS  # noqa: F401
from kertransfer.export.validate import validate

# The `noqa` names are not in `__all__` but were module attributes of the
# single `kertransfer/export.py`, so they stay reachable here; tests call the
# two `tf_images` decode helpers as `kertransfer.export.tf_*`.
#
# `saved_model`, `onnx` and `validate` name both a function and the module
# defining it. The functions imported above are the package's attributes:
# every submodule is loaded by then, and a loaded module is not bound again.
# So `kertransfer.export.saved_model(...)` is the function; reach a module's
# other names with `from kertransfer.export.saved_model import ...`.

__all__ = [
    "QUANTIZATIONS",
    "ExportWarning",
    "export",
    "export_main",
    "format_report",
    "onnx",
    "saved_model",
    "tflite",
    "validate",
]
