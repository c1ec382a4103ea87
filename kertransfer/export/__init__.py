"""Deployment exports: TF Serving SavedModel, LiteRT, ONNX, validation."""

from kertransfer.cli import export_main
from kertransfer.export.saved_model import QUANTIZATIONS
from kertransfer.export.saved_model import ExportWarning
from kertransfer.export.saved_model import _tf_exif_orientation
from kertransfer.export.saved_model import _tf_frame_bytes
from kertransfer.export.saved_model import export
from kertransfer.export.saved_model import format_report
from kertransfer.export.saved_model import onnx
from kertransfer.export.saved_model import saved_model
from kertransfer.export.saved_model import tflite
from kertransfer.export.saved_model import validate

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
