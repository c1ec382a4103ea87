import os
import shutil

import numpy as np
import pytest

from kertransfer.data import ImageClassifierData
from kertransfer.transforms import ImageTransforms
from kertransfer.transforms import tfms_from_model


def _tfms(size=32):
    return tfms_from_model("tiny_cnn", size)


@pytest.mark.one_backend
def test_hymenoptera_layout_and_its_mess(hymenoptera):
    data = ImageClassifierData.from_paths(hymenoptera, batch_size=16, tfms=_tfms())
    assert data.classes == ["ants", "bees"]
    assert data.counts("train") == {"ants": 124, "bees": 121}
    assert data.counts("valid") == {"ants": 70, "bees": 83}
    names = [os.path.basename(p) for p in data.train_paths]
    assert "ant photos.jpg" in names and "imageNotFound.gif" in names
    assert data.skipped == []
    x, y = data.valid_batches()[0]
    assert x.shape == (16, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    assert 0 <= x.min() and x.max() <= 255


def _make_folder(root, layout):
    """layout: {"train/cats": n, ...} -> real-photo copies from dogscats."""
    src = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dogscats", "train", "cats")
    photos = sorted(os.listdir(src))
    for folder, n in layout.items():
        os.makedirs(root / folder, exist_ok=True)
        for i in range(n):
            shutil.copy(os.path.join(src, photos[i]), root / folder / f"img{i}.jpg")
    return root


@pytest.mark.one_backend
def test_undecodable_file_is_skipped_and_reported(tmp_path):
    root = _make_folder(tmp_path, {"train/a": 4, "train/b": 4, "valid/a": 2, "valid/b": 2})
    bad = root / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "train" / "b" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="Skipped 2 file") as rec:
        data = ImageClassifierData.from_paths(root, batch_size=4, tfms=_tfms())
    assert str(bad) in str(rec[0].message)
    assert sorted(os.path.basename(p) for p, _ in data.skipped) == ["broken.jpg", "notes.txt"]
    assert len(data.train_paths) == 8 and str(bad) not in data.train_paths
    batches = data.train_batches(seed=0)
    assert sum(len(batches[i][1]) for i in range(len(batches))) == 8


@pytest.mark.one_backend
def test_broken_links_and_sub_folders_are_listed_not_dropped(tmp_path):
    root = _make_folder(tmp_path, {"train/a": 3, "train/b": 3, "valid/a": 1, "valid/b": 1})
    os.symlink(tmp_path / "gone.jpg", root / "train" / "a" / "link.jpg")
    nested = root / "valid" / "b" / "more"
    nested.mkdir()
    shutil.copy(root / "valid" / "b" / "img0.jpg", nested / "img9.jpg")
    with pytest.warns(UserWarning, match="Skipped 2 file") as rec:
        data = ImageClassifierData.from_paths(root, batch_size=4, tfms=_tfms())
    reasons = dict(data.skipped)
    assert "broken symbolic link" in reasons[str(root / "train" / "a" / "link.jpg")]
    assert "folder inside a class folder" in reasons[str(nested)]
    assert str(nested) in str(rec[0].message)
    assert len(data.train_paths) == 6 and len(data.valid_paths) == 2


@pytest.mark.one_backend
def test_a_class_with_no_readable_training_image_is_an_error(tmp_path):
    root = _make_folder(tmp_path, {"train/a": 3, "valid/a": 1, "valid/b": 1})
    (root / "train" / "b").mkdir()
    for i in range(2):
        (root / "train" / "b" / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"No readable training image for class\(es\) \['b'\].*bad0\.jpg"):
        ImageClassifierData.from_paths(root, tfms=_tfms())


@pytest.mark.one_backend
def test_missing_train_folder(tmp_path):
    (tmp_path / "valid" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No training folder .*train"):
        ImageClassifierData.from_paths(tmp_path, tfms=_tfms())


@pytest.mark.one_backend
def test_valid_class_not_in_train(tmp_path):
    root = _make_folder(tmp_path, {"train/a": 2, "train/b": 2, "valid/a": 1, "valid/zebra": 1})
    with pytest.raises(ValueError, match="zebra"):
        ImageClassifierData.from_paths(root, tfms=_tfms())


@pytest.mark.one_backend
def test_empty_class_folder(tmp_path):
    root = _make_folder(tmp_path, {"train/a": 2, "valid/a": 1})
    (root / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        ImageClassifierData.from_paths(root, tfms=_tfms())


@pytest.mark.one_backend
def test_val_pct_split_is_seeded_and_disjoint(tmp_path):
    root = _make_folder(tmp_path, {"train/a": 10, "train/b": 10})
    d1 = ImageClassifierData.from_paths(root, tfms=_tfms(), val_pct=0.25, seed=1)
    d2 = ImageClassifierData.from_paths(root, tfms=_tfms(), val_pct=0.25, seed=1)
    assert len(d1.valid_paths) == 5 and len(d1.train_paths) == 15
    assert d1.valid_paths == d2.valid_paths
    assert not set(d1.valid_paths) & set(d1.train_paths)


def test_augmentation_really_changes_pixels_and_is_seeded(tiny_data):
    a = tiny_data.fixed_batches("valid", tfms=tiny_data.train_tfms, augment=True, seed=3)[0][0]
    b = tiny_data.fixed_batches("valid", tfms=tiny_data.train_tfms, augment=True, seed=3)[0][0]
    plain = tiny_data.fixed_batches("valid")[0][0]
    np.testing.assert_allclose(a, b)
    assert np.abs(a - plain).mean() > 5


def test_resize_keeps_splits(tiny_data):
    bigger = tiny_data.resize(48)
    assert bigger.image_size == 48 and bigger.valid_paths == tiny_data.valid_paths
    assert bigger.valid_batches()[0][0].shape[1:] == (48, 48, 3)


@pytest.mark.one_backend
def test_transforms_reject_bad_args():
    with pytest.raises(ValueError, match="image_size"):
        ImageTransforms(0)
    with pytest.raises(ValueError, match="max_zoom"):
        ImageTransforms(32, max_zoom=0.5)
    with pytest.raises(ValueError, match="Unknown backbone"):
        tfms_from_model("no_such_net", 32)


@pytest.mark.one_backend
def test_subsample_is_seeded_and_spread_over_the_classes():
    from kertransfer.data.sources import subsample

    labels = np.array([0] * 30 + [1] * 6 + [2] * 2)
    keep = subsample(labels, 12, seed=3)
    assert len(keep) == 12 and len(set(keep.tolist())) == 12 and np.all(np.diff(keep) > 0)
    # Class by class in turn: 2 (all) of class 2, then 5 each of 0 and 1 share the rest.
    assert np.bincount(labels[keep], minlength=3).tolist() == [5, 5, 2]
    np.testing.assert_array_equal(keep, subsample(labels, 12, seed=3))
    assert not np.array_equal(keep, subsample(labels, 12, seed=4))
    np.testing.assert_array_equal(subsample(labels, 100, seed=3), np.arange(38))
    np.testing.assert_array_equal(subsample(labels, None, seed=3), np.arange(38))


@pytest.mark.one_backend
def test_from_paths_max_images_keeps_at_most_n_per_split(synthetic_folder):
    full = ImageClassifierData.from_paths(synthetic_folder, batch_size=4, tfms=_tfms())
    small = ImageClassifierData.from_paths(synthetic_folder, batch_size=4, tfms=_tfms(), max_images=10)
    assert small.counts("train") == {"ants": 5, "bees": 5}
    assert small.counts("valid") == {"ants": 5, "bees": 5}
    assert set(small.train_paths) <= set(full.train_paths)
    again = ImageClassifierData.from_paths(synthetic_folder, batch_size=4, tfms=_tfms(), max_images=10)
    assert again.train_paths == small.train_paths
