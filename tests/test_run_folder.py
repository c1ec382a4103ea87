"""Run folders: a previous run is never clobbered or left half-written."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from kertransfer.cli import main
from kertransfer.run_folder import SCHEMA_VERSION
from kertransfer.run_folder import MissingRunFileError
from kertransfer.run_folder import RunFolder
from kertransfer.run_folder import RunFolderError
from kertransfer.run_folder import atomic_path
from kertransfer.run_folder import check_out_dir

pytestmark = pytest.mark.one_backend


def test_a_folder_holding_a_run_is_refused(tmp_path):
    assert check_out_dir(tmp_path / "new") == str(tmp_path / "new")  # created
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")  # an empty folder is fine
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"old.*metrics\.json.*overwrite=True"):
        check_out_dir(tmp_path / "old")
    check_out_dir(tmp_path / "old", overwrite=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_out_dir(tmp_path / "afile")


def test_cli_refuses_before_reading_any_image(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.keras").write_bytes(b"the previous model")
    # The data folder does not even exist: the run folder is checked first.
    assert main(["train", str(tmp_path / "nodata"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (model.keras)" in err and "--overwrite" in err
    assert (out / "model.keras").read_bytes() == b"the previous model"


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.endswith(".json") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]  # the temporary file is gone
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert path.read_text() == "new"


_SAVE_FOREVER = """
import sys, keras, numpy as np
from kertransfer.run_folder import atomic_path
path = sys.argv[1]
model = keras.saving.load_model(path)
print("ready", flush=True)
while True:
    model.set_weights([w + 1 for w in model.get_weights()])
    with atomic_path(path) as tmp:
        model.save(tmp)
    print("saved", flush=True)
"""


@pytest.mark.parametrize("delay", [0.3, 0.7])
def test_sigkill_while_saving_keeps_a_loadable_model(tmp_path, delay):
    path = tmp_path / "model.keras"
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(2)])
    model.save(path)
    # The saver runs under JAX whatever this pass's backend (the file format
    # is the same; JAX imports in half the CPU time of TensorFlow or torch).
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # One save finished (the first can take a second: lazy imports),
        # then more, and a kill in the middle of one.
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    loaded = keras.saving.load_model(path)
    # Whole: the first model plus k for one k >= 1 in every weight (each
    # save adds 1), never a mix of two saves or a truncated file.
    offsets = [w - w0 for w, w0 in zip(loaded.get_weights(), model.get_weights())]
    k = np.round(offsets[0].flat[0])
    assert k >= 1
    for offset in offsets:
        np.testing.assert_allclose(offset, k, atol=1e-4)


def test_a_corrupt_model_file_is_named_as_corrupt(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    model.save(run / "model.keras")
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 3])  # truncated
    (run / "metrics.json").write_text('{"classes": ["a", "b"], "image_size": 8, "arch": "tiny"}')
    Image.new("RGB", (10, 10)).save(tmp_path / "x.jpg")
    assert main(["predict", str(run), str(tmp_path / "x.jpg")]) == 2
    err = capsys.readouterr().err
    assert "model.keras exists" in err and "not a loadable .keras file: corrupt or truncated" in err
    pytest.importorskip("tensorflow")
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert "not a loadable .keras file: corrupt or truncated" in err and "File not found" not in err


# ----------------------------------------------------------------- RunFolder


def _raw_json(path):
    with open(path) as f:
        return json.load(f)


def test_run_folder_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    metrics = {"classes": ["ants", "bees"], "image_size": 32, "arch": "tiny", "valid_loss": float("nan")}
    run.write_metrics(metrics)
    history = [
        {"epoch": 1, "stage": "head", "loss": 0.7, "val_loss": 0.6},
        {"epoch": 2, "stage": "head", "loss": 0.5, "val_loss": 0.4, "best": True},
    ]
    run.write_history(history)
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], "float32")
    paths = np.asarray(["/a/ants/1.jpg", "/a/bees/2.jpg"])
    run.write_predictions(probs=probs, targets=np.array([0, 1]), paths=paths)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    run.write_model(model)
    # The schema is in the file, beside the metrics as given.
    raw = _raw_json(tmp_path / "metrics.json")
    assert raw["schema"] == SCHEMA_VERSION == 1
    assert {k: v for k, v in raw.items() if k not in ("schema", "valid_loss")} == {
        k: v for k, v in metrics.items() if k != "valid_loss"
    }
    read = run.read_metrics(keys=("classes", "image_size"))
    assert np.isnan(read.pop("valid_loss"))  # NaN round-trips
    assert read == {k: v for k, v in metrics.items() if k != "valid_loss"}  # the schema is checked, not returned
    frame = run.read_history()
    assert list(frame.columns[:2]) == ["epoch", "stage"]  # epoch and stage first
    assert frame["val_loss"].tolist() == [0.6, 0.4] and frame["best"].tolist()[1] is True
    arrays = run.read_predictions(keys=("probs", "targets"))
    np.testing.assert_array_equal(arrays["probs"], probs)
    assert arrays["paths"].tolist() == paths.tolist()
    loaded = run.load_model()
    for w, w0 in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(w, w0)
    # No temporary files left beside them.
    assert sorted(os.listdir(tmp_path)) == ["history.csv", "metrics.json", "model.keras", "predictions.npz"]


def test_an_old_run_folder_without_schema_loads(tmp_path):
    # As `kertransfer train` wrote metrics.json before the schema key existed.
    (tmp_path / "metrics.json").write_text('{"classes": ["a", "b"], "image_size": 8, "arch": "tiny"}')
    metrics = RunFolder(tmp_path).read_metrics(keys=("classes", "image_size", "arch"))
    assert metrics == {"classes": ["a", "b"], "image_size": 8, "arch": "tiny"}


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize(
    "name, content, read, error, message",
    [
        ("metrics.json", None, "read_metrics", MissingRunFileError, r"No metrics\.json in the run folder .*kertransfer train"),
        ("predictions.npz", None, "read_predictions", MissingRunFileError, r"No predictions\.npz in the run folder"),
        ("history.csv", None, "read_history", MissingRunFileError, r"No history\.csv in the run folder"),
        ("model.keras", None, "load_model", MissingRunFileError, r"No model\.keras in the run folder"),
        ("metrics.json", '{"classes": [', "read_metrics", RunFolderError, r"cannot be read: not valid JSON.*rerun `kertransfer train`"),
        ("metrics.json", b"\xff\xfe{}", "read_metrics", RunFolderError, r"cannot be read: not valid JSON"),
        ("metrics.json", "[1, 2]", "read_metrics", RunFolderError, r"a JSON object was expected, found list"),
        ("metrics.json", '{"schema": "one"}', "read_metrics", RunFolderError, r"'schema' must be a non-negative integer"),
        ("metrics.json", '{"schema": 2, "classes": []}', "read_metrics", RunFolderError, r"has schema 2, newer than this kertransfer reads \(up to 1\).*Upgrade"),
        ("predictions.npz", b"not an npz", "read_predictions", RunFolderError, r"cannot be read"),
        ("history.csv", "", "read_history", RunFolderError, r"cannot be read: not CSV"),
    ],
)
def test_each_run_folder_error_names_the_path_and_the_fix(tmp_path, name, content, read, error, message):
    if content is not None:
        _write(tmp_path, name, content)
    with pytest.raises(error, match=message) as raised:
        getattr(RunFolder(tmp_path), read)()
    assert str(tmp_path / name) in str(raised.value)
    # One error type to catch, and the built-in ones of before.
    assert isinstance(raised.value, RunFolderError)
    assert isinstance(raised.value, FileNotFoundError if content is None else ValueError)


def test_missing_folder_keys_and_arrays_are_named(tmp_path):
    with pytest.raises(MissingRunFileError, match=r"Run folder not found: .*nope.* does not exist") as raised:
        RunFolder(tmp_path / "nope").read_metrics(required=False)
    assert str(tmp_path / "nope") in str(raised.value)
    assert RunFolder(tmp_path).read_metrics(required=False) == {}  # optional, absent
    _write(tmp_path, "metrics.json", '{"image_size": 8}')
    with pytest.raises(RunFolderError, match=r"metrics\.json lacks \['classes', 'arch'\]"):
        RunFolder(tmp_path).read_metrics(keys=("classes", "image_size", "arch"))
    np.savez(tmp_path / "predictions.npz", probs=np.zeros((2, 2)))
    with pytest.raises(RunFolderError, match=r"predictions\.npz lacks the array\(s\) \['targets'\]; found \['probs'\]"):
        RunFolder(tmp_path).read_predictions(keys=("probs", "targets"))
    # Paths saved as Python objects need pickle, which readers refuse.
    np.savez(tmp_path / "predictions.npz", paths=np.array([pathlib.Path("a.jpg")], dtype=object))
    with pytest.raises(RunFolderError, match=r"predictions\.npz cannot be read.*str array"):
        RunFolder(tmp_path).read_predictions()


def test_predict_report_and_export_share_the_policy(tmp_path):
    """A too-new metrics.json stops all three readers with the same error."""
    from kertransfer.export.common import resolve_meta
    from kertransfer.predict import load_run
    from kertransfer.report import write_report

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    RunFolder(tmp_path).write_model(model)
    RunFolder(tmp_path).write_predictions(probs=np.full((2, 2), 0.5), targets=np.array([0, 1]))
    (tmp_path / "metrics.json").write_text('{"schema": 99, "classes": ["a", "b"], "image_size": 8, "arch": "tiny"}')
    for read in (lambda: load_run(tmp_path), lambda: write_report(tmp_path), lambda: resolve_meta(model, str(tmp_path), None, None)):
        with pytest.raises(RunFolderError, match=r"metrics\.json has schema 99, newer than this kertransfer"):
            read()
    # Written by this version: all three read it.
    RunFolder(tmp_path).write_metrics({"classes": ["a", "b"], "image_size": 8, "arch": "tiny"})
    assert load_run(tmp_path)[1]["classes"] == ["a", "b"]
    assert write_report(tmp_path).is_file()
    assert resolve_meta(model, str(tmp_path), None, None)[0] == ["a", "b"]
