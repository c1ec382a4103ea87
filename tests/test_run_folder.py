"""Run folders: a previous run is never clobbered or left half-written."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from kertransfer.cli import main
from kertransfer.run_folder import atomic_path, check_out_dir

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
"""


@pytest.mark.parametrize("delay", [0.3, 0.7])
def test_sigkill_while_saving_keeps_a_loadable_model(tmp_path, delay):
    path = tmp_path / "model.keras"
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(2)])
    model.save(path)
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)  # several saves, then a kill in the middle of one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    loaded = keras.saving.load_model(path)
    # Whole: the first model plus k for one k >= 1 in every weight (each
    # save adds 1), never a mix of two saves or a truncated file.
    offsets = [w - w0 for w, w0 in zip(loaded.get_weights(), model.get_weights())]
    k = np.round(offsets[0].flat[0])
    assert k >= 1, "no save finished before the kill; raise the delay"
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
