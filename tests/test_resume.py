"""Resuming: a fit or the main job killed part-way continues where it was."""

import csv
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

from kertransfer.cli import main
from kertransfer.learner import ConvLearner
from kertransfer.no_tensorflow import set_seed
from kertransfer.progress import RunProgress
from kertransfer.run_folder import load_model_file
from kertransfer.train import TrainConfig
from kertransfer.train import train

from conftest import write_synthetic_images

TESTS = pathlib.Path(__file__).resolve().parent


class _Killed(Exception):
    pass


class _Interrupt(keras.callbacks.Callback):
    """Raises after two batches of epoch `at` (0-based), as a kill would stop
    the fit: weights, optimizer and Dropout generators have moved on since
    the last backup."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at and batch == 1:
            raise _Killed(f"interrupted in epoch {self.epoch}")


def _unfrozen_learner(data):
    set_seed(0)
    learn = ConvLearner.pretrained("tiny_cnn", data, precompute=False, weights=None)
    learn.unfreeze()
    return learn


def test_fit_interrupted_then_called_again_ends_as_an_uninterrupted_fit(tiny_data, tmp_path):
    """`learn.fit(..., backup_dir=...)`: the second call continues the first."""
    lrs = np.array([1e-3, 3e-3, 1e-2])
    kwargs = {"cycle_len": 1, "cycle_mult": 2, "keep_best": True, "best_baseline": 10.0, "verbose": 0}
    reference = _unfrozen_learner(tiny_data)
    reference.fit(lrs, 2, **kwargs)

    learn = _unfrozen_learner(tiny_data)
    backup = tmp_path / "backup"
    with pytest.raises(_Killed):
        learn.fit(lrs, 2, callbacks=[_Interrupt(at=2)], backup_dir=backup, **kwargs)
    assert json.loads((backup / "fit.json").read_text())["epoch"] == 2
    assert learn.history == []  # the interrupted call recorded nothing
    np.random.seed(123)  # whatever the generators did since: the backup has their states
    learn.fit(lrs, 2, backup_dir=backup, **kwargs)

    assert [r["epoch"] for r in learn.history] == [1, 2, 3]
    for got, want in zip(learn.history, reference.history, strict=True):
        for key in ("loss", "val_loss", "accuracy", "best"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    # The SGDR schedule went on where it was: the LRs of all 3 epochs, restarts included.
    np.testing.assert_allclose(learn.sched.lr_history, reference.sched.lr_history, rtol=1e-12)
    assert len(learn.sched.batch_losses) == len(reference.sched.batch_losses)
    for got, want in zip(learn.model.get_weights(), reference.model.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not backup.exists()  # deleted once the fit completed


@pytest.mark.one_backend
def test_fit_refuses_the_backup_of_another_fit(tiny_data, tmp_path):
    learn = _unfrozen_learner(tiny_data)
    backup = tmp_path / "backup"
    with pytest.raises(_Killed):
        learn.fit(1e-3, 2, cycle_len=1, callbacks=[_Interrupt(at=1)], backup_dir=backup, verbose=0)
    with pytest.raises(ValueError, match=r"backup of a different fit \(epochs: backup 2, now 3"):
        learn.fit(1e-3, 3, cycle_len=1, backup_dir=backup, verbose=0)


class _Stateful:
    """A callback's state as `FitCheckpoint` and `RunProgress` save it."""

    def __init__(self, state=None):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


@pytest.mark.one_backend
def test_run_progress_carries_the_state_of_objects_across_steps(tmp_path):
    # The main job's best weights so far live in such an object: a resume
    # after a step (no fit backup) must get them back, arrays and all.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    weights = [np.arange(6, dtype="float32").reshape(3, 2), np.array([0.5, -1.5], dtype="float32")]
    kept = {"stage": "head_precomputed", "epoch": 1, "stage_epoch": 1, "val_loss": 0.152}
    config = TrainConfig(arch="tiny_cnn", image_size=32, weights=None, seed=0)
    progress = RunProgress.start(tmp_path, config, tmp_path / "data", {"train": "x", "valid": "y"})
    states = [_Stateful({"kept": kept, "weights": weights}), _Stateful({"kept": None, "weights": None})]
    progress.commit("head_precomputed", {}, model, [], {}, 1.0, stateful=states)

    restored, empty = _Stateful(), _Stateful()
    RunProgress.load(tmp_path).restore(model, stateful=[restored, empty])
    assert restored.state["kept"] == kept and empty.state == {"kept": None, "weights": None}
    assert len(restored.state["weights"]) == 2
    for got, want in zip(restored.state["weights"], weights, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="holds the states of 2 callbacks; there are 1"):
        RunProgress.load(tmp_path).restore(model, stateful=[_Stateful()])


# -------------------------------------------------------------- main job
_DRIVER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import conftest  # registers the tiny_cnn backbone
from conftest import write_synthetic_images
from kertransfer.cli import main
sys.exit(main(sys.argv[1:]))
"""

_FLAGS = [
    "--arch", "tiny_cnn", "--image-size", "32", "--batch-size", "8", "--weights", "none",
    "--head-epochs", "1", "--aug-epochs", "1", "--unfrozen-cycles", "2", "--tta", "1",
    "--seed", "0", "--bn-freeze", "--quiet",
]


def _start(argv, keras_home):
    env = dict(os.environ)
    # A precompute cache of its own: a cache miss draws a seed from NumPy's
    # generator (ImageBatches(seed=None)), a hit does not; two runs repeat
    # only from the same cache state.
    env["KERAS_HOME"] = str(keras_home)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    # The main job is backend-independent; eager torch starts and runs this
    # tiny job on the least CPU (no graph tracing): the test took 73 CPU s
    # with torch runs, 2026-12-03.
    env["KERAS_BACKEND"] = "torch"
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, *argv], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):  # not there (yet, or any more)
        return None


def _watch(proc, run, kill_when=None):
    """Polls `run` until `proc` ends (or `kill_when()` is true: SIGKILL).

    From the end of the first epoch on (a fit's backup, or a step done in
    progress.json), `model.keras` must be there at every poll. Returns how
    many polls saw the model.
    """
    seen = 0
    started = False
    while proc.poll() is None:
        progress = _read_json(run / "progress.json") or {}
        started = started or bool(progress.get("stages", {}).keys() - {"lr_find"}) or any(
            (run / "checkpoint").glob("*/fit.json")
        )
        if started:
            assert (run / "model.keras").is_file(), "model.keras missing after the first epoch"
            seen += 1
        if kill_when and kill_when():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    _, err = proc.communicate()
    return seen, err


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.one_backend  # subprocesses of the main job: the TensorFlow pass
def test_main_job_killed_twice_in_the_unfrozen_stage_resumes_to_the_same_model(tmp_path):
    """SIGKILL in the unfrozen stage, twice; `--resume` ends as a run never killed.

    First kill: after `lr_find` of the unfrozen stage is committed, during
    the stage's first epoch (the resume starts the stage from the record in
    progress.json). Second kill, of the resumed run: after that epoch (the
    next resume continues the fit from its backup).
    """
    # Synthetic classes, not photos: with the tiny random-init backbone (and
    # these sizes, and --bn-freeze), each unfrozen epoch beats every earlier
    # one (valid loss 0.47, 0.34, then 0.32, 0.22, 0.11), so the final (best)
    # weights are trained after the kills and the comparison means something
    # (checked below). Without --bn-freeze, the head epoch was kept.
    data = write_synthetic_images(
        tmp_path / "data", {"train/ants": 24, "train/bees": 24, "valid/ants": 8, "valid/bees": 8}
    )
    reference, run = tmp_path / "reference", tmp_path / "run"
    proc = _start(["train", str(data), "--out", str(reference), *_FLAGS], tmp_path / "home_ref")
    _, err = _watch(proc, reference)
    assert proc.returncode == 0, err

    def stages():
        return (_read_json(run / "progress.json") or {}).get("stages", {})

    unfrozen = run / "checkpoint" / "unfrozen" / "fit.json"
    proc = _start(["train", str(data), "--out", str(run), *_FLAGS], tmp_path / "home_run")
    seen, err = _watch(proc, run, kill_when=lambda: "lr_find_unfrozen" in stages())
    assert proc.returncode == -signal.SIGKILL, err
    assert seen > 0 and "unfrozen" not in stages() and not unfrozen.exists()

    resume = ["train", str(data), "--out", str(run), "--resume", "--quiet"]
    proc = _start(resume, tmp_path / "home_run")
    seen, err = _watch(proc, run, kill_when=lambda: (_read_json(unfrozen) or {}).get("epoch", 0) >= 1)
    assert proc.returncode == -signal.SIGKILL, err
    # Killed in the middle of the unfrozen stage (3 epochs), after its first.
    assert seen > 0 and "unfrozen" not in stages()
    killed_after = json.loads(unfrozen.read_text())["epoch"]
    assert 1 <= killed_after < 3
    assert not (run / "metrics.json").exists()

    proc = _start(resume, tmp_path / "home_run")
    seen, err = _watch(proc, run)
    assert proc.returncode == 0, err
    assert seen > 0

    want, got = _history(reference), _history(run)
    assert [r["epoch"] for r in got] == ["1", "2", "3", "4", "5"]  # each once, none missing
    assert [r["stage"] for r in got] == [r["stage"] for r in want]
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            assert float(g[key]) == pytest.approx(float(w[key]), rel=1e-5), (g["epoch"], key)
        assert g["best"] == w["best"]
    metrics, ref_metrics = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    # The kept weights were trained after the kills: the comparison tests the resume.
    assert ref_metrics["kept"]["stage"] == "unfrozen"
    assert ref_metrics["kept"]["epoch"] > 2 + killed_after, ref_metrics["kept"]
    assert metrics["kept"] == ref_metrics["kept"] and metrics["lrs"] == ref_metrics["lrs"]
    assert metrics["resumed"] == 2 and ref_metrics["resumed"] == 0
    diffs = [
        float(np.max(np.abs(a - b)))
        for a, b in zip(
            load_model_file(run / "model.keras").get_weights(),
            load_model_file(reference / "model.keras").get_weights(),
            strict=True,
        )
    ]
    print(f"max weight difference, resumed vs uninterrupted: {max(diffs):.3g}")
    assert max(diffs) <= 1e-5, max(diffs)
    assert json.loads((run / "progress.json").read_text())["finished"]
    assert not (run / "checkpoint").exists()


# ----------------------------------------------------- resume: the errors
@pytest.fixture
def no_decode(monkeypatch):
    from kertransfer.data.cache import ImageStore

    def fail(*args):
        raise AssertionError("decoded an image before checking --resume")

    monkeypatch.setattr(ImageStore, "get", fail)


@pytest.mark.one_backend
def test_resume_of_a_folder_that_is_not_a_run_fails_before_any_work(tmp_path, synthetic_folder, capsys, no_decode):
    assert main(["train", str(synthetic_folder), "--out", str(tmp_path / "missing"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot resume '{tmp_path / 'missing'}': there is no such folder" in err
    assert not (tmp_path / "missing").exists()

    old = tmp_path / "old"  # a folder with files, but no progress.json
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    assert main(["train", str(synthetic_folder), "--out", str(old), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot resume '{old}': it has no progress.json" in err and "metrics.json" in err
    assert "--overwrite" in err and os.listdir(old) == ["metrics.json"]
    with pytest.raises(FileNotFoundError, match="has no progress.json"):
        train(synthetic_folder, old, resume=True)

    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(synthetic_folder), "--out", str(old), "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass one of them"):
        train(synthetic_folder, old, resume=True, overwrite=True)


def _started_run(out, data_dir, finished=False):
    """The run folder a run of `kertransfer train` leaves (no training)."""
    out.mkdir()
    config = TrainConfig(arch="tiny_cnn", image_size=32, weights=None, seed=0, distribute="none")
    progress = RunProgress.start(out, config, data_dir, {"train": "x", "valid": "y"})
    if finished:
        (out / "metrics.json").write_text('{"valid_accuracy": 0.5}')
        (out / "model.keras").write_bytes(b"the model")
        progress.finish()
    return out


@pytest.mark.one_backend
def test_resuming_a_finished_run_does_nothing(tmp_path, synthetic_folder, capsys, no_decode):
    run = _started_run(tmp_path / "run", synthetic_folder, finished=True)
    before = {f: (run / f).read_bytes() for f in os.listdir(run)}
    assert main(["train", str(synthetic_folder), "--out", str(run), "--resume"]) == 0
    assert f"the run in {run} is finished; nothing to resume" in capsys.readouterr().err
    assert train(synthetic_folder, run, resume=True, verbose=0) == {"valid_accuracy": 0.5}
    assert {f: (run / f).read_bytes() for f in os.listdir(run)} == before
    # Without --resume the finished run is protected as before.
    assert main(["train", str(synthetic_folder), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" not in err


@pytest.mark.one_backend
def test_resume_with_other_settings_fails_before_any_work(tmp_path, synthetic_folder, capsys, no_decode):
    run = _started_run(tmp_path / "run", synthetic_folder)
    # An unfinished run is refused without --resume, which the message offers.
    assert main(["train", str(synthetic_folder), "--out", str(run)]) == 2
    assert "--resume to continue it" in capsys.readouterr().err
    argv = ["train", str(synthetic_folder), "--out", str(run), "--resume"]
    assert main([*argv, "--image-size", "64", "--tta", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--image-size: the run has 32, received 64" in err and "--tta: the run has 0, received 2" in err
    with pytest.raises(ValueError, match="image_size: the run has 32, received 64"):
        train(synthetic_folder, run, TrainConfig(arch="tiny_cnn", image_size=64, weights=None, seed=0, distribute="none"), resume=True)
    with pytest.raises(ValueError, match="data_dir: the run has"):
        train(tmp_path, run, resume=True)


@pytest.mark.one_backend
def test_a_run_recorded_before_a_setting_existed_resumes_with_its_default(tmp_path, synthetic_folder):
    # A run started by an older kertransfer has no record of settings added
    # since (e.g. cycle_len): it ran with their defaults' behaviour, so the
    # same settings resume, and a changed one is still refused.
    run = _started_run(tmp_path / "run", synthetic_folder)
    path = run / "progress.json"
    meta = json.loads(path.read_text())
    config = meta["config"]
    del config["cycle_len"], config["cycle_mult"]
    path.write_text(json.dumps(meta))
    progress = RunProgress.load(run)
    same = TrainConfig(**config)
    progress.check_same(same, synthetic_folder)
    with pytest.raises(ValueError, match=r"cycle_len: the run has 1, received 2"):
        progress.check_same(TrainConfig(**config, cycle_len=2), synthetic_folder)
    # A setting whose default changed what the job does (TTA's blend) resumes
    # with what the run did: the plain mean, not the new default's blend.
    del meta["config"]["tta_beta"]
    path.write_text(json.dumps(meta))
    progress = RunProgress.load(run)
    assert progress.recorded_settings()["tta_beta"] is None
    progress.check_same(TrainConfig(**progress.recorded_settings()), synthetic_folder)
    with pytest.raises(ValueError, match=r"tta_beta: the run has None, received 0.25"):
        progress.check_same(TrainConfig(**config), synthetic_folder)
