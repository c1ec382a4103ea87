"""Multi-label and CSV data (issue 4): from_csv, F-beta, sigmoid ConvLearner."""

import importlib.util
import json
import os
import pathlib
import re

import keras
import numpy as np
import pandas as pd
import pytest

from kertransfer.config import TrainConfig
from kertransfer.data import ImageClassifierData
from kertransfer.fbeta_score import SamplesFBetaScore
from kertransfer.interpret import MultiLabelInterpretation
from kertransfer.learner import ConvLearner
from kertransfer.metrics import fbeta
from kertransfer.metrics import opt_th
from kertransfer.no_tensorflow import set_seed
from kertransfer.transforms import tfms_from_model
from kertransfer.transforms import transforms_top_down

from conftest import write_synthetic_images

ROOT = pathlib.Path(__file__).resolve().parents[1]
TAGS = ["ants", "bees", "cats", "dogs"]


def _recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Synthetic stand-ins for the sample folders: hymenoptera's layout
    (train/val, ants/bees) and dogscats' (train/valid, cats/dogs), JPEGs."""
    root = tmp_path_factory.mktemp("sources")
    hymenoptera = write_synthetic_images(root / "hymenoptera", {
        "train/ants": 12, "train/bees": 12, "val/ants": 6, "val/bees": 6}, formats=("jpg",))
    dogscats = write_synthetic_images(root / "dogscats", {
        "train/cats": 12, "train/dogs": 12, "valid/cats": 6, "valid/dogs": 6}, formats=("jpg",))
    return hymenoptera, dogscats


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory, sources):
    """48 training + 16 validation 2x2 mosaics (the planet recipe's), Planet CSV."""
    hymenoptera, dogscats = sources
    out = tmp_path_factory.mktemp("mosaics")
    csv, val_idxs = _recipe("planet").sample_mosaic_set(
        str(out), 48, 16, cell=32, hymenoptera=str(hymenoptera), dogscats=str(dogscats))
    return out, csv, val_idxs


def _tiny_csv_data(mosaics, **kwargs):
    out, csv, val_idxs = mosaics
    kwargs.setdefault("tfms", tfms_from_model("tiny_cnn", 32, aug_tfms=transforms_top_down, max_zoom=1.05))
    return ImageClassifierData.from_csv(out, "train-jpg", csv, val_idxs=val_idxs, suffix=".jpg", batch_size=16, **kwargs)


def _kaggle_layout(root, per_class=10):
    """Cat and dog images as Kaggle dog breeds: train/<id>.jpg, labels.csv.

    Ids are `cat_1`, ..., `dog_1`, ...: cats first, in CSV row order.
    """
    (root / "train").mkdir(parents=True)
    rows = ["id,breed"]
    for folder, breed in (("cats", "cat"), ("dogs", "dog")):
        write_synthetic_images(root / "src", {folder: per_class}, formats=("jpg",))
        for i, f in enumerate(sorted((root / "src" / folder).glob("*.jpg")), 1):
            file_id = f"{breed}_{i}"
            f.rename(root / "train" / f"{file_id}.jpg")
            rows.append(f"{file_id},{breed}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return rows[1:]


# ---------------------------------------------------------------- from_csv


# Reading CSVs and images is numpy and Pillow: the TensorFlow pass only.
@pytest.mark.one_backend
def test_from_csv_multi_label_planet_format(mosaics):
    out, csv, val_idxs = mosaics
    data = _tiny_csv_data(mosaics)
    assert data.is_multi and data.classes == TAGS and data.num_classes == 4
    rows = [line.split(",") for line in pathlib.Path(csv).read_text().splitlines()[1:]]
    assert len(data.train_paths) == 48 and len(data.valid_paths) == 16
    # val_idxs are CSV rows (0 = first after the header): the "valid_*" mosaics.
    assert all(os.path.basename(p).startswith("valid_") for p in data.valid_paths)
    assert data.valid_paths[0] == os.path.join(str(out), "train-jpg", rows[val_idxs[0]][0] + ".jpg")
    for path, target in zip(data.train_paths + data.valid_paths, np.concatenate([data.train_labels, data.valid_labels])):
        name = os.path.basename(path)[:-4]
        tags = dict(rows)[name].split(" ")
        assert target.tolist() == [float(t in tags) for t in TAGS]
    assert data.train_labels.dtype == np.float32 and data.train_labels.shape == (48, 4)
    assert {len(r[1].split()) for r in rows} == {1, 2, 3}
    x, y = data.train_batches(seed=0)[0]
    assert x.shape == (16, 32, 32, 3) and y.shape == (16, 4) and y.dtype == np.float32
    counts = data.counts("train")
    assert counts == {t: int(data.train_labels[:, i].sum()) for i, t in enumerate(TAGS)}
    summary = data.summary()
    assert summary["multi_label"] is True and summary["valid_counts"] == data.counts("valid")
    # resize keeps files and multi-hot targets; fingerprints follow the size.
    bigger = data.resize(48)
    assert bigger.is_multi and bigger.image_size == 48 and bigger.train_paths == data.train_paths
    np.testing.assert_array_equal(bigger.valid_labels, data.valid_labels)
    assert bigger.fingerprint("valid") != data.fingerprint("valid")
    assert bigger.fixed_batches("valid")[0][1].shape == (16, 4)


@pytest.mark.one_backend
def test_from_csv_single_label_kaggle_dog_breeds(tmp_path):
    rows = _kaggle_layout(tmp_path)
    tfms = tfms_from_model("tiny_cnn", 32)
    # csv_fname may be a name inside path (or a full path, as in fast.ai).
    data = ImageClassifierData.from_csv(tmp_path, "train", "labels.csv", suffix=".jpg", tfms=tfms, val_pct=0.25, seed=3)
    assert not data.is_multi and data.classes == ["cat", "dog"]
    assert len(data.valid_paths) == 5 and len(data.train_paths) == 15
    assert data.train_labels.dtype == np.int32 and data.train_labels.ndim == 1
    labels = dict(r.split(",") for r in rows)
    for path, label in zip(data.train_paths, data.train_labels):
        assert data.classes[label] == labels[os.path.basename(path)[:-4]]
    assert data.counts("train")["cat"] + data.counts("valid")["cat"] == 10
    again = ImageClassifierData.from_csv(tmp_path, "train", str(tmp_path / "labels.csv"), suffix=".jpg", tfms=tfms, val_pct=0.25, seed=3)
    assert again.valid_paths == data.valid_paths
    other = ImageClassifierData.from_csv(tmp_path, "train", "labels.csv", suffix=".jpg", tfms=tfms, val_pct=0.25, seed=4)
    assert other.valid_paths != data.valid_paths
    assert data.summary()["multi_label"] is False


@pytest.mark.one_backend
def test_from_csv_no_header_and_whole_cell_labels(tmp_path):
    rows = _kaggle_layout(tmp_path, per_class=3)
    lines = [f"{r.split(',')[0]},{'big ' if r.endswith('dog') else 'small '}{r.split(',')[1]}" for r in rows]
    (tmp_path / "nohead.csv").write_text("\n".join(lines) + "\n")
    tfms = tfms_from_model("tiny_cnn", 32)
    data = ImageClassifierData.from_csv(tmp_path, "train", "nohead.csv", suffix=".jpg", tfms=tfms,
                                        skip_header=False, val_idxs=[0, 5], cat_separator=None)
    assert not data.is_multi and data.classes == ["big dog", "small cat"]
    assert len(data.train_paths) == 4 and len(data.valid_paths) == 2
    same = ImageClassifierData.from_csv(tmp_path, "train", "nohead.csv", suffix=".jpg", tfms=tfms,
                                        skip_header=False, val_idxs=[0, 5], multi_label=False)
    assert same.classes == data.classes and same.train_labels.tolist() == data.train_labels.tolist()
    # Inferred, "small cat" could be one label or two tags: 'small' never
    # occurs without 'cat'. It is refused, naming the row and the arguments.
    with pytest.raises(ValueError, match=r"is 'small cat' \(row 0 \(id 'cat_1'\)\) one label(.|\n)*multi_label=False"):
        ImageClassifierData.from_csv(tmp_path, "train", "nohead.csv", suffix=".jpg", tfms=tfms,
                                     skip_header=False, val_idxs=[0, 5])
    split = ImageClassifierData.from_csv(tmp_path, "train", "nohead.csv", suffix=".jpg", tfms=tfms,
                                         skip_header=False, val_idxs=[0, 5], multi_label=True)
    assert split.is_multi and split.classes == ["big", "cat", "dog", "small"]


@pytest.mark.one_backend
def test_from_csv_refuses_misread_labels_headers_and_ids(tmp_path):
    rows = _kaggle_layout(tmp_path, per_class=3)
    tfms = tfms_from_model("tiny_cnn", 32)

    def load(text, **kwargs):
        (tmp_path / "l.csv").write_text(text)
        return ImageClassifierData.from_csv(tmp_path, "train", "l.csv", suffix=".jpg", tfms=tfms,
                                            val_idxs=[0, 3], **kwargs)

    comma = 'id,tags\n' + "\n".join(f'{r.split(",")[0]},"{r.split(",")[1]},animal"' for r in rows)
    with pytest.raises(ValueError, match=r"row 0 \(id 'cat_1'\).*hold ',' .*'cat,animal'(.|\n)*label_delim=','"):
        load(comma)
    data = load(comma, label_delim=",")
    assert data.is_multi and data.classes == ["animal", "cat", "dog"]
    assert load(comma, multi_label=False).classes == ["cat,animal", "dog,animal"]
    # No header: the first line names an image, so it is not dropped.
    with pytest.raises(ValueError, match=r"first line of .*l\.csv names an image \(cat_1\.jpg(.|\n)*skip_header=False"):
        load("\n".join(rows))
    assert len(load("\n".join(rows), skip_header=False).train_paths) == 4
    outside = str(tmp_path / "train" / "cat_1")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.jpg").write_bytes((tmp_path / "train" / "cat_1.jpg").read_bytes())
    for bad_id in (outside, "../other/x"):
        with pytest.raises(ValueError, match=r"row 6 .*outside the image folder"):
            load("id,breed\n" + "\n".join(rows) + f"\n{bad_id},cat\n")


@pytest.mark.one_backend
def test_from_csv_errors_name_csv_row_and_file(tmp_path):
    rows = _kaggle_layout(tmp_path, per_class=3)
    tfms = tfms_from_model("tiny_cnn", 32)

    def load(csv_text, **kwargs):
        (tmp_path / "bad.csv").write_text(csv_text)
        kwargs.setdefault("suffix", ".jpg")
        return ImageClassifierData.from_csv(tmp_path, "train", "bad.csv", tfms=tfms, **kwargs)

    good = "id,breed\n" + "\n".join(rows) + "\n"
    with pytest.raises(FileNotFoundError, match=r"1 of the 7 images .*bad\.csv are missing(.|\n)*nope\.jpg  \(row 6\)") as err:
        load(good + "nope,cat\n")
    assert "cat_1.jpg" not in str(err.value)  # listed: the missing files only
    with pytest.raises(FileNotFoundError, match=r"6 of the 6 (.|\n)*cat_1  \(row 0\)(.|\n)*suffix=''"):
        load(good, suffix="")
    with pytest.raises(ValueError, match=r"bad\.csv: no label in row 2 \(id 'x'\)"):
        load("id,breed\n" + "\n".join(rows[:2]) + "\nx,\n")
    with pytest.raises(ValueError, match=r"needs two columns(.|\n)*\['id'\]"):
        load("id\n" + "\n".join(r.split(",")[0] for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"empty file id in row 0"):
        load("id,breed\n,cat\n")
    with pytest.raises(ValueError, match=r"val_idxs must be row indices in \[0, 5\]"):
        load(good, val_idxs=[1, 6])
    with pytest.raises(ValueError, match=r"integer row indices"):
        load(good, val_idxs=[0.5])
    with pytest.raises(ValueError, match=r"val_pct must be in \(0, 1\)"):
        load(good, val_pct=1.0)
    with pytest.warns(UserWarning, match=r"bad\.csv lists 1 file id\(s\) more than once, e\.g\. \['cat_1'\]"):
        assert len(load(good + rows[0] + "\n", val_idxs=[6]).train_paths) == 6
    with pytest.raises(FileNotFoundError, match="Label CSV not found: missing.csv"):
        ImageClassifierData.from_csv(tmp_path, "train", "missing.csv", tfms=tfms)
    with pytest.raises(FileNotFoundError, match=r"Image folder not found: .*jpgs"):
        ImageClassifierData.from_csv(tmp_path, "jpgs", "labels.csv", tfms=tfms)


@pytest.mark.one_backend
def test_from_csv_skips_undecodable_images(tmp_path):
    rows = _kaggle_layout(tmp_path, per_class=4)
    (tmp_path / "train" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "labels.csv").write_text("id,breed\n" + "\n".join(rows + ["broken,cat"]) + "\n")
    with pytest.warns(UserWarning, match=r"Skipped 1 file(.|\n)*broken\.jpg"):
        data = ImageClassifierData.from_csv(tmp_path, "train", "labels.csv", suffix=".jpg",
                                            tfms=tfms_from_model("tiny_cnn", 32), val_idxs=[0, 4])
    assert [os.path.basename(p) for p, _ in data.skipped] == ["broken.jpg"]
    assert len(data.train_paths) == 6 and data.counts("train") == {"cat": 3, "dog": 3}
    assert data.summary()["skipped"] == [str(tmp_path / "train" / "broken.jpg")]


# ----------------------------------------------------------------- metrics

# Items: 0 all right; 1 one false positive; 2 one of two tags missed;
# 3 nothing present, nothing predicted; 4 nothing predicted.
PROBS = np.array([
    [0.9, 0.1, 0.2], [0.7, 0.6, 0.1], [0.8, 0.3, 0.45], [0.1, 0.2, 0.3], [0.4, 0.4, 0.3]])
TARGETS = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 1, 0]])


def _brute_fbeta(probs, targets, beta, threshold):
    """scikit-learn's definition, item by item (zero_division=0)."""
    scores = []
    for p, t in zip(probs, targets):
        pred = p > threshold
        tp, fp, fn = (pred & (t == 1)).sum(), (pred & (t == 0)).sum(), (~pred & (t == 1)).sum()
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        b2 = beta * beta
        scores.append((1 + b2) * prec * rec / (b2 * prec + rec) if prec + rec else 0.0)
    return float(np.mean(scores))


@pytest.mark.one_backend  # numpy only
def test_fbeta_by_hand():
    # Per item at 0.5: 1, F2(tp=1, fp=1) = 5/6, F2(tp=1, fn=1) = 5/9, 0, 0.
    assert fbeta(PROBS, TARGETS) == pytest.approx((1 + 5 / 6 + 5 / 9) / 5)
    # F1 of the same: 1, 2/3, 2/3, 0, 0.
    assert fbeta(PROBS, TARGETS, beta=1) == pytest.approx((1 + 4 / 3) / 5)
    # At 0.35 item 4 gets both 0.4s: F2(tp=1, fp=1) = 5/6; item 2 is right.
    assert fbeta(PROBS, TARGETS, threshold=0.35) == pytest.approx((1 + 5 / 6 + 1 + 0 + 5 / 6) / 5)
    # Strictly above the threshold counts (fast.ai `preds > thresh`).
    assert fbeta([[0.5]], [[1]], threshold=0.5) == 0.0
    # Per-tag thresholds: items 2 and 4 become exactly right.
    assert fbeta(PROBS, TARGETS, threshold=[0.5, 0.35, 0.4]) == pytest.approx((1 + 5 / 6 + 1 + 0 + 1) / 5)
    with pytest.raises(ValueError, match="same shape|one shape"):
        fbeta(PROBS, TARGETS[:, :2])
    with pytest.raises(ValueError, match="0s and 1s"):
        fbeta(PROBS, TARGETS * 2)


@pytest.mark.one_backend  # numpy only
def test_fbeta_matches_sklearn_definition_on_random_data():
    rng = np.random.default_rng(0)
    probs = rng.random((200, 6))
    targets = (rng.random((200, 6)) < 0.3).astype(int)
    for beta, th in [(2, 0.5), (1, 0.2), (0.5, 0.7), (2, np.linspace(0.1, 0.6, 6))]:
        assert fbeta(probs, targets, beta, th) == pytest.approx(_brute_fbeta(probs, targets, beta, th))
    interp = MultiLabelInterpretation(probs, targets, list("abcdef"), thresholds=0.3)
    assert interp.fbeta(2) == pytest.approx(fbeta(probs, targets, threshold=0.3))


@pytest.mark.one_backend  # numpy only
def test_opt_th_global_and_per_class():
    # fast.ai's planet.opt_th: argmax of F2 over a grid; ties -> lowest.
    ths = np.arange(0.05, 0.95, 0.01)
    best = opt_th(PROBS, TARGETS)
    scores = [fbeta(PROBS, TARGETS, threshold=t) for t in ths]
    assert best == pytest.approx(ths[int(np.argmax(scores))])
    assert fbeta(PROBS, TARGETS, threshold=best) == pytest.approx(max(scores))
    assert opt_th(PROBS, TARGETS, thresholds=[0.5, 0.35, 0.2]) == pytest.approx(0.35)
    # Tag 0's positives score 0.3 (negatives 0.1); tag 1's 0.9 (negatives
    # 0.7): no common threshold is perfect, one per tag is.
    probs = np.array([[0.3, 0.7], [0.1, 0.9], [0.3, 0.9]])
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    common = opt_th(probs, targets)
    assert fbeta(probs, targets, threshold=common) < 1
    per_tag = opt_th(probs, targets, per_class=True)
    assert per_tag.shape == (2,) and 0.1 <= per_tag[0] < 0.3 and 0.7 <= per_tag[1] < 0.9
    assert fbeta(probs, targets, threshold=per_tag) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        opt_th(probs, targets, thresholds=[])


def test_samples_fbeta_keras_metric_matches_numpy():
    rng = np.random.default_rng(1)
    probs = rng.random((37, 5)).astype("float32")
    targets = (rng.random((37, 5)) < 0.4).astype("float32")
    targets[3] = 0  # an empty item (and maybe empty predictions)
    metric = SamplesFBetaScore(beta=2, threshold=0.5)
    assert metric.name == "f2"
    for lo in range(0, 37, 16):  # batch by batch, like fit
        metric.update_state(targets[lo:lo + 16], probs[lo:lo + 16])
    assert float(metric.result()) == pytest.approx(fbeta(probs, targets), abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(TARGETS.astype("float32"), PROBS.astype("float32"))
    assert float(metric.result()) == pytest.approx(fbeta(PROBS, TARGETS), abs=1e-6)
    f1 = SamplesFBetaScore(beta=1, threshold=0.35)
    f1.update_state(TARGETS, PROBS)
    assert f1.name == "f1" and float(f1.result()) == pytest.approx(fbeta(PROBS, TARGETS, 1, 0.35), abs=1e-6)
    assert SamplesFBetaScore.from_config(f1.get_config()).threshold == 0.35
    with pytest.raises(ValueError, match="threshold"):
        SamplesFBetaScore(threshold=1.5)


# ----------------------------------------------------------------- learner


def test_multi_label_conv_learner(mosaics, tmp_path, tiny_data):
    data = _tiny_csv_data(mosaics)
    learn = ConvLearner.pretrained("tiny_cnn", data, weights=None)
    assert learn.is_multi
    assert learn.model.output_shape == (None, 4)
    assert learn.model.get_layer("head_out").activation is keras.activations.sigmoid
    lr_result = learn.lr_find()
    assert len(lr_result.losses) >= 2
    learn.fit(1e-2, 1, verbose=0, stage="head")
    assert learn.head_model.loss == "binary_crossentropy"
    row = learn.history[-1]
    assert {"loss", "f2", "val_loss", "val_f2"} <= set(row) and 0 <= row["val_f2"] <= 1
    learn.precompute = False
    learn.fit(1e-2, 1, verbose=0, stage="augmented")
    probs, targets = learn.predict()
    assert probs.shape == (16, 4) and targets.shape == (16, 4)
    assert probs.min() >= 0 and probs.max() <= 1
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent sigmoids
    np.testing.assert_array_equal(targets, data.valid_labels)
    # The Keras metric on the last epoch equals numpy F2 of predict().
    assert learn.history[-1]["val_f2"] == pytest.approx(fbeta(probs, targets), abs=1e-5)
    # Binary cross-entropy of predict() matches the reported val_loss.
    p = np.clip(probs.astype("float64"), 1e-7, 1 - 1e-7)
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()
    assert learn.history[-1]["val_loss"] == pytest.approx(bce, rel=1e-3, abs=1e-4)
    tta_probs, tta_targets = learn.TTA(n_aug=2)
    assert tta_probs.shape == (16, 4) and tta_targets.shape == (16, 4)
    saved = learn.save(tmp_path / "multi")
    fresh = ConvLearner.pretrained("tiny_cnn", data, weights=None)
    fresh.load(saved)
    np.testing.assert_allclose(fresh.predict()[0], probs, atol=1e-5)
    # Progressive resizing; the kind of data must not change.
    learn.set_data(data.resize(48))
    learn.freeze()
    learn.fit(1e-2, 1, verbose=0)
    assert learn.predict()[0].shape == (16, 4)
    with pytest.raises(ValueError, match="same classes|same kind"):
        learn.set_data(tiny_data)  # single-label ants/bees


# ------------------------------------------------------------ end to end


@pytest.mark.slow
def test_acceptance_lite0_f2_on_photo_mosaics(tmp_path, hymenoptera, dogscats):
    """Lite0 + precompute on 2x2 mosaics of real photos: F2 >= 0.85."""
    csv, val_idxs = _recipe("planet").sample_mosaic_set(
        str(tmp_path), 480, 120, cell=128, hymenoptera=str(hymenoptera), dogscats=str(dogscats))
    tfms = tfms_from_model("efficientnet_lite0", 224, aug_tfms=transforms_top_down, max_zoom=1.05)
    data = ImageClassifierData.from_csv(tmp_path, "train-jpg", csv, val_idxs=val_idxs, suffix=".jpg", tfms=tfms, batch_size=32)
    assert data.is_multi and data.classes == TAGS
    set_seed(0)
    learn = ConvLearner.pretrained("efficientnet_lite0", data, precompute=True)
    learn.fit(2e-2, 3, verbose=0)
    probs, targets = learn.predict()
    th = opt_th(probs, targets)
    score = fbeta(probs, targets, threshold=th)
    # Tagging every mosaic with every class scores about 0.80 here.
    trivial = fbeta(np.ones_like(targets), targets)
    print(f"F2 {score:.4f} at th={th:.2f} (0.5: {fbeta(probs, targets):.4f}, "
          f"all tags: {trivial:.4f})")
    assert score >= 0.85 and score > trivial + 0.05, (score, th, learn.history)


# ------------------------------------------------------------ command line


def _tag_sets(probs, thresholds, classes):
    """The tags above their thresholds, per row, as sets."""
    return [{c for c, p, t in zip(classes, row, thresholds) if p > t} for row in probs]


@pytest.fixture(scope="module")
def cli_run(mosaics, tmp_path_factory):
    """`kertransfer train DATA --csv train_v2.csv` on the mosaics: tiny_cnn, 32 px."""
    from kertransfer.cli import main

    out, csv, _ = mosaics
    run = tmp_path_factory.mktemp("cli") / "run"
    argv = [
        "train", str(out), "--csv", os.path.basename(csv), "--out", str(run), "--arch", "tiny_cnn",
        "--image-size", "32", "--batch-size", "16", "--weights", "none", "--lr", "0.01",
        "--head-epochs", "1", "--aug-epochs", "1", "--unfrozen-cycles", "1", "--n-aug", "1",
        "--seed", "0", "--quiet",
    ]
    assert main(argv) == 0
    return run, dict(row.split(",") for row in pathlib.Path(csv).read_text().splitlines()[1:])


# The run is made once and shared with the export test below, which needs
# TensorFlow in the process: both run in the TensorFlow pass. The multi-label
# learner itself is checked on every backend (test_multi_label_conv_learner).
@pytest.mark.tensorflow
def test_cli_train_csv_multi_label_metrics_report_predict(cli_run, capsys):
    from kertransfer.cli import main

    run, csv_tags = cli_run
    metrics = json.loads((run / "metrics.json").read_text())
    with np.load(run / "predictions.npz") as saved:
        probs, tta_probs, targets = saved["probs"], saved["tta_probs"], saved["targets"]
        paths = [str(p) for p in saved["paths"]]
    assert metrics["multi_label"] is True and metrics["classes"] == TAGS
    assert "valid_accuracy" not in metrics and metrics["per_tag_threshold"] is False
    # Targets are the CSV's tags (read here from the CSV text), multi-hot.
    assert targets.shape == (13, 4) and len(paths) == 13  # 20% of 64 rows held out
    for path, target in zip(paths, targets):
        assert [TAGS[i] for i in np.flatnonzero(target)] == sorted(csv_tags[os.path.basename(path)[:-4]].split())
    # F2 by scikit-learn's definition, at 0.5 and at the chosen threshold.
    thresholds = metrics["thresholds"]
    assert len(thresholds) == 4 and len(set(thresholds)) == 1
    for key, p in (("valid", probs), ("tta", tta_probs)):
        assert metrics[f"{key}_f2_at_0.5"] == pytest.approx(_brute_fbeta(p, targets, 2, 0.5))
        assert metrics[f"{key}_f2"] == pytest.approx(_brute_fbeta(p, targets, 2, np.array(thresholds)))
    # The threshold is the best of fast.ai's grid on the plain predictions (ties: the lowest).
    grid = np.round(np.arange(0.05, 0.95, 0.01), 4)
    scores = [_brute_fbeta(probs, targets, 2, t) for t in grid]
    assert thresholds[0] == pytest.approx(grid[int(np.argmax(scores))])
    # The kept epoch is chosen by validation loss, Keras's binary
    # cross-entropy, which is also the loss of the saved predictions.
    p = np.clip(probs.astype("float64"), 1e-7, 1 - 1e-7)
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()
    assert metrics["valid_loss"] == pytest.approx(bce, rel=1e-6)
    assert metrics["kept"]["val_loss"] == pytest.approx(bce, rel=1e-3, abs=1e-4)
    history = pd.read_csv(run / "history.csv")
    assert list(history["stage"]) == ["head_precomputed", "head_augmented", "unfrozen"]
    assert "val_f2" in history and "val_accuracy" not in history
    assert metrics["kept"]["val_loss"] == pytest.approx(history["val_loss"].min(), rel=1e-6)
    assert history["best"].tolist() == list(history["val_loss"] == history["val_loss"].min())

    # The report: per-tag precision/recall/F2 of the TTA predictions, no confusion matrix.
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "confusion-matrix" not in html and 'alt="F2 against the threshold"' in html
    per_tag = html[html.index('id="per-tag-report"'):]
    per_tag = per_tag[:per_tag.index("</table>")]
    pred = tta_probs > np.array(thresholds)
    for i, tag in enumerate(TAGS):
        cells = re.search(rf"<th>{tag}</th>((?:\s*<td>[^<]*</td>)+)", per_tag).group(1)
        threshold, precision, recall, f2, support = (float(v) for v in re.findall(r"<td>([^<]*)</td>", cells)[:5])
        tp = np.sum(pred[:, i] & (targets[:, i] == 1))
        fp, fn = np.sum(pred[:, i] & (targets[:, i] == 0)), np.sum(~pred[:, i] & (targets[:, i] == 1))
        want_p = tp / (tp + fp) if tp + fp else 0.0
        want_r = tp / (tp + fn) if tp + fn else 0.0
        want_f2 = 5 * want_p * want_r / (4 * want_p + want_r) if want_p + want_r else 0.0
        assert (threshold, support) == (pytest.approx(thresholds[i], abs=1e-4), tp + fn)
        assert (precision, recall, f2) == (pytest.approx(want_p, abs=1e-4), pytest.approx(want_r, abs=1e-4),
                                           pytest.approx(want_f2, abs=1e-4))

    # predict: the tags above the run's threshold, from the run's own
    # prediction path; they are those of the learner's predictions.
    capsys.readouterr()
    assert main(["predict", str(run), *paths[:5], "--csv", str(run / "tags.csv")]) == 0
    printed = capsys.readouterr().out
    rows = pd.read_csv(run / "tags.csv", keep_default_na=False)
    assert list(rows.columns) == ["file", "status", "tags", "probs", "error"]
    for i, row in rows.iterrows():
        want = _tag_sets(probs[i:i + 1], thresholds, TAGS)[0]
        got = row["tags"].split()
        assert set(got) == want and os.path.basename(row["file"]) in printed
        shown = [float(v) for v in str(row["probs"]).split()]
        np.testing.assert_allclose(shown, [probs[i, TAGS.index(t)] for t in got], atol=1e-4)
        assert shown == sorted(shown, reverse=True)  # most probable first
    assert main(["predict", str(run), paths[0], "--top-k", "2"]) == 2
    assert "multi-label run, which lists every tag above its threshold" in capsys.readouterr().err


@pytest.mark.tensorflow
# tiny_cnn's fixed graph outweighs its 88 KB of weights: the lean-size target cannot hold.
@pytest.mark.filterwarnings(r"ignore:Export saved_model.serving_default .* misses its targets. size")
def test_cli_export_multi_label_saved_model_returns_tags(cli_run, tmp_path):
    import tensorflow as tf

    from kertransfer.cli import export_main

    run, _ = cli_run
    metrics = json.loads((run / "metrics.json").read_text())
    with np.load(run / "predictions.npz") as saved:
        probs, targets, paths = saved["probs"], saved["targets"], [str(p) for p in saved["paths"]]
    out = tmp_path / "export"
    assert export_main([str(run), "--formats", "saved_model,tflite", "--out", str(out)]) == 0
    # serving_default on a JPEG's bytes: per-tag probabilities (independent
    # sigmoids) as the learner predicted them, and the tags above the run's
    # thresholds, embedded in the graph.
    serve = tf.saved_model.load(str(out / "serving" / "kertransfer" / "1")).signatures["serving_default"]
    result = serve(image_bytes=tf.constant([pathlib.Path(p).read_bytes() for p in paths[:4]] + [b"not an image"]))
    np.testing.assert_allclose(result["probabilities"].numpy()[:4], probs[:4], atol=1e-3)
    tags = [t.decode().split() for t in result["tags"].numpy()]
    assert [set(t) for t in tags[:4]] == _tag_sets(probs[:4], metrics["thresholds"], TAGS)
    assert tags[4] == [] and result["status"].numpy()[4] == b"error"
    np.testing.assert_array_equal(result["above_threshold"].numpy()[:4], probs[:4] > np.array(metrics["thresholds"]))
    assets = out / "serving" / "kertransfer" / "1" / "assets"
    assert [float(t) for t in (assets / "thresholds.txt").read_text().split()] == metrics["thresholds"]
    # The .tflite gives the per-tag probabilities; its thresholds lie beside it.
    assert [float(t) for t in (out / "litert" / "thresholds.txt").read_text().split()] == metrics["thresholds"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["multi_label"] is True and report["thresholds"] == metrics["thresholds"]
    rows = {row["name"]: row for row in report["artifacts"]}
    assert set(rows) == {"saved_model:serving_default", "saved_model:predict_images", "tflite:float32"}
    for row in rows.values():
        assert row["tags_agreement"] == 1.0 and "top1_agreement" not in row
        assert row["max_abs_prob_diff"] <= 1e-3
        assert row["f2"] == pytest.approx(_brute_fbeta(probs, targets, 2, np.array(metrics["thresholds"])), abs=1e-3)


@pytest.mark.one_backend  # argument and CSV checks: no model is built
def test_cli_csv_bad_input_fails_before_any_decode(mosaics, tmp_path, capsys, monkeypatch):
    from kertransfer.cli import main
    from kertransfer.data.cache import ImageStore

    def no_decode(*args):
        raise AssertionError("decoded an image before checking the CSV")

    monkeypatch.setattr(ImageStore, "get", no_decode)
    out, csv, _ = mosaics
    rows = pathlib.Path(csv).read_text().splitlines()

    def train(lines, *flags):
        labels = tmp_path / "labels.csv"
        labels.write_text("\n".join(lines) + "\n")
        status = main(["train", str(out), "--csv", str(labels), "--out", str(tmp_path / "run"), "--quiet",
                       "--arch", "tiny_cnn", *flags])
        assert not (tmp_path / "run").exists()  # no empty run folder left behind
        return status, capsys.readouterr().err

    status, err = train(rows + ["missing_one,ants cats"])
    assert status == 2
    assert "1 of the 65 images listed in" in err and "labels.csv" in err and "missing_one.jpg" in err
    # One label in every row: single-label data, refused with the fix.
    single = [rows[0]] + [f"{r.split(',')[0]},{r.split(',')[1].split()[0]}" for r in rows[1:]]
    status, err = train(single)
    assert status == 2
    assert "labels.csv" in err and "single-label data" in err and "leave --csv out" in err
    status, err = train(rows, "--max-images", "32", "--batch-size", "8")
    assert status == 2 and "max_images=32 (--max-images) is not supported with csv" in err
    # The CSV's flags without --csv.
    assert main(["train", str(out), "--folder", "jpgs", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "folder='jpgs' (--folder) only applies to multi-label data read from a CSV" in capsys.readouterr().err


@pytest.mark.one_backend  # numpy only
def test_run_scores_with_one_threshold_per_tag():
    from kertransfer.train import _multi_label_scores

    # As in test_opt_th_global_and_per_class: no common threshold is
    # perfect, one per tag is (tag 0 in [0.1, 0.3), tag 1 in [0.7, 0.9)).
    probs = np.array([[0.3, 0.7], [0.1, 0.9], [0.3, 0.9]])
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    common = _multi_label_scores(probs, probs, targets, per_tag=False)
    per_tag = _multi_label_scores(probs, probs, targets, per_tag=True)
    assert common["valid_f2"] < 1 and len(set(common["thresholds"])) == 1
    assert per_tag["valid_f2"] == per_tag["tta_f2"] == 1.0 and per_tag["per_tag_threshold"] is True
    assert 0.1 <= per_tag["thresholds"][0] < 0.3 and 0.7 <= per_tag["thresholds"][1] < 0.9
    # At 0.5: item 0 gets the wrong tag (F2 = 0), item 1 is right, item 2
    # misses one of two tags (F2 = 5 / 9).
    assert per_tag["valid_f2_at_0.5"] == pytest.approx((0 + 1 + 5 / 9) / 3)


@pytest.mark.one_backend  # argument handling
def test_csv_flags_reach_the_config(tmp_path):
    from kertransfer.cli import _config
    from kertransfer.cli import build_parser

    argv = ["train", str(tmp_path), "--csv", "labels.csv", "--folder", "train", "--suffix", ".png", "--per-tag-threshold"]
    config = _config(build_parser().parse_args(argv))
    assert (config.csv, config.folder, config.suffix, config.per_tag_threshold) == ("labels.csv", "train", ".png", True)
    with pytest.raises(ValueError, match=r"suffix='\.png' \(--suffix\), per_tag_threshold=True \(--per-tag-threshold\) only applies"):
        TrainConfig(suffix=".png", per_tag_threshold=True)
