"""`export`: every requested format from a run folder, then `validate`."""

import os

from kertransfer.export.bridge import delegate
from kertransfer.export.common import QUANTIZATIONS
from kertransfer.export.common import REPORT_NAME
from kertransfer.export.common import locate_model
from kertransfer.export.common import on_tensorflow
from kertransfer.export.litert import tflite
from kertransfer.export.onnx import onnx
from kertransfer.export.report_table import format_report
from kertransfer.export.saved_model import saved_model
from kertransfer.export.validate import validate

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
        print_fn: prints each step and the report table; `None` for
            silence.

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
    locate_model(run_dir)  # fail early, before any subprocess
    if out_dir is None:
        base = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
        out_dir = os.path.join(base, "export")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if representative_images is not None and not isinstance(
            representative_images, (str, os.PathLike)):
        representative_images = [os.fspath(p) for p in representative_images]
    if images is not None and not isinstance(images, (str, os.PathLike)):
        images = [os.fspath(p) for p in images]
    if not on_tensorflow():
        report = delegate(
            "export", run_dir, out_dir=out_dir, formats=formats,
            quantize=quantize, name=name, version=version,
            representative_images=representative_images, images=images,
            overwrite=overwrite,
        )
        if print_fn is not None:
            print_fn(format_report(report))
        return report
    say = print_fn or (lambda message: None)
    artifacts = []
    if "saved_model" in formats:
        say("writing the TF Serving SavedModel")
        artifacts.append(saved_model(
            run_dir, os.path.join(out_dir, "serving"), name=name,
            version=version, overwrite=overwrite))
    if "tflite" in formats:
        litert_dir = os.path.join(out_dir, "litert")
        for q in [None] + [q for q in QUANTIZATIONS[1:] if q in quantize]:
            filename = "model.tflite" if q is None else f"model_{q}.tflite"
            say(f"converting to LiteRT: {filename}")
            artifacts.append(tflite(
                run_dir, os.path.join(litert_dir, filename), quantize=q,
                representative_images=representative_images))
    if "onnx" in formats:
        say("converting to ONNX")
        artifacts.append(onnx(run_dir, os.path.join(out_dir, "onnx",
                                                    "model.onnx")))
    say(f"validating {len(artifacts)} export(s) against the learner's predictions")
    return validate(
        run_dir, artifacts, images=images,
        report_path=os.path.join(out_dir, REPORT_NAME), print_fn=print_fn,
    )
