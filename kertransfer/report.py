"""One self-contained HTML report from a training run folder, or a learner.

`write_report(run_dir)` reads what the trainer left in `run_dir` and writes
`run_dir/report.html`: a single file, every picture inlined as a base64 PNG
data URI, no external resources, so it can be mailed, archived or opened
offline. `write_report(learn, "report.html")` writes the same report from a
`ConvLearner` in a notebook: its validation predictions (and TTA), its
`learn.history`, its last LR finder and schedule, its model for Grad-CAM.
Run folder contract (all written by the trainer):

- `metrics.json` (required): `valid_accuracy`, `tta_accuracy` (multi-label:
  `multi_label`, `valid_f2`, `tta_f2`, `valid_f2_at_0.5`, `tta_f2_at_0.5`,
  `thresholds`), `valid_loss`,
  `classes`, `arch`, `image_size`, `lrs` ({stage: [per-group LR]}),
  `stage_seconds` ({stage: seconds}), `wall_seconds`, `dataset`
  (`train_counts`, `valid_counts`: {class: n}; `skipped`: [path]);
  optionally `kept` (the epoch whose weights the run kept: `stage`,
  `epoch` of the run, `stage_epoch`, `val_loss`).
- `predictions.npz` (required): `probs` (n, c), `targets` (n,) (multi-label:
  multi-hot (n, c)), and
  optionally `tta_probs` (n, c) and `paths` (n,) as a str array.
- `history.csv` (optional): one row per epoch, columns `epoch`, `stage`,
  `loss`, `accuracy`, `val_loss`, `val_accuracy`, `best` (True on the
  kept epoch's row), ...
- `lr_find.png`, `lr_find_unfrozen.png`, `lr_schedule.png`,
  `augmented.png` (optional; the loss is drawn from `history.csv`, once,
  by `plot_history`, which also writes the trainer's `loss.png`).
- `model.keras` and `preprocessing.json` (optional): Grad-CAM heatmaps of
  the top losses (`kertransfer.gradcam`).

Missing optional files are noted in the report. A small inline script
records, once the page has loaded, how many images decoded
(`<body data-images-loaded=... data-images-broken=...>`), so a headless
browser can check the report.
"""

import os
import pathlib
import warnings

import numpy as np
import pandas as pd

from kertransfer.interpret import ClassificationInterpretation
from kertransfer.interpret import cross_entropy
from kertransfer.metrics import binary_cross_entropy
from kertransfer.metrics import fbeta
from kertransfer.metrics import opt_th
from kertransfer.report_html import figure_png
from kertransfer.report_html import img
from kertransfer.report_html import note
from kertransfer.report_html import section
from kertransfer.report_sections import accuracy_section
from kertransfer.report_sections import confusion_section
from kertransfer.report_sections import dataset_section
from kertransfer.report_sections import f2_section
from kertransfer.report_sections import grad_cam_parts
from kertransfer.report_sections import grad_cam_section
from kertransfer.report_sections import history_parts
from kertransfer.report_sections import history_section
from kertransfer.report_sections import image_sections
from kertransfer.report_sections import lr_section
from kertransfer.report_sections import per_tag_section
from kertransfer.report_sections import plot_history
from kertransfer.report_sections import summary_section
from kertransfer.report_sections import time_section
from kertransfer.report_sections import write_document
from kertransfer.run_folder import RunFolder

__all__ = ["plot_history", "write_report"]


def write_report(run_dir, filename="report.html", num_images=4,
                 num_top_losses=8, max_classes=10, grad_cam=True, tta=True):
    """Writes one self-contained HTML report of a training run, or of a learner.

    The report shows the dataset summary, the learning-rate finder curves
    and schedule, loss and accuracy per epoch with stage boundaries, plain
    vs TTA accuracy, the confusion matrix (counts: a table with
    `id="confusion-matrix"`, each cell `class="cm-cell"` with `data-row`
    and `data-col`; row-normalized: `id="confusion-matrix-normalized"`,
    cells `class="cm-norm-cell"`; both as plots), the per-class report,
    image grids of the most incorrect and most uncertain validation images
    of each class and of the highest losses (fast.ai v0.7 lesson 1), the
    Grad-CAM heatmaps of the top losses, and the time per stage. The
    summary and the loss plot name the epoch whose weights the run kept.
    Interpretation uses the TTA predictions when `predictions.npz` has them.

    A multi-label run (`metrics.json` `multi_label: true`, multi-hot
    `targets`) gets, instead of accuracies, confusion matrix, image grids
    and Grad-CAM: F2 at 0.5 and at the run's `thresholds`, plain and TTA
    (`id="f2-scores"`), precision, recall and F2 per tag
    (`id="per-tag-report"`, `MultiLabelInterpretation.per_class_report`)
    and F2 against one threshold for all tags, the run's marked.

    From a learner (`write_report(learn, "report.html")`, e.g. at the end
    of a notebook), the report is computed from it instead of a run
    folder: `learn.predict()` and, with `tta`, `learn.TTA()` on the
    validation set (a few seconds: the model runs over it `1 + 4` times),
    `learn.history` (every fit so far; no kept epoch), the last LR finder
    (`learn.lr_finder`) and schedule (`learn.sched`), the training
    augmentation, and Grad-CAM on `learn.model` at the data's framing.
    The time per stage adds up the epochs' seconds of each stage. A
    multi-label learner's thresholds are chosen by `opt_th` (one for all
    tags) on the plain predictions, as `kertransfer train` does.

    Args:
        run_dir: the run folder (see the module docstring for its files),
            or a `ConvLearner`.
        filename: name of the report written inside `run_dir`; for a
            learner, the path of the report (relative to the working
            directory; folders are created).
        num_images: images per class in the most-incorrect and
            most-uncertain grids (4, as in fast.ai lesson 1).
        num_top_losses: images in the top-losses grid.
        max_classes: with more classes, per-class grids are drawn only for
            the `max_classes` classes with the most errors.
        grad_cam: draw the Grad-CAM heatmaps of the top losses (loads
            `model.keras` and runs it on `num_top_losses` images).
        tta: for a learner, add `learn.TTA()`'s predictions (plain vs
            TTA accuracy; interpretation uses them). A run folder has its own.

    Returns:
        `pathlib.Path` of the written report.

    Raises:
        FileNotFoundError: if `run_dir`, `metrics.json` or
            `predictions.npz` does not exist
            (`kertransfer.run_folder.MissingRunFileError`).
        TypeError: if `run_dir` is neither a folder nor a learner.
        ValueError: if a required file is unreadable or newer than this
            kertransfer (`RunFolderError`), or `classes` does not match the
            number of columns of `probs`.

    Example:

    >>> path = write_report("runs/dogscats")
    >>> path.name
    'report.html'
    >>> write_report(learn, "reports/lesson1.html")  # in a notebook
    PosixPath('reports/lesson1.html')
    """
    if _is_learner(run_dir):
        return _learner_report(run_dir, pathlib.Path(filename), num_images, num_top_losses,
                               max_classes, grad_cam, tta)
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(
            "write_report takes a run folder (a path written by `kertransfer train`) or a "
            f"ConvLearner. Received {type(run_dir).__name__}."
        )
    run_dir = pathlib.Path(run_dir)
    run = RunFolder(run_dir)
    metrics = run.read_metrics()
    predictions = run.read_predictions(keys=("probs", "targets"))
    use_tta = "tta_probs" in predictions
    probs = predictions["tta_probs" if use_tta else "probs"]
    class_names = metrics.get("classes")
    if class_names is not None and len(class_names) != np.shape(probs)[-1]:
        raise ValueError(
            f"metrics.json lists {len(class_names)} classes but the "
            f"predictions have {np.shape(probs)[-1]} columns."
        )
    if class_names is None:
        class_names = [str(i) for i in range(np.shape(probs)[-1])]
    title = f"kertransfer report: {metrics.get('arch', 'model')} ({run_dir.name})"
    if metrics.get("multi_label"):
        sections = [
            summary_section(metrics, predictions, run_dir),
            dataset_section(metrics, class_names, run_dir),
            lr_section(metrics, run_dir),
            history_section(run_dir, metrics.get("kept")),
            f2_section(metrics, predictions),
            per_tag_section(metrics, predictions, class_names),
            time_section(metrics),
        ]
        return write_document(run_dir / filename, title, sections)
    paths = predictions.get("paths")
    interp = ClassificationInterpretation(
        probs,
        predictions["targets"],
        class_names,
        image_paths=None if paths is None else [str(p) for p in paths],
    )
    sections = [
        summary_section(metrics, predictions, run_dir),
        dataset_section(metrics, interp.class_names, run_dir),
        lr_section(metrics, run_dir),
        history_section(run_dir, metrics.get("kept")),
        accuracy_section(metrics, predictions),
        confusion_section(interp, "TTA" if use_tta else "plain"),
        image_sections(interp, num_images, num_top_losses, max_classes),
        *([grad_cam_section(interp, run, metrics, num_top_losses)] if grad_cam else []),
        time_section(metrics),
    ]
    return write_document(run_dir / filename, title, sections)


def _is_learner(obj):
    return all(hasattr(obj, name) for name in ("model", "data", "predict", "TTA", "history"))


def _stage_seconds(history):
    """`{stage: seconds}` added up from `learn.history`'s epochs, in order."""
    seconds = {}
    for row in history:
        stage = str(row.get("stage", "fit"))
        seconds[stage] = seconds.get(stage, 0.0) + float(row.get("seconds", 0.0))
    return seconds


def _learner_metrics(learn, probs, tta_probs, targets):
    """What `metrics.json` would hold, computed from a learner and its predictions."""
    data = learn.data
    stage_seconds = _stage_seconds(learn.history)
    metrics = {
        "classes": list(data.classes),
        "arch": learn.arch,
        "image_size": data.image_size,
        "dataset": data.summary(),
        "stage_seconds": stage_seconds,
        "wall_seconds": sum(stage_seconds.values()),
    }
    if learn.is_multi:
        chosen = np.round(np.broadcast_to(opt_th(probs, targets), probs.shape[1:]), 4)
        metrics.update({
            "multi_label": True,
            "valid_loss": float(np.mean(binary_cross_entropy(probs, targets))),
            "thresholds": [float(t) for t in chosen],
            "per_tag_threshold": False,
            "valid_f2": fbeta(probs, targets, threshold=chosen),
            "valid_f2_at_0.5": fbeta(probs, targets, threshold=0.5),
        })
        if tta_probs is not None:
            metrics["tta_f2"] = fbeta(tta_probs, targets, threshold=chosen)
            metrics["tta_f2_at_0.5"] = fbeta(tta_probs, targets, threshold=0.5)
        return metrics
    metrics["valid_loss"] = float(np.mean(cross_entropy(probs, targets)))
    metrics["valid_accuracy"] = float(np.mean(np.argmax(probs, axis=1) == targets))
    if tta_probs is not None:
        metrics["tta_accuracy"] = float(np.mean(np.argmax(tta_probs, axis=1) == targets))
    return metrics


def _learner_lr_section(learn):
    """The last LR finder and the last fit's schedule of a learner."""
    parts = ["<h3>Learning-rate finder (the last <code>lr_find</code>)</h3>"]
    finder = getattr(learn, "lr_finder", None)
    if finder is not None and finder.lrs:
        parts.append(img(figure_png(finder.plot().figure), "LR finder"))
    else:
        parts.append(note("The learner has run no lr_find."))
    parts.append("<h3>Learning-rate schedule of the last fit</h3>")
    record = learn.sched if hasattr(learn.sched, "lr_history") else None
    if record is not None and len(record.lr_history):
        parts.append(img(figure_png(record.plot_lr().figure), "learning-rate schedule"))
    else:
        parts.append(note("The learner has no fit since its last lr_find."))
    return section("learning-rates", "Learning rates", parts)


def _learner_report(learn, path, num_images, num_top_losses, max_classes, grad_cam, tta):
    """`write_report(learn, path)`: the report's sections from a learner."""
    data = learn.data
    probs, targets = learn.predict()
    tta_probs = learn.TTA()[0] if tta else None
    metrics = _learner_metrics(learn, probs, tta_probs, targets)
    predictions = {"probs": probs, "targets": targets}
    if tta_probs is not None:
        predictions["tta_probs"] = tta_probs
    class_names = metrics["classes"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unreadable image shows as a blank tile
        augmented = img(figure_png(data.plot_augmented(n=6, images=[0, len(data.train_paths) - 1])),
                        "augmented training images")
    history = pd.DataFrame(learn.history) if learn.history else None
    epochs = history_parts(history) if history is not None else [
        note("The learner has not been fitted yet: no epochs.")]
    head = [
        summary_section(metrics, predictions),
        dataset_section(metrics, class_names, augmented=augmented),
        _learner_lr_section(learn),
        section("history", "Loss and accuracy per epoch", epochs),
    ]
    title = f"kertransfer report: {learn.arch} (learner)"
    if learn.is_multi:
        sections = [*head, f2_section(metrics, predictions),
                    per_tag_section(metrics, predictions, class_names), time_section(metrics)]
        return write_document(path, title, sections)
    use_tta = tta_probs is not None
    interp = ClassificationInterpretation(
        tta_probs if use_tta else probs, targets, class_names,
        image_paths=[os.path.abspath(p) for p in data.valid_paths],
    )
    framing = data.valid_tfms.framing
    sections = [
        *head,
        accuracy_section(metrics, predictions),
        confusion_section(interp, "TTA" if use_tta else "plain"),
        image_sections(interp, num_images, num_top_losses, max_classes),
        *([grad_cam_parts(interp, num_top_losses, lambda: (learn.model, framing))] if grad_cam else []),
        time_section(metrics),
    ]
    return write_document(path, title, sections)


