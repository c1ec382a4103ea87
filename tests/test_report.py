"""Tests for kertransfer.report on a realistic run folder.

The run's validation images are small synthetic JPEGs. kertransfer.report is
numpy, pandas and matplotlib: these tests run in the TensorFlow pass only.
"""

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from kertransfer.interpret import ClassificationInterpretation  # noqa: E402
from kertransfer.no_tensorflow import set_seed
from kertransfer.report import plot_history
from kertransfer.report import write_report  # noqa: E402

from conftest import write_synthetic_images  # noqa: E402

pytestmark = pytest.mark.one_backend

CLASSES = ["cats", "dogs"]
PER_CLASS = 12
# Hand-made predictions on 12 cats then 12 dogs. Plain: cats 2 and 5 and
# dog 14 are wrong. TTA fixes cat 5 and breaks dog 20.
PLAIN_WRONG = {2, 5, 14}
TTA_WRONG = {2, 14, 20}
TTA_CONFUSION = [[11, 1], [2, 10]]


def _probs(wrong):
    p_true = np.linspace(0.6, 0.97, 2 * PER_CLASS)
    for i in wrong:
        p_true[i] = 0.1 + 0.05 * (i % 5)
    targets = np.repeat([0, 1], PER_CLASS)
    probs = np.empty((2 * PER_CLASS, 2))
    probs[np.arange(2 * PER_CLASS), targets] = p_true
    probs[np.arange(2 * PER_CLASS), 1 - targets] = 1 - p_true
    return probs, targets


def _save_png(path, ys, title):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(ys)
    ax.set_title(title)
    fig.savefig(path, format="png", dpi=50)
    plt.close(fig)


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory):
    return write_synthetic_images(
        tmp_path_factory.mktemp("valid"), {name: PER_CLASS for name in CLASSES},
        size=96, formats=("jpg",))


@pytest.fixture
def run_dir(tmp_path, valid_dir):
    run = tmp_path / "run"
    run.mkdir()
    paths = []
    for name in CLASSES:
        files = sorted((valid_dir / name).glob("*.jpg"))
        assert len(files) == PER_CLASS, f"expected images in {valid_dir / name}"
        paths += [str(p) for p in files]
    probs, targets = _probs(PLAIN_WRONG)
    tta_probs, _ = _probs(TTA_WRONG)
    np.savez(run / "predictions.npz", probs=probs, tta_probs=tta_probs,
             targets=targets, paths=np.asarray(paths, dtype=str))
    metrics = {
        "valid_accuracy": 21 / 24,
        "tta_accuracy": 21 / 24,
        "valid_loss": 0.3124,
        "classes": CLASSES,
        "arch": "resnet34",
        "image_size": 224,
        "lrs": {"frozen": [0.01], "unfrozen": [1e-4, 1e-3, 1e-2]},
        "stage_seconds": {"lr_find": 12.5, "frozen": 80.0, "unfrozen": 302.0},
        "wall_seconds": 400.0,
        "dataset": {
            "train_counts": {"cats": 11500, "dogs": 11500},
            "valid_counts": {"cats": 250, "dogs": 250},
            "skipped": ["/data/train/cats/cat.666.jpg"],
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    epochs = [("frozen", 0), ("frozen", 1), ("frozen", 2),
              ("unfrozen", 0), ("unfrozen", 1)]
    lines = ["epoch,stage,loss,accuracy,val_loss,val_accuracy,learning_rate"]
    for row, (stage, epoch) in enumerate(epochs):
        lines.append(f"{epoch},{stage},{0.5 - 0.05 * row:.3f},"
                     f"{0.8 + 0.02 * row:.3f},{0.45 - 0.03 * row:.3f},"
                     f"{0.82 + 0.015 * row:.3f},0.01")
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    curve = np.exp(-np.linspace(0, 3, 50)) + 0.1 * np.linspace(0, 1, 50) ** 4
    _save_png(run / "lr_find.png", curve, "lr_find")
    _save_png(run / "lr_schedule.png", np.cos(np.linspace(0, 3, 50)), "lrs")
    _save_png(run / "loss.png", curve[::-1], "loss")
    _save_png(run / "augmented.png", curve * 2, "augmented")
    return run


class _ReportParser(html.parser.HTMLParser):
    """Collects confusion-matrix cells and <img>/<link>/<script> sources."""

    def __init__(self):
        super().__init__()
        self.cells = {}
        self.norm_cells = {}
        self.sources = []
        self.alts = []
        self.tags = []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        for key in ("src", "href"):
            if key in attrs:
                self.sources.append((tag, attrs[key]))
        if tag == "img":
            self.alts.append(attrs.get("alt"))
        classes = (attrs.get("class") or "").split()
        for kind, cells in (("cm-cell", self.cells), ("cm-norm-cell", self.norm_cells)):
            if tag == "td" and kind in classes:
                self._cell = (int(attrs["data-row"]), int(attrs["data-col"]))
                self._cells = cells
                cells[self._cell] = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cells[self._cell] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None


def _parse(path):
    parser = _ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _confusion_from_html(parser, num_classes):
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for (row, col), text in parser.cells.items():
        matrix[row, col] = int(text)
    assert len(parser.cells) == num_classes ** 2
    return matrix


def _tta_interpretation(run_dir):
    """The interpretation the report should show, and the validation size."""
    with np.load(run_dir / "predictions.npz") as arrays:
        interp = ClassificationInterpretation(
            arrays["tta_probs"], arrays["targets"], CLASSES)
        return interp, len(arrays["targets"])


def test_report_confusion_matrix_matches_interpretation(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.count('id="confusion-matrix"') == 1
    matrix = _confusion_from_html(_parse(path), 2)
    interp, num_valid = _tta_interpretation(run_dir)
    np.testing.assert_array_equal(matrix, interp.confusion_matrix())
    np.testing.assert_array_equal(matrix, TTA_CONFUSION)
    assert matrix.sum() == num_valid == 2 * PER_CLASS


def test_report_images_are_inline_pngs(run_dir):
    path = write_report(run_dir)
    parser = _parse(path)
    images = [src for tag, src in parser.sources if tag == "img"]
    # augmented.png, lr_find, lr_schedule, history plot, confusion matrices
    # (counts and normalized), 2 most-incorrect grids, 2 most-uncertain
    # grids (one per class), top losses. No model.keras: no Grad-CAM.
    assert len(images) == 10
    for src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(src[len(prefix):]))) as im:
            assert im.format == "PNG"
            im.verify()


def test_report_has_no_external_resources(run_dir):
    path = write_report(run_dir)
    parser = _parse(path)
    assert parser.sources and all(
        src.startswith("data:") for _, src in parser.sources)
    assert "link" not in parser.tags and "iframe" not in parser.tags
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "",
                  path.read_text(encoding="utf-8"))
    assert "http" not in text.lower()
    assert "url(" not in text and "@import" not in text


def test_report_contents(run_dir):
    text = write_report(run_dir).read_text(encoding="utf-8")
    for expected in (
        "resnet34", "11500", "cat.666.jpg",  # dataset summary, skipped file
        "lr_find_unfrozen.png not found",  # missing optional file is noted
        "Plain vs TTA", "Time per stage", "5 min 2 s",  # unfrozen stage
        "Most incorrect", "Most uncertain", "Top losses",
        "0.0001, 0.001, 0.01",  # per-group LRs
    ):
        assert expected in text, expected
    # Plain accuracy recomputed from predictions.npz: 21/24.
    accuracy_table = re.search(r'<table[^>]*id="accuracy".*?</table>', text,
                               re.S).group(0)
    assert f"{21 / 24:.4f}" in accuracy_table


def test_report_names_the_kept_epoch(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The run kept the third frozen epoch (row 3 of history.csv, val_loss 0.39).
    metrics["kept"] = {"stage": "frozen", "epoch": 2, "stage_epoch": 3, "val_loss": 0.39}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    text = write_report(run_dir).read_text(encoding="utf-8")
    summary = re.search(r'<section id="summary">.*?</section>', text, re.DOTALL).group(0)
    assert "kept weights" in summary
    assert "epoch 2 of the run (frozen, its epoch 3), valid loss 0.3900" in summary
    history = re.search(r'<section id="history">.*?</section>', text, re.DOTALL).group(0)
    assert "The run kept the weights of epoch 2 of the run (frozen, its epoch 3)" in history


def test_the_loss_is_plotted_once(run_dir):
    # The run folder also holds the trainer's loss.png: the report draws the
    # loss from history.csv, once, and does not show loss.png beside it.
    parser = _parse(write_report(run_dir))
    assert parser.alts.count("loss and accuracy per epoch") == 1
    assert "training loss" not in parser.alts
    assert "Loss recorded by the trainer" not in (run_dir / "report.html").read_text()


def test_history_plot_stars_the_kept_epoch():
    history = [
        {"epoch": 1, "stage": "head", "loss": 0.9, "val_loss": 0.5, "accuracy": 0.6, "val_accuracy": 0.7},
        {"epoch": 2, "stage": "head", "loss": 0.7, "val_loss": 0.3, "accuracy": 0.7, "val_accuracy": 0.8},
        {"epoch": 3, "stage": "unfrozen", "loss": 0.5, "val_loss": 0.4, "accuracy": 0.8, "val_accuracy": 0.9},
    ]
    fig = plot_history(history, kept={"stage": "head", "epoch": 2, "stage_epoch": 2, "val_loss": 0.3})
    loss_ax, accuracy_ax = fig.axes
    (star,) = [line for line in loss_ax.lines if line.get_label() == "kept"]
    assert star.get_marker() == "*"
    assert list(star.get_xdata()) == [2] and list(star.get_ydata()) == [0.3]
    assert "kept" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert not [line for line in accuracy_ax.lines if line.get_label() == "kept"]
    plt.close(fig)


def test_report_normalized_confusion_matrix_rows_sum_to_one(run_dir):
    parser = _parse(write_report(run_dir))
    normalized = np.zeros((2, 2))
    for (row, col), text in parser.norm_cells.items():
        normalized[row, col] = float(text)
    assert len(parser.norm_cells) == 4
    # TTA_CONFUSION [[11, 1], [2, 10]], each row over its 12 items.
    np.testing.assert_allclose(normalized, [[11 / 12, 1 / 12], [2 / 12, 10 / 12]], atol=5e-4)
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(_confusion_from_html(parser, 2), TTA_CONFUSION)  # counts beside


def test_report_has_a_most_uncertain_grid_per_class(run_dir):
    parser = _parse(write_report(run_dir))
    assert [a for a in parser.alts if a.startswith("most uncertain")] == ["most uncertain cats", "most uncertain dogs"]


def test_report_grad_cam_of_the_top_losses(run_dir):
    import keras

    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "model.keras not found in the run folder; Grad-CAM skipped." in text
    set_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(run_dir / "model.keras")
    parser = _parse(write_report(run_dir, num_top_losses=3))
    assert parser.alts.count("Grad-CAM of the top losses") == 1
    assert "Grad-CAM skipped" not in (run_dir / "report.html").read_text()
    assert len(parser.alts) == 11


def test_missing_optional_files_are_noted(run_dir):
    for name in ("history.csv", "lr_find.png", "lr_schedule.png", "loss.png"):
        (run_dir / name).unlink()
    with np.load(run_dir / "predictions.npz") as arrays:
        np.savez(run_dir / "predictions.npz", probs=arrays["probs"],
                 targets=arrays["targets"])
    text = write_report(run_dir).read_text(encoding="utf-8")
    for name in ("history.csv", "lr_find.png", "lr_schedule.png"):
        assert f"{name} not found" in text
    assert "loss.png" not in text  # the loss comes from history.csv
    assert "no tta_probs" in text and "no paths" in text
    # Without TTA the matrix comes from the plain predictions.
    matrix = _confusion_from_html(_parse(run_dir / "report.html"), 2)
    np.testing.assert_array_equal(matrix, [[10, 2], [1, 11]])


def test_unreadable_optional_files_are_noted(run_dir):
    (run_dir / "lr_find.png").write_bytes(b"not a png")
    (run_dir / "history.csv").write_text("")
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "lr_find.png is not a readable image" in text
    assert "history.csv could not be read" in text


@pytest.mark.parametrize("name", ["metrics.json", "predictions.npz"])
def test_missing_required_file_names_it(run_dir, name):
    (run_dir / name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(name)):
        write_report(run_dir)


def test_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_class_count_mismatch_raises(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["classes"] = ["cats", "dogs", "birds"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="3 classes"):
        write_report(run_dir)


def _chromium():
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "The headless report check needs Chromium: run "
            "`apt-get update && apt-get install -y chromium`."
        )
    return binary


def _run_chromium(binary, tmp_path, *args):
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update",
        "--no-first-run", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    binary = _chromium()
    url = write_report(run_dir).resolve().as_uri()

    dom = _run_chromium(binary, tmp_path, "--virtual-time-budget=5000",
                        "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, f"no DOM from chromium: {dom.stderr[-2000:]}"
    attrs = dict(re.findall(r'data-images-(\w+)="(\d+)"', body.group(0)))
    assert attrs, f"the load script did not run: {body.group(0)}"
    assert int(attrs["total"]) == 10
    assert int(attrs["broken"]) == 0
    assert int(attrs["loaded"]) == 10
    # The confusion matrix as the browser rendered it.
    parser = _ReportParser()
    parser.feed(dom.stdout)
    rendered = _confusion_from_html(parser, 2)
    interp, num_valid = _tta_interpretation(run_dir)
    np.testing.assert_array_equal(rendered, interp.confusion_matrix())
    assert rendered.sum() == num_valid

    screenshot = tmp_path / "report.png"
    shot = _run_chromium(binary, tmp_path, f"--screenshot={screenshot}",
                         "--window-size=1280,4000", url)
    assert screenshot.is_file(), f"no screenshot: {shot.stderr[-2000:]}"
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels.std() > 20


@pytest.mark.slow  # 10-15 s: an lr_find, a fit and the report's dozen figures
def test_report_from_a_learner(tiny_data, tmp_path):
    """`write_report(learn, path)`: the report of a learner in a notebook, no run folder."""
    from kertransfer.images import frame_images
    from kertransfer.learner import ConvLearner

    learn = ConvLearner.pretrained("tiny_cnn", tiny_data, precompute=True, weights=None)
    learn.lr_find(min_steps=8, verbose=0)
    learn.fit(0.01, 2, stage="head", verbose=0)
    open_before = plt.get_fignums()
    path = write_report(learn, tmp_path / "reports" / "tiny.html", num_top_losses=3, tta=False)
    assert path == tmp_path / "reports" / "tiny.html" and path.is_file()
    # Every figure it drew is closed: in a notebook, the report shows nothing.
    assert plt.get_fignums() == open_before
    text = path.read_text(encoding="utf-8")
    parser = _parse(path)
    # The confusion matrix of the model's own predictions on the validation
    # files (Keras, from the files: not the learner's batches); conftest's
    # synthetic folder has 8 ants then 8 bees.
    framed = frame_images(tiny_data.valid_paths, tiny_data.valid_tfms.framing)
    predicted = np.argmax(learn.model.predict(framed, verbose=0), axis=1)
    targets = np.repeat([0, 1], 8)
    expected = np.bincount(targets * 2 + predicted, minlength=4).reshape(2, 2)
    np.testing.assert_array_equal(_confusion_from_html(parser, 2), expected)
    for alt in ("augmented training images", "LR finder", "learning-rate schedule",
                "loss and accuracy per epoch", "top losses", "Grad-CAM of the top losses"):
        assert alt in parser.alts, alt
    assert all(src.startswith("data:image/png;base64,") for tag, src in parser.sources if tag == "img")
    history = re.search(r'<table[^>]*id="history".*?</table>', text, re.S).group(0)
    assert history.split("<tbody>")[1].count("<tr>") == 2  # one row per epoch
    accuracy = re.search(r'<table[^>]*id="accuracy".*?</table>', text, re.S).group(0)
    assert f"{np.mean(predicted == targets):.4f}" in accuracy
    assert "tiny_cnn" in text and "a learner (write_report(learn, ...))" in text
    with pytest.raises(TypeError, match="run folder .* or a ConvLearner"):
        write_report(42)
