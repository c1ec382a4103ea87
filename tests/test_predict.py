"""`kertransfer predict` on real photos, with a tiny saved model (fast)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from kertransfer.cli import main
from kertransfer.data import ImageClassifierData
from kertransfer.learner import ConvLearner
from kertransfer.predict import find_images
from kertransfer.predict import predict_images
from kertransfer.transforms import tfms_from_model

PER_CLASS = 4


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A run folder as `kertransfer train` writes it, and its learner."""
    run = tmp_path_factory.mktemp("run")
    learn = ConvLearner.pretrained("tiny_cnn", tiny_data, precompute=True, weights=None)
    learn.fit(1e-2, 1, verbose=0)
    learn.save(run / "model.keras")
    metrics = {"classes": tiny_data.classes, "image_size": 32, "arch": "tiny_cnn"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run, learn


@pytest.fixture(scope="module")
def photos(hymenoptera, tmp_path_factory):
    """fast.ai layout with copies of real photos and two bad files in valid/.

    valid/ants/truncated.jpg is the first 2 KB of a real JPEG; valid/bees/
    garbage.jpg is not an image at all.
    """
    root = tmp_path_factory.mktemp("photos")
    for split, offset in (("train", 0), ("valid", PER_CLASS)):
        for name in ("ants", "bees"):
            (root / split / name).mkdir(parents=True)
            files = sorted((hymenoptera / "val" / name).glob("*.jpg"))
            for f in files[offset:offset + PER_CLASS]:
                shutil.copy(f, root / split / name / f.name)
    real = sorted((root / "valid" / "ants").glob("*.jpg"))[0].read_bytes()
    (root / "valid" / "ants" / "truncated.jpg").write_bytes(real[:2048])
    (root / "valid" / "bees" / "garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
    return root


BAD = ("truncated.jpg", "garbage.jpg")


def _good_files(photos):
    return sorted(
        str(p) for p in (photos / "valid").rglob("*.jpg") if p.name not in BAD
    )


def _photos_data(photos):
    with pytest.warns(UserWarning, match="Skipped 2 file"):
        return ImageClassifierData.from_paths(
            photos, batch_size=16, tfms=tfms_from_model("tiny_cnn", 32)
        )


@pytest.mark.one_backend
def test_find_images_searches_folders_and_reports_missing(photos, tmp_path):
    (tmp_path / "notes.txt").write_text("not searched for")
    (tmp_path / "sub").mkdir()
    found = find_images([photos / "valid", tmp_path, tmp_path / "nope.jpg"])
    files = [p for p, error in found if error is None]
    assert files == sorted(str(p) for p in (photos / "valid").rglob("*.jpg"))
    assert found[-2][0] == str(tmp_path) and "no image files" in found[-2][1]
    assert found[-1] == (str(tmp_path / "nope.jpg"), "file not found")


def test_predict_folder_with_corrupt_files(trained, photos, capsys):
    run, learn = trained
    assert main(["predict", str(run), str(photos / "valid"), "--top-k", "2"]) == 0
    out, err = capsys.readouterr()
    for path in _good_files(photos):
        assert path in out
    for name in BAD:
        assert name not in out
        assert f"cannot predict {photos / 'valid'}" in err and name in err
    assert "predicted 8 of 10 file(s)" in err
    assert "image file is truncated" in err and "cannot identify image file" in err
    # Same probabilities as the learner on the same photos (validation
    # transforms: center crop), i.e. the same preprocessing as training.
    data = _photos_data(photos)
    assert len(data.skipped) == 2
    learn.set_data(data)
    expected, _ = learn.predict()
    frame = predict_images(run, photos / "valid", top_k=2)
    ok = frame[frame["status"] == "ok"]
    assert list(ok["file"]) == [str(p) for p in data.valid_paths]
    got = np.stack([
        np.where(ok["class_1"] == "ants", ok["prob_1"], ok["prob_2"]),
        np.where(ok["class_1"] == "bees", ok["prob_1"], ok["prob_2"]),
    ], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_predict_csv_names_bad_files(trained, photos, tmp_path, capsys):
    run, _ = trained
    missing = tmp_path / "missing.jpg"
    out_csv = tmp_path / "out.csv"
    argv = ["predict", str(run), str(photos / "valid"), str(missing), "--csv", str(out_csv)]
    assert main(argv) == 0
    frame = pd.read_csv(out_csv, keep_default_na=False)
    assert list(frame.columns) == [
        "file", "status", "class_1", "prob_1", "class_2", "prob_2", "error"
    ]  # default top-k 3 is capped at 2 classes
    assert len(frame) == 11
    bad = frame[frame["status"] == "error"]
    assert sorted(bad["file"].map(lambda p: p.rsplit("/", 1)[-1])) == sorted(BAD + ("missing.jpg",))
    assert bad.set_index("file").loc[str(missing), "error"] == "file not found"
    assert all(bad["error"].str.len() > 0)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 8 and (ok["error"] == "").all()
    probs = ok[["prob_1", "prob_2"]].astype(float).to_numpy()
    assert (probs[:, 0] >= probs[:, 1]).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert str(missing) in capsys.readouterr().err


def test_predict_tta_matches_learner_tta(trained, photos, capsys):
    run, learn = trained
    data = _photos_data(photos)
    learn.set_data(data)
    expected, _ = learn.TTA(n_aug=2, seed=3)  # fast.ai v0.7's plain mean: the run has no tta_beta
    plain, _ = learn.predict()
    # Another batch size than the learner's 16: copies are seeded per image.
    frame = predict_images(run, photos / "valid", tta=True, n_aug=2, seed=3, batch_size=7, top_k=2)
    ok = frame[frame["status"] == "ok"]
    got_ants = np.where(ok["class_1"] == "ants", ok["prob_1"], ok["prob_2"])
    np.testing.assert_allclose(got_ants, expected[:, 0], rtol=0, atol=1e-5)
    assert np.abs(expected - plain).max() > 1e-4  # the copies were augmented
    # n_aug=0 is the plain prediction.
    frame0 = predict_images(run, photos / "valid", tta=True, n_aug=0, top_k=1)
    ok0 = frame0[frame0["status"] == "ok"]
    np.testing.assert_allclose(ok0["prob_1"], plain.max(1), rtol=1e-4, atol=1e-5)
    assert main(["predict", str(run), str(photos / "valid"), "--tta", "--n-aug", "1"]) == 0
    assert "with TTA" in capsys.readouterr().err
    # --n-aug alone turns TTA on, as in `train`; --n-aug 0 is the plain prediction.
    csv_path = run.parent / "tta.csv"
    assert main(["predict", str(run), str(photos / "valid"), "--n-aug", "2", "--seed", "3", "--csv", str(csv_path)]) == 0
    assert "with TTA" in capsys.readouterr().err
    rows = pd.read_csv(csv_path)
    rows = rows[rows["status"] == "ok"]
    got_ants = np.where(rows["class_1"] == "ants", rows["prob_1"], rows["prob_2"])
    np.testing.assert_allclose(got_ants, expected[:, 0], rtol=0, atol=1e-5)
    assert main(["predict", str(run), str(photos / "valid"), "--n-aug", "0"]) == 0
    assert "with TTA" not in capsys.readouterr().err


def test_nothing_predictable_exits_nonzero(trained, photos, tmp_path, capsys):
    run, _ = trained
    bad = [str(photos / "valid" / "ants" / "truncated.jpg"), str(tmp_path / "nope.png")]
    out_csv = tmp_path / "bad.csv"
    assert main(["predict", str(run), *bad, "--csv", str(out_csv)]) == 1
    err = capsys.readouterr().err
    assert "no image could be predicted" in err and "nope.png" in err
    assert len(pd.read_csv(out_csv)) == 2


@pytest.mark.one_backend
def test_run_dir_without_model(photos, tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"classes": ["ants", "bees"]}')
    assert main(["predict", str(tmp_path), str(photos / "valid")]) == 2
    assert f"No model.keras in the run folder {str(tmp_path)!r}" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope"), str(photos / "valid")]) == 2
    assert "Run folder not found" in capsys.readouterr().err


def test_top_k_larger_than_classes(trained, photos, capsys):
    run, _ = trained
    assert main(["predict", str(run), str(photos / "valid"), "--top-k", "3"]) == 2
    assert "top_k=3 is larger than the number of classes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive integer"):
        predict_images(run, photos / "valid", top_k=0)
    with pytest.raises(SystemExit):
        main(["predict", str(run), str(photos / "valid"), "--top-k", "0"])


@pytest.mark.one_backend
def test_metrics_without_classes(trained, tmp_path, photos, capsys):
    run, _ = trained
    shutil.copy(run / "model.keras", tmp_path / "model.keras")
    (tmp_path / "metrics.json").write_text('{"image_size": 32}')
    assert main(["predict", str(tmp_path), str(photos / "valid")]) == 2
    assert "lacks ['classes', 'arch']" in capsys.readouterr().err


def test_predict_tta_blends_as_the_run_did(trained, photos, tmp_path):
    # A run trained with `tta_beta` (the main job's default, fast.ai v2's
    # 0.25) is predicted with the same blend: beta * original + (1 - beta)
    # * the augmented copies' mean, from the copies computed by hand.
    run, learn = trained
    blended = tmp_path / "run"
    shutil.copytree(run, blended)
    metrics = json.loads((blended / "metrics.json").read_text())
    (blended / "metrics.json").write_text(json.dumps({**metrics, "tta_beta": 0.25}))
    learn.set_data(_photos_data(photos))
    copies, _ = learn.TTA(n_aug=2, seed=3, return_all=True)
    expected = 0.25 * copies[0] + 0.75 * copies[1:].mean(0)
    frame = predict_images(blended, photos / "valid", tta=True, n_aug=2, seed=3, top_k=2)
    ok = frame[frame["status"] == "ok"]
    got_ants = np.where(ok["class_1"] == "ants", ok["prob_1"], ok["prob_2"])
    np.testing.assert_allclose(got_ants, expected[:, 0], rtol=0, atol=1e-5)
    assert np.abs(expected - copies.mean(0)).max() > 1e-4  # not the plain mean
