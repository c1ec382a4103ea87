"""The sections of kertransfer's HTML report, one function each.

`kertransfer.report.write_report` assembles them from a run folder or a
learner: the summary, the data, the learning rates, the loss per epoch
(`plot_history`, also the trainer's `loss.png`), accuracy or F2, the
confusion matrix, the image grids, Grad-CAM and the time per stage; each
returns an HTML string (`kertransfer.report_html` holds the markup helpers).
`write_document` writes the page.
"""

import os
import pathlib
import warnings

import numpy as np
import pandas as pd

from kertransfer.files import atomic_path
from kertransfer.interpret import MultiLabelInterpretation
from kertransfer.interpret import cross_entropy
from kertransfer.metrics import binary_cross_entropy
from kertransfer.metrics import fbeta
from kertransfer.report_html import IMAGE_CHECK_SCRIPT
from kertransfer.report_html import STYLE
from kertransfer.report_html import esc
from kertransfer.report_html import figure_png
from kertransfer.report_html import format_number
from kertransfer.report_html import format_seconds
from kertransfer.report_html import img
from kertransfer.report_html import note
from kertransfer.report_html import png_or_note
from kertransfer.report_html import section
from kertransfer.report_html import table
from kertransfer.run_folder import RunFolder
from kertransfer.run_folder import RunFolderError

__all__ = [
    "describe_kept",
    "summary_section",
    "dataset_section",
    "lr_section",
    "plot_history",
    "history_section",
    "history_parts",
    "accuracy_section",
    "f2_section",
    "per_tag_section",
    "confusion_table",
    "confusion_section",
    "image_sections",
    "grad_cam_section",
    "grad_cam_parts",
    "time_section",
    "write_document",
]


def describe_kept(kept):
    """`metrics["kept"]` in words, e.g. "epoch 2 of the run (head_precomputed, its epoch 2)"."""
    where = f"epoch {kept.get('epoch', '?')} of the run ({kept.get('stage', '?')}"
    if "stage_epoch" in kept:
        where += f", its epoch {kept['stage_epoch']}"
    return f"{where}), valid loss {format_number(kept.get('val_loss'))}"


def summary_section(metrics, predictions, run_dir=None):
    scores = ("valid F2", "valid_f2"), ("TTA F2", "tta_f2")
    if not metrics.get("multi_label"):
        scores = ("valid accuracy", "valid_accuracy"), ("TTA accuracy", "tta_accuracy")
    cards = [
        *((label, format_number(metrics.get(key))) for label, key in scores),
        ("valid loss", format_number(metrics.get("valid_loss"))),
        ("wall time", format_seconds(metrics.get("wall_seconds"))),
    ]
    card_html = "".join(
        f'<div class="card"><div>{esc(label)}</div>'
        f'<div class="value">{esc(value)}</div></div>'
        for label, value in cards
    )
    values = {
        "architecture": str(metrics.get("arch", "n/a")),
        "image size": str(metrics.get("image_size", "n/a")),
        "validation items": str(len(predictions["targets"])),
    }
    if metrics.get("kept"):
        values["kept weights"] = describe_kept(metrics["kept"])
    if run_dir is None:
        values["source"] = "a learner (write_report(learn, ...))"
    else:
        values["run folder"] = str(run_dir)
    rows = pd.DataFrame({"value": list(values.values())}, index=list(values))
    return section(
        "summary", "Summary", [f'<div class="cards">{card_html}</div>',
                               table(rows)]
    )


def dataset_section(metrics, class_names, run_dir=None, augmented=None):
    dataset = metrics.get("dataset") or {}
    parts = []
    train_counts = dataset.get("train_counts") or {}
    valid_counts = dataset.get("valid_counts") or {}
    if train_counts or valid_counts:
        names = list(class_names)
        names += [n for n in [*train_counts, *valid_counts] if n not in names]
        frame = pd.DataFrame(
            {
                "train": [train_counts.get(n, 0) for n in names],
                "valid": [valid_counts.get(n, 0) for n in names],
            },
            index=pd.Index(names, name="class"),
        )
        frame.loc["total"] = frame.sum()
        parts.append(table(frame, table_id="dataset-counts"))
    else:
        parts.append(note("metrics.json has no dataset counts."))
    skipped = list(dataset.get("skipped") or [])
    if skipped:
        shown = skipped[:200]
        items = "".join(f"<li><code>{esc(p)}</code></li>" for p in shown)
        more = (
            f"<li>... and {len(skipped) - len(shown)} more</li>"
            if len(skipped) > len(shown) else ""
        )
        parts.append(
            f"<details><summary>{len(skipped)} unreadable file(s) skipped"
            f"</summary><ul>{items}{more}</ul></details>"
        )
    else:
        parts.append("<p>No files were skipped.</p>")
    if augmented is None and run_dir is not None and (run_dir / "augmented.png").is_file():
        augmented = png_or_note(run_dir, "augmented.png", "augmented training images")
    if augmented is not None:
        parts.append("<h3>Training augmentation (center crop, then copies)</h3>")
        parts.append(augmented)
    classes = ", ".join(esc(n) for n in class_names)
    parts.insert(0, f"<p>{len(class_names)} classes: {classes}</p>")
    return section("dataset", "Dataset", parts)


def lr_section(metrics, run_dir):
    parts = [
        "<h3>Learning-rate finder</h3>",
        png_or_note(run_dir, "lr_find.png", "LR finder, frozen body"),
        "<h3>Learning-rate finder after unfreezing</h3>",
        png_or_note(run_dir, "lr_find_unfrozen.png", "LR finder, unfrozen"),
        "<h3>Learning-rate schedule</h3>",
        png_or_note(run_dir, "lr_schedule.png", "learning-rate schedule"),
    ]
    lrs = metrics.get("lrs") or {}
    if lrs:
        frame = pd.DataFrame(
            {
                "learning rate per layer group": [
                    ", ".join(f"{float(lr):.3g}" for lr in np.ravel(v))
                    for v in lrs.values()
                ]
            },
            index=pd.Index([str(s) for s in lrs], name="stage"),
        )
        parts.append(table(frame, table_id="learning-rates"))
    return section("learning-rates", "Learning rates", parts)


def plot_history(history, kept=None, figsize=None):
    """Loss and accuracy per epoch over every stage, the kept epoch starred.

    The one loss plot of a run: the report draws it, and the trainer saves
    it as `loss.png`.

    Args:
        history: `history.csv` as a DataFrame, or `learn.history` (a list
            of dicts): columns `epoch` (of the run), `stage`, `loss`,
            `val_loss`, `accuracy`, `val_accuracy`, or a multi-label run's
            `f2`, `val_f2` (those present are drawn).
        kept: `metrics["kept"]` (`epoch`, ...): a star marks that epoch's
            validation loss, labelled "kept".
        figsize: `(width, height)` in inches (default 5.5 x 3.8 per panel).

    Returns:
        The matplotlib figure: a loss panel and an accuracy (or F2) panel,
        stage boundaries dotted and stage names on top.
    """
    from kertransfer.figures import subplots

    history = pd.DataFrame(history)
    panels = [
        ("loss", [c for c in ("loss", "val_loss") if c in history]),
        ("accuracy", [c for c in ("accuracy", "val_accuracy") if c in history]),
        ("F2", [c for c in ("f2", "val_f2") if c in history]),  # multi-label runs
    ]
    panels = [(name, cols) for name, cols in panels if cols]
    fig, axes = subplots(1, len(panels), figsize=figsize or (5.5 * len(panels), 3.8),
                             squeeze=False)
    x = np.arange(1, len(history) + 1)
    stages = (
        history["stage"].astype(str).tolist() if "stage" in history
        else ["all"] * len(history)
    )
    starts = [i for i in range(len(stages)) if i == 0 or stages[i] != stages[i - 1]]
    ends = starts[1:] + [len(stages)]
    for ax, (name, columns) in zip(axes.flat, panels):
        for column in columns:
            ax.plot(x, history[column].to_numpy(dtype=float), marker="o",
                    linestyle="--" if column.startswith("val_") else "-",
                    label=column)
        if kept and name == "loss" and "val_loss" in columns and "epoch" in history:
            at = np.flatnonzero(history["epoch"].to_numpy() == kept.get("epoch"))
            if len(at):
                ax.plot(x[at], history["val_loss"].to_numpy(dtype=float)[at], marker="*",
                        markersize=16, color="gold", markeredgecolor="black",
                        linestyle="none", label="kept")
        for start, end in zip(starts, ends):
            if start > 0:
                ax.axvline(start + 0.5, color="grey", linestyle=":")
            ax.text((start + end + 1) / 2, 1.01, stages[start], ha="center",
                    va="bottom", fontsize=8, transform=ax.get_xaxis_transform())
        ax.set_xlabel("epoch (all stages)")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def history_section(run_dir, kept=None):
    parts = []
    if kept:
        parts.append(
            f"<p>The run kept the weights of {esc(describe_kept(kept))}: the "
            "lowest validation loss of all its epochs, every stage included "
            "(&#9733; in the plot, <code>best</code> in history.csv). The "
            "accuracies of this report, TTA included, are measured on the same "
            "validation set, as in fast.ai.</p>"
        )
    history = None
    run = RunFolder(run_dir)
    if run.has(run.HISTORY):
        try:
            history = run.read_history()
        except RunFolderError as error:
            parts.append(note(f"history.csv could not be read ({error})."))
    else:
        parts.append(note("history.csv not found in the run folder; skipped."))
    return section("history", "Loss and accuracy per epoch", parts + history_parts(history, kept))


def history_parts(history, kept=None):
    """The loss plot and the table of `history` (a DataFrame, or None: nothing)."""
    parts = []
    if history is not None:
        plotted = {"loss", "val_loss", "accuracy", "val_accuracy"}
        if len(history) and plotted & set(history.columns):
            parts.append(img(figure_png(plot_history(history, kept)),
                             "loss and accuracy per epoch"))
        else:
            parts.append(note("history.csv has no loss/accuracy rows."))
        parts.append(
            "<details><summary>history.csv</summary>"
            f"{table(history, table_id='history')}</details>"
        )
    return parts


def accuracy_section(metrics, predictions):
    targets = predictions["targets"].astype(np.int64).reshape(-1)
    rows = {}
    for label, key, metric in (("plain", "probs", "valid_accuracy"),
                               ("TTA", "tta_probs", "tta_accuracy")):
        probs = predictions.get(key)
        recomputed = loss = None
        if probs is not None:
            recomputed = float(np.mean(np.argmax(probs, axis=1) == targets))
            loss = float(np.mean(cross_entropy(probs, targets)))
        rows[label] = {
            "accuracy (metrics.json)": metrics.get(metric),
            "accuracy (predictions.npz)": recomputed,
            "cross-entropy (predictions.npz)": loss,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    parts = [table(frame, table_id="accuracy")]
    if "tta_probs" not in predictions:
        parts.append(note("predictions.npz has no tta_probs; no TTA row."))
    return section("accuracy", "Plain vs TTA accuracy", parts)


def f2_section(metrics, predictions):
    """A multi-label run's F2 at 0.5 and at its thresholds, plain and TTA."""
    targets = predictions["targets"]
    thresholds = np.asarray(metrics.get("thresholds", 0.5), dtype=np.float64)
    rows = {}
    for label, key, prefix in (("plain", "probs", "valid"), ("TTA", "tta_probs", "tta")):
        probs = predictions.get(key)
        rows[label] = {
            "F2 at 0.5 (metrics.json)": metrics.get(f"{prefix}_f2_at_0.5"),
            "F2 at the threshold(s) (metrics.json)": metrics.get(f"{prefix}_f2"),
            "F2 at the threshold(s) (predictions.npz)": (
                None if probs is None else fbeta(probs, targets, threshold=thresholds)),
            "binary cross-entropy (predictions.npz)": (
                None if probs is None else float(np.mean(binary_cross_entropy(probs, targets)))),
        }
    frame = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    kind = "one per tag" if metrics.get("per_tag_threshold") else "one for all tags"
    parts = [
        ("<p>F2 (Kaggle Planet's metric: per image, recall weighted 4x over precision, then "
         f"averaged over images) at 0.5 and at the threshold(s) ({kind}) chosen on the plain "
         "validation predictions (<code>opt_th</code>, as fast.ai lesson 2): those "
         "<code>kertransfer predict</code> and the exports apply.</p>"),
        table(frame, table_id="f2-scores"),
    ]
    if "tta_probs" not in predictions:
        parts.append(note("predictions.npz has no tta_probs; no TTA row."))
    return section("f2", "F2, plain vs TTA", parts)


def per_tag_section(metrics, predictions, class_names):
    """Per-tag precision, recall and F2, and the F2-vs-threshold curve."""
    import matplotlib.pyplot as plt

    thresholds = metrics.get("thresholds", 0.5)
    targets = predictions["targets"]
    plain = MultiLabelInterpretation(predictions["probs"], targets, class_names, thresholds)
    use_tta = "tta_probs" in predictions
    interp = MultiLabelInterpretation(predictions["tta_probs"], targets, class_names, thresholds) if use_tta else plain
    fig, ax = plt.subplots(figsize=(6.5, 4))
    plain.plot_fbeta_curve(ax=ax, label="F2, plain")
    if use_tta:
        interp.plot_fbeta_curve(ax=ax, label="F2, TTA")
    fig.tight_layout()
    parts = [
        (f"<p>From the {'TTA' if use_tta else 'plain'} predictions: a tag is predicted when its "
         "probability is above its threshold. Precision, recall and F2 of each tag over the "
         "validation images; support: the images having the tag.</p>"),
        table(interp.per_class_report(), table_id="per-tag-report"),
        "<h3>F2 against the threshold</h3>",
        "<p>Every tag at one threshold; dotted, the run's threshold.</p>",
        img(figure_png(fig), "F2 against the threshold"),
        note("Confusion matrices, image grids and Grad-CAM are drawn for single-label runs only."),
    ]
    return section("per-tag", "Per-tag precision, recall and F2", parts)


def confusion_table(interp, normalize=False):
    """Counts (`id="confusion-matrix"`, cells `cm-cell`) or row proportions
    (`id="confusion-matrix-normalized"`, cells `cm-norm-cell`)."""
    cm = interp.confusion_matrix(normalize=normalize)
    names = interp.class_names
    kind, table_id = ("cm-norm-cell", "confusion-matrix-normalized") if normalize else ("cm-cell", "confusion-matrix")
    header = "".join(f'<th scope="col">{esc(n)}</th>' for n in names)
    rows = []
    for i, actual in enumerate(names):
        cells = "".join(
            f'<td class="{kind}{" cm-diag" if i == j else ""}" '
            f'data-row="{i}" data-col="{j}" data-actual="{esc(actual)}" '
            f'data-predicted="{esc(names[j])}">{f"{cm[i, j]:.3f}" if normalize else cm[i, j]}</td>'
            for j in range(len(names))
        )
        rows.append(f'<tr><th scope="row">{esc(actual)}</th>{cells}</tr>')
    return (
        f'<table id="{table_id}" class="confusion-matrix">'
        f"<thead><tr><th>actual \\ predicted</th>{header}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def confusion_section(interp, source):
    import matplotlib.pyplot as plt

    side = min(max(4.0, 0.55 * interp.num_classes + 2.0), 15.0)
    fig, (counts_ax, rates_ax) = plt.subplots(1, 2, figsize=(2 * side, side))
    interp.plot_confusion_matrix(ax=counts_ax)
    interp.plot_confusion_matrix(normalize=True, ax=rates_ax)
    fig.tight_layout()
    parts = [
        (f"<p>From the {source} predictions; rows are actual classes, "
         "columns predicted. Counts, then each row divided by its total (rows "
         "sum to 1; the diagonal is each class's recall).</p>"),
        confusion_table(interp),
        confusion_table(interp, normalize=True),
        img(figure_png(fig), "confusion matrix: counts and row-normalized"),
        "<h3>Most confused pairs</h3>",
    ]
    confused = interp.most_confused()
    if len(confused):
        parts.append(table(confused.head(20), table_id="most-confused",
                            index=False))
    else:
        parts.append("<p>No item was misclassified.</p>")
    parts += ["<h3>Per-class report</h3>",
              table(interp.per_class_report(), table_id="per-class-report")]
    return section("confusion", "Confusion matrix", parts)


def image_sections(interp, num_images, num_top_losses, max_classes):
    if interp.image_paths is None:
        return section("images", "Images", [
            note("predictions.npz has no paths; image grids skipped.")])
    missing = sum(not os.path.isfile(p) for p in interp.image_paths)
    parts = []
    if missing:
        parts.append(note(
            f"{missing} of {len(interp.image_paths)} validation images are "
            "missing on this machine; their tiles show a placeholder."))
    cm = interp.confusion_matrix()
    errors = cm.sum(axis=1) - np.diag(cm)
    classes = list(range(interp.num_classes))
    if len(classes) > max_classes:
        classes = sorted(classes, key=lambda c: -errors[c])[:max_classes]
        parts.append(note(
            f"Showing the {max_classes} classes with the most errors."))

    def grid(fig, alt):
        return img(figure_png(fig), alt)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing files are noted above
        parts.append("<h3>Most incorrect</h3>")
        for c in classes:
            name = interp.class_names[c]
            parts.append(grid(interp.plot_most_incorrect(c, num_images),
                              f"most incorrect {name}"))
        parts.append("<h3>Most uncertain</h3>")
        for c in classes:  # each grid shows images of its class only
            name = interp.class_names[c]
            parts.append(grid(interp.plot_most_uncertain(c, num_images),
                              f"most uncertain {name}"))
        parts.append("<h3>Top losses</h3>")
        parts.append(grid(interp.plot_top_losses(num_top_losses),
                          "top losses"))
    return section("images", "Images", parts)


def grad_cam_section(interp, run, metrics, k):
    """The top losses with their Grad-CAM heatmap, or a note saying why not."""
    from kertransfer.predict import run_framing

    if interp.image_paths is None:
        return grad_cam_parts(interp, k, skipped="predictions.npz has no paths; Grad-CAM skipped.")
    if not run.has(run.MODEL):
        return grad_cam_parts(interp, k, skipped="model.keras not found in the run folder; Grad-CAM skipped.")
    return grad_cam_parts(interp, k, lambda: (run.load_model(), run_framing(run.path, metrics)))


def grad_cam_parts(interp, k, load=None, skipped=None):
    """The Grad-CAM section: `load() -> (model, framing)`, or the note `skipped`."""
    parts = [(
        "<p>Grad-CAM (Selvaraju et al. 2017) of the class the model predicted: "
        "red where the last feature map held the evidence for it. On a wrong "
        "prediction, it shows what the model looked at instead.</p>"
    )]
    if skipped:
        parts.append(note(skipped))
    else:
        try:
            model, framing = load()
            fig = interp.plot_grad_cam(model, framing, k=k)
            parts.append(img(figure_png(fig), "Grad-CAM of the top losses"))
        except (OSError, ValueError) as error:
            parts.append(note(f"Grad-CAM skipped: {error}"))
    return section("grad-cam", "Where the model looked (Grad-CAM)", parts)


def time_section(metrics):
    stage_seconds = metrics.get("stage_seconds") or {}
    wall = metrics.get("wall_seconds")
    parts = []
    if stage_seconds:
        seconds = [float(s) for s in stage_seconds.values()]
        frame = pd.DataFrame(
            {
                "seconds": seconds,
                "time": [format_seconds(s) for s in seconds],
                "share of wall time": [
                    f"{100 * s / float(wall):.1f}%" if wall else "n/a"
                    for s in seconds
                ],
            },
            index=pd.Index([str(s) for s in stage_seconds], name="stage"),
        )
        parts.append(table(frame, table_id="stage-seconds", float_digits=1))
    else:
        parts.append(note("metrics.json has no stage_seconds."))
    parts.append(f"<p>Wall time for the whole run: {format_seconds(wall)}.</p>")
    return section("time", "Time per stage", parts)


def write_document(path, title, sections):
    """Writes the report's HTML page to `path` (atomically); returns `path`."""
    document = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{STYLE}</style>",
        f"<script>{IMAGE_CHECK_SCRIPT}</script>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        *sections,
        "</body>",
        "</html>",
    ])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        pathlib.Path(tmp).write_text(document, encoding="utf-8")
    return path
