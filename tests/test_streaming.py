"""Data at any size: streamed, memory and disk stores; bad files mid-epoch.

Small synthetic folders (made here, 48-80 px PNG/JPEG) keep these fast; the
stores are compared with each other and with `kertransfer.images`, the one
decode path.
"""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from kertransfer import images
from kertransfer.data import FeatureBatches
from kertransfer.data import ImageClassifierData
from kertransfer.data.cache import DiskStore
from kertransfer.data.cache import ImageStore
from kertransfer.data.cache import MemoryStore
from kertransfer.data.cache import estimated_bytes
from kertransfer.data.cache import make_store
from kertransfer.transforms import tfms_from_model


def _make_folder(root, per_class=6, classes=("cats", "dogs"), layout="fastai"):
    """Random-but-seeded photos-like images; returns the data folder."""
    rng = np.random.default_rng(0)
    splits = ["train", "valid"] if layout == "fastai" else [""]
    for split in splits:
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                h, w = int(rng.integers(48, 80)), int(rng.integers(48, 80))
                base = np.linspace(0, 255, w)[None, :, None] * (c + 1) / 2
                pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(os.path.join(folder, f"{name}{i}.{ext}"))
    return root


def _tfms():
    return tfms_from_model("tiny_cnn", 32)


def _all_batches(batches):
    return [batches[i] for i in range(len(batches))]


@pytest.mark.one_backend
def test_stores_serve_the_decode_path_pixels(tmp_path):
    root = _make_folder(str(tmp_path / "data"))
    paths = images.find_images(root)[:4]
    disk = DiskStore(37, tmp_path / "cache")
    for path in paths:
        expected = images.decode_image(path, 37)
        for store in (ImageStore(37), MemoryStore(37), disk):
            np.testing.assert_array_equal(store.get(path), expected)
    # The disk store wrote one file per image and now reads it memory-mapped.
    cached = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "cache") for f in files]
    assert sorted(os.path.splitext(f)[1] for f in cached) == [".npy"] * 4 + [".sum"] * 4
    assert isinstance(disk.get(paths[0]), np.memmap)
    # Zeroed pixels under a valid header fail the checksum: decoded again.
    entry = disk._file(paths[1])
    np.save(entry, np.zeros_like(np.load(entry)))
    np.testing.assert_array_equal(disk.get(paths[1]), images.decode_image(paths[1], 37))
    # A changed photo gets a new cache entry, not the stale pixels.
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(1, 10**18))
    assert disk.get(paths[0]).max() == 0


@pytest.mark.one_backend  # data, cache and plot code: the same on every backend
def test_memory_stream_and_disk_give_the_same_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    root = _make_folder(str(tmp_path / "data"))
    results = {}
    for cache in ("memory", None, "disk"):
        data = ImageClassifierData.from_paths(root, batch_size=5, tfms=_tfms(), cache=cache)
        assert data.store.kind == cache
        train = data.train_batches(seed=3)
        results[cache] = (_all_batches(train), _all_batches(data.valid_batches()))
    for cache in (None, "disk"):
        for got, want in zip(results[cache], results["memory"]):
            for (x1, y1), (x2, y2) in zip(got, want):
                np.testing.assert_allclose(x1, x2, atol=1e-4)
                np.testing.assert_array_equal(y1, y2)


@pytest.mark.one_backend
def test_auto_cache_picks_memory_within_the_budget(tmp_path):
    assert estimated_bytes(1, 256) == 262144  # 256 * 341.3 * 3 bytes
    assert make_store("auto", 256, 1000).kind == "memory"  # 262 MB < 2 GB
    assert make_store("auto", 256, 10000).kind is None  # 2.6 GB: stream
    assert make_store("auto", 256, 1000, memory_budget=10**6).kind is None
    with pytest.raises(ValueError, match="cache must be one of"):
        make_store("ram", 256, 10)
    root = _make_folder(str(tmp_path / "data"), per_class=2)
    data = ImageClassifierData.from_paths(root, tfms=_tfms(), memory_budget=0)
    assert data.store.kind is None


def test_a_file_broken_after_the_scan_is_replaced_and_reported(tmp_path):
    root = _make_folder(str(tmp_path / "data"), per_class=6)
    data = ImageClassifierData.from_paths(root, batch_size=4, tfms=_tfms(), cache=None)
    assert data.skipped == []
    victim = data.train_paths[1]  # a cat
    with open(victim, "rb") as f:
        head = f.read(300)
    with open(victim, "wb") as f:  # truncated between the scan and the epoch
        f.write(head)
    batches = data.train_batches(shuffle=False, augment=False)
    with pytest.warns(UserWarning, match="Cannot decode"):
        epoch = _all_batches(batches)
    assert len(epoch) == 3 and sum(len(y) for _, y in epoch) == 12  # usual size
    np.testing.assert_array_equal(epoch[0][1], data.train_labels[:4])
    # Reported once, listed in data.skipped; its place goes to the next cat.
    assert [p for p, _ in data.skipped] == [victim]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        center = data.fixed_batches("train")[0][0][1]
    stand_in = images.frame_image(data.train_paths[2], data.valid_tfms.framing)
    np.testing.assert_array_equal(center, stand_in.astype("float32"))


def test_keras_layout_with_a_seeded_validation_split(tmp_path):
    root = _make_folder(str(tmp_path / "flat"), per_class=10, layout="keras")
    a = ImageClassifierData.from_paths(root, tfms=_tfms(), val_pct=0.2, seed=1)
    b = ImageClassifierData.from_paths(root, tfms=_tfms(), val_pct=0.2, seed=1)
    assert a.classes == ["cats", "dogs"]
    assert len(a.valid_paths) == 4 and len(a.train_paths) == 16
    assert a.valid_paths == b.valid_paths
    assert not set(a.valid_paths) & set(a.train_paths)
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="fast.ai's layout.*Keras's layout"):
        ImageClassifierData.from_paths(empty, tfms=_tfms())


@pytest.mark.one_backend
def test_feature_batches_gather_rows_without_copying_the_array(tmp_path):
    features = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype="float32", shape=(10, 3))
    features[:] = np.arange(30).reshape(10, 3)
    features.flush()
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    labels = np.arange(10) % 2
    order = np.array([3, 3, 9, 0, 5, 1, 1])
    batches = FeatureBatches(mapped, labels, 3, indices=order)
    assert len(batches) == 3
    x, y = batches[0]
    np.testing.assert_array_equal(x, np.arange(30).reshape(10, 3)[[3, 3, 9]])
    np.testing.assert_array_equal(y, labels[[3, 3, 9]])
    shuffled = FeatureBatches(mapped, labels, 4, shuffle=True, seed=0, drop_last=True)
    rows = np.concatenate([shuffled[i][0][:, 0] // 3 for i in range(len(shuffled))])
    assert len(shuffled) == 2 and len(set(rows.tolist())) == 8


@pytest.mark.one_backend  # data, cache and plot code: the same on every backend
def test_precompute_cache_is_memory_mapped_and_matches_the_body(tmp_path, monkeypatch):
    from kertransfer.learner import ConvLearner

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    root = _make_folder(str(tmp_path / "data"), per_class=5)
    data = ImageClassifierData.from_paths(root, batch_size=4, tfms=_tfms(), cache=None)
    learn = ConvLearner.pretrained("tiny_cnn", data, precompute=True, weights=None)
    feats = learn._activations("valid")
    assert isinstance(feats, np.memmap)
    direct = learn.body_model.predict(data.fixed_batches("valid"), verbose=0)
    np.testing.assert_allclose(np.asarray(feats), direct, atol=1e-5)
    learn.fit(1e-2, 1, verbose=0)  # the head trains from FeatureBatches
    assert np.isfinite(learn.history[-1]["loss"])


def _damage(path, how):
    from kertransfer.data.cache import write_checksum

    good = np.load(path)
    if how == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "garbage":
        open(path, "wb").write(np.random.default_rng(0).bytes(4000))
    elif how == "zero_bytes":
        open(path, "wb").close()
    elif how == "zeroed_data":  # a valid header, the old checksum file
        np.save(path, np.zeros_like(good))
    elif how == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif how == "wrong_shape":  # consistent with its own checksum
        np.save(path, good[:-1])
        write_checksum(path)
    elif how == "no_checksum":
        os.remove(path + ".sum")


@pytest.mark.one_backend
@pytest.mark.parametrize(
    "how", ["truncated", "garbage", "zero_bytes", "zeroed_data", "pickled", "wrong_shape", "no_checksum"]
)
def test_a_damaged_precompute_cache_is_logged_and_rebuilt(tmp_path, monkeypatch, caplog, how):
    from kertransfer.learner import ConvLearner

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    root = _make_folder(str(tmp_path / "data"), per_class=3)
    data = ImageClassifierData.from_paths(root, batch_size=4, tfms=_tfms(), cache="memory")
    learn = ConvLearner.pretrained("tiny_cnn", data, precompute=True, weights=None)
    feats = learn._activations("valid")
    clean, path = np.array(feats), feats.filename
    del feats
    _damage(path, how)
    learn._features.clear()  # as a new run with the same body would
    with caplog.at_level("WARNING"):
        again = learn._activations("valid")
    assert "Rebuilding the damaged cache file" in caplog.text and path in caplog.text
    np.testing.assert_allclose(np.asarray(again), clean, atol=1e-6)
    learn._features.clear()
    caplog.clear()
    with caplog.at_level("WARNING"):
        np.testing.assert_allclose(np.asarray(learn._activations("valid")), clean, atol=1e-6)
    assert "damaged" not in caplog.text  # the rebuilt file is whole


def test_resize_empties_the_old_memory_store(tmp_path):
    root = _make_folder(str(tmp_path / "data"), per_class=3)
    data = ImageClassifierData.from_paths(root, tfms=_tfms(), cache="memory")
    assert data.store.nbytes > 0
    bigger = data.resize(48)
    assert data.store.nbytes == 0 and bigger.store.nbytes > 0
    assert bigger.valid_batches()[0][0].shape[1:] == (48, 48, 3)


@pytest.mark.one_backend  # the CLI and the data path; the backends' fits are tested elsewhere
def test_cli_trains_on_a_keras_layout_folder_streamed(tmp_path, monkeypatch):
    from kertransfer.cli import main
    from kertransfer.images import Framing

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    root = _make_folder(str(tmp_path / "flat"), per_class=20, layout="keras")
    out = tmp_path / "run"
    argv = [
        "train", root, "--out", str(out), "--arch", "tiny_cnn", "--image-size", "32",
        "--batch-size", "8", "--weights", "none", "--head-epochs", "1", "--aug-epochs", "0",
        "--unfrozen-cycles", "1", "--tta", "0", "--val-pct", "0.25", "--cache", "none", "--quiet",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["dataset"]["valid_counts"].values()) == 10  # 25 % of 40
    assert metrics["train_dir"] == os.path.abspath(root)
    assert Framing.load(out) == Framing(32)
    assert 0.0 <= metrics["valid_accuracy"] <= 1.0
    assert metrics["distribution"] == {
        "engine": "none", "devices": 1, "processes": 1,
        "global_batch_size": 8, "per_device_batch_size": 8,
    }
