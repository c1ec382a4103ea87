"""One self-contained HTML report from a training run folder.

`write_report(run_dir)` reads what the trainer left in `run_dir` and writes
`run_dir/report.html`: a single file, every picture inlined as a base64 PNG
data URI, no external resources, so it can be mailed, archived or opened
offline. Run folder contract (all written by the trainer):

- `metrics.json` (required): `valid_accuracy`, `tta_accuracy`, `valid_loss`,
  `classes`, `arch`, `image_size`, `lrs` ({stage: [per-group LR]}),
  `stage_seconds` ({stage: seconds}), `wall_seconds`, `dataset`
  (`train_counts`, `valid_counts`: {class: n}; `skipped`: [path]);
  optionally `kept` (the epoch whose weights the run kept: `stage`,
  `epoch` of the run, `stage_epoch`, `val_loss`).
- `predictions.npz` (required): `probs` (n, c), `targets` (n,), and
  optionally `tta_probs` (n, c) and `paths` (n,) as a str array.
- `history.csv` (optional): one row per epoch, columns `epoch`, `stage`,
  `loss`, `accuracy`, `val_loss`, `val_accuracy`, `best` (True on the
  kept epoch's row), ...
- `lr_find.png`, `lr_find_unfrozen.png`, `lr_schedule.png`, `loss.png`,
  `augmented.png` (optional).

Missing optional files are noted in the report. A small inline script
records, once the page has loaded, how many images decoded
(`<body data-images-loaded=... data-images-broken=...>`), so a headless
browser can check the report.
"""

import base64
import html
import io
import os
import pathlib
import warnings

import numpy as np
import pandas as pd

from kertransfer.interpret import ClassificationInterpretation
from kertransfer.interpret import cross_entropy
from kertransfer.run_folder import RunFolder
from kertransfer.run_folder import RunFolderError
from kertransfer.run_folder import atomic_path

__all__ = ["write_report"]

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
.note { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.8em; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; }
.card .value { font-size: 1.6em; font-weight: bold; }
td.cm-diag { background: #e6f2e6; font-weight: bold; }
code { font-size: 0.9em; }
"""

# Counts decoded and broken <img> once everything has loaded; a headless
# browser reads the attributes back with --dump-dom.
_IMAGE_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, broken = 0;
  for (var i = 0; i < images.length; i++) {
    if (!images[i].complete || images[i].naturalWidth === 0) { broken++; }
  }
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.length - broken;
  document.body.dataset.imagesBroken = broken;
});
"""


def _esc(value):
    return html.escape(str(value), quote=True)


def _note(text):
    return f'<p class="note">{_esc(text)}</p>'


def _section(section_id, title, parts):
    body = "\n".join(parts)
    return f'<section id="{section_id}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>'


def _img(png_bytes, alt):
    data = base64.b64encode(png_bytes).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _figure_png(fig):
    """PNG bytes of a matplotlib figure; closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _png_file(path):
    """PNG bytes of an image file (re-encoded if it is not a PNG), or None."""
    from PIL import Image

    raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            if image.format == "PNG":
                return raw
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
    except (OSError, ValueError):
        return None


def _format_number(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _format_seconds(seconds):
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


def _table(frame, table_id=None, float_digits=4, index=True):
    """HTML table from a DataFrame (pandas escapes the cell text)."""
    return frame.to_html(
        border=0,
        index=index,
        float_format=lambda x: f"{x:.{float_digits}f}",
        table_id=table_id,
        na_rep="n/a",
    )


def _describe_kept(kept):
    """`metrics["kept"]` in words, e.g. "epoch 2 of the run (head_precomputed, its epoch 2)"."""
    where = f"epoch {kept.get('epoch', '?')} of the run ({kept.get('stage', '?')}"
    if "stage_epoch" in kept:
        where += f", its epoch {kept['stage_epoch']}"
    return f"{where}), valid loss {_format_number(kept.get('val_loss'))}"


def _summary_section(metrics, predictions, run_dir):
    cards = [
        ("valid accuracy", _format_number(metrics.get("valid_accuracy"))),
        ("TTA accuracy", _format_number(metrics.get("tta_accuracy"))),
        ("valid loss", _format_number(metrics.get("valid_loss"))),
        ("wall time", _format_seconds(metrics.get("wall_seconds"))),
    ]
    card_html = "".join(
        f'<div class="card"><div>{_esc(label)}</div>'
        f'<div class="value">{_esc(value)}</div></div>'
        for label, value in cards
    )
    values = {
        "architecture": str(metrics.get("arch", "n/a")),
        "image size": str(metrics.get("image_size", "n/a")),
        "validation items": str(len(predictions["targets"])),
    }
    if metrics.get("kept"):
        values["kept weights"] = _describe_kept(metrics["kept"])
    values["run folder"] = str(run_dir)
    rows = pd.DataFrame({"value": list(values.values())}, index=list(values))
    return _section(
        "summary", "Summary", [f'<div class="cards">{card_html}</div>',
                               _table(rows)]
    )


def _dataset_section(metrics, class_names, run_dir=None):
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
        parts.append(_table(frame, table_id="dataset-counts"))
    else:
        parts.append(_note("metrics.json has no dataset counts."))
    skipped = list(dataset.get("skipped") or [])
    if skipped:
        shown = skipped[:200]
        items = "".join(f"<li><code>{_esc(p)}</code></li>" for p in shown)
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
    if run_dir is not None and (run_dir / "augmented.png").is_file():
        parts.append("<h3>Training augmentation (center crop, then copies)</h3>")
        parts.append(_png_or_note(run_dir, "augmented.png", "augmented training images"))
    classes = ", ".join(_esc(n) for n in class_names)
    parts.insert(0, f"<p>{len(class_names)} classes: {classes}</p>")
    return _section("dataset", "Dataset", parts)


def _png_or_note(run_dir, filename, alt):
    path = run_dir / filename
    if not path.is_file():
        return _note(f"{filename} not found in the run folder; skipped.")
    png = _png_file(path)
    if png is None:
        return _note(f"{filename} is not a readable image; skipped.")
    return _img(png, alt)


def _lr_section(metrics, run_dir):
    parts = [
        "<h3>Learning-rate finder</h3>",
        _png_or_note(run_dir, "lr_find.png", "LR finder, frozen body"),
        "<h3>Learning-rate finder after unfreezing</h3>",
        _png_or_note(run_dir, "lr_find_unfrozen.png", "LR finder, unfrozen"),
        "<h3>Learning-rate schedule</h3>",
        _png_or_note(run_dir, "lr_schedule.png", "learning-rate schedule"),
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
        parts.append(_table(frame, table_id="learning-rates"))
    return _section("learning-rates", "Learning rates", parts)


def _history_figure(history, kept=None):
    import matplotlib.pyplot as plt

    panels = [
        ("loss", [c for c in ("loss", "val_loss") if c in history]),
        ("accuracy", [c for c in ("accuracy", "val_accuracy") if c in history]),
    ]
    panels = [(name, cols) for name, cols in panels if cols]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8),
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


def _history_section(run_dir, kept=None):
    parts = []
    if kept:
        parts.append(
            f"<p>The run kept the weights of {_esc(_describe_kept(kept))}: the "
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
            parts.append(_note(f"history.csv could not be read ({error})."))
    else:
        parts.append(_note("history.csv not found in the run folder; skipped."))
    if history is not None:
        plotted = {"loss", "val_loss", "accuracy", "val_accuracy"}
        if len(history) and plotted & set(history.columns):
            parts.append(_img(_figure_png(_history_figure(history, kept)),
                              "loss and accuracy per epoch"))
        else:
            parts.append(_note("history.csv has no loss/accuracy rows."))
        parts.append(
            "<details><summary>history.csv</summary>"
            f"{_table(history, table_id='history')}</details>"
        )
    if (run_dir / "loss.png").is_file():
        parts.append("<h3>Loss recorded by the trainer</h3>")
        parts.append(_png_or_note(run_dir, "loss.png", "training loss"))
    else:
        parts.append(_note("loss.png not found in the run folder; skipped."))
    return _section("history", "Loss and accuracy per epoch", parts)


def _accuracy_section(metrics, predictions):
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
    parts = [_table(frame, table_id="accuracy")]
    if "tta_probs" not in predictions:
        parts.append(_note("predictions.npz has no tta_probs; no TTA row."))
    return _section("accuracy", "Plain vs TTA accuracy", parts)


def _confusion_table(interp):
    cm = interp.confusion_matrix()
    names = interp.class_names
    header = "".join(f'<th scope="col">{_esc(n)}</th>' for n in names)
    rows = []
    for i, actual in enumerate(names):
        cells = "".join(
            f'<td class="cm-cell{" cm-diag" if i == j else ""}" '
            f'data-row="{i}" data-col="{j}" data-actual="{_esc(actual)}" '
            f'data-predicted="{_esc(names[j])}">{cm[i, j]}</td>'
            for j in range(len(names))
        )
        rows.append(f'<tr><th scope="row">{_esc(actual)}</th>{cells}</tr>')
    return (
        '<table id="confusion-matrix" class="confusion-matrix">'
        f"<thead><tr><th>actual \\ predicted</th>{header}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _confusion_section(interp, source):
    fig = interp.plot_confusion_matrix().figure
    parts = [
        f"<p>From the {source} predictions; rows are actual classes, "
        "columns predicted.</p>",
        _confusion_table(interp),
        _img(_figure_png(fig), "confusion matrix"),
        "<h3>Most confused pairs</h3>",
    ]
    confused = interp.most_confused()
    if len(confused):
        parts.append(_table(confused.head(20), table_id="most-confused",
                            index=False))
    else:
        parts.append("<p>No item was misclassified.</p>")
    parts += ["<h3>Per-class report</h3>",
              _table(interp.per_class_report(), table_id="per-class-report")]
    return _section("confusion", "Confusion matrix", parts)


def _image_sections(interp, num_images, num_top_losses, max_classes):
    if interp.image_paths is None:
        return _section("images", "Images", [
            _note("predictions.npz has no paths; image grids skipped.")])
    missing = sum(not os.path.isfile(p) for p in interp.image_paths)
    parts = []
    if missing:
        parts.append(_note(
            f"{missing} of {len(interp.image_paths)} validation images are "
            "missing on this machine; their tiles show a placeholder."))
    cm = interp.confusion_matrix()
    errors = cm.sum(axis=1) - np.diag(cm)
    classes = list(range(interp.num_classes))
    if len(classes) > max_classes:
        classes = sorted(classes, key=lambda c: -errors[c])[:max_classes]
        parts.append(_note(
            f"Showing the {max_classes} classes with the most errors."))

    def grid(fig, alt):
        return _img(_figure_png(fig), alt)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing files are noted above
        parts.append("<h3>Most incorrect</h3>")
        for c in classes:
            name = interp.class_names[c]
            parts.append(grid(interp.plot_most_incorrect(c, num_images),
                              f"most incorrect {name}"))
        parts.append("<h3>Most uncertain</h3>")
        # With two classes, |p0 - 1/2| == |p1 - 1/2|: one grid says it all.
        for c in classes[:1] if interp.num_classes == 2 else classes:
            name = interp.class_names[c]
            parts.append(grid(interp.plot_most_uncertain(c, num_images),
                              f"most uncertain {name}"))
        parts.append("<h3>Top losses</h3>")
        parts.append(grid(interp.plot_top_losses(num_top_losses),
                          "top losses"))
    return _section("images", "Images", parts)


def _time_section(metrics):
    stage_seconds = metrics.get("stage_seconds") or {}
    wall = metrics.get("wall_seconds")
    parts = []
    if stage_seconds:
        seconds = [float(s) for s in stage_seconds.values()]
        frame = pd.DataFrame(
            {
                "seconds": seconds,
                "time": [_format_seconds(s) for s in seconds],
                "share of wall time": [
                    f"{100 * s / float(wall):.1f}%" if wall else "n/a"
                    for s in seconds
                ],
            },
            index=pd.Index([str(s) for s in stage_seconds], name="stage"),
        )
        parts.append(_table(frame, table_id="stage-seconds", float_digits=1))
    else:
        parts.append(_note("metrics.json has no stage_seconds."))
    parts.append(f"<p>Wall time for the whole run: {_format_seconds(wall)}.</p>")
    return _section("time", "Time per stage", parts)


def write_report(run_dir, filename="report.html", num_images=4,
                 num_top_losses=8, max_classes=10):
    """Writes one self-contained HTML report of a training run.

    The report shows the dataset summary, the learning-rate finder curves
    and schedule, loss and accuracy per epoch with stage boundaries, plain
    vs TTA accuracy, the confusion matrix (as a table with
    `id="confusion-matrix"`, each cell `class="cm-cell"` with `data-row`
    and `data-col`, and as a plot), the per-class report, image grids of
    the most incorrect, most uncertain and highest-loss validation images
    (fast.ai v0.7 lesson 1) and the time per stage. Interpretation uses the
    TTA predictions when `predictions.npz` has them.

    Args:
        run_dir: the run folder (see the module docstring for its files).
        filename: name of the report written inside `run_dir`.
        num_images: images per class in the most-incorrect and
            most-uncertain grids (4, as in fast.ai lesson 1).
        num_top_losses: images in the top-losses grid.
        max_classes: with more classes, per-class grids are drawn only for
            the `max_classes` classes with the most errors.

    Returns:
        `pathlib.Path` of the written report.

    Raises:
        FileNotFoundError: if `run_dir`, `metrics.json` or
            `predictions.npz` does not exist
            (`kertransfer.run_folder.MissingRunFileError`).
        ValueError: if a required file is unreadable or newer than this
            kertransfer (`RunFolderError`), or `classes` does not match the
            number of columns of `probs`.

    Example:

    >>> path = write_report("runs/dogscats")
    >>> path.name
    'report.html'
    """
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
    paths = predictions.get("paths")
    interp = ClassificationInterpretation(
        probs,
        predictions["targets"],
        class_names,
        image_paths=None if paths is None else [str(p) for p in paths],
    )
    title = f"kertransfer report: {metrics.get('arch', 'model')} ({run_dir.name})"
    sections = [
        _summary_section(metrics, predictions, run_dir),
        _dataset_section(metrics, interp.class_names, run_dir),
        _lr_section(metrics, run_dir),
        _history_section(run_dir, metrics.get("kept")),
        _accuracy_section(metrics, predictions),
        _confusion_section(interp, "TTA" if use_tta else "plain"),
        _image_sections(interp, num_images, num_top_losses, max_classes),
        _time_section(metrics),
    ]
    document = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_IMAGE_CHECK_SCRIPT}</script>",
        "</head>",
        "<body>",
        f"<h1>{_esc(title)}</h1>",
        *sections,
        "</body>",
        "</html>",
    ])
    path = run_dir / filename
    with atomic_path(path) as tmp:
        pathlib.Path(tmp).write_text(document, encoding="utf-8")
    return path
