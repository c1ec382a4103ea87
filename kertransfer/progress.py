"""`progress.json`: how far the main job got, so `--resume` can go on."""

import contextlib
import dataclasses
import json
import os
import shutil

from kertransfer.callbacks.checkpoint import assign_arrays
from kertransfer.callbacks.checkpoint import get_rng_state
from kertransfer.callbacks.checkpoint import load_states
from kertransfer.callbacks.checkpoint import save_states
from kertransfer.callbacks.checkpoint import set_rng_state
from kertransfer.callbacks.checkpoint import variable_arrays
from kertransfer.config import SETTINGS_BEFORE_THEY_EXISTED
from kertransfer.files import atomic_path
from kertransfer.run_folder import read_state
from kertransfer.run_folder import write_state

__all__ = ["RunProgress", "removed_on_failure"]

# 2: the states of `stateful` objects (the best weights of the run so far).
_FORMAT = 2


class RunProgress:
    """The main job's record of its finished stages, in `<run>/progress.json`.

    Why two levels. The main job (`kertransfer.train.train`) is a sequence
    of steps: `lr_find`, three fits (each a `model.fit` with a fresh
    optimizer, as Keras needs after `trainable` changes), a second
    `lr_find`, an evaluation, TTA and the files. A fit in progress is backed
    up at every epoch's end by `kertransfer.callbacks.FitCheckpoint` (what
    `keras.callbacks.BackupAndRestore` does for one `model.fit`, made atomic
    and complete: see its docstring) in `<run>/checkpoint/<stage>/`, and
    continues from there. What no single fit knows — which steps are done,
    the LRs `lr_find` chose, the history and LR records of earlier fits,
    the weights and random generator states between two steps, and the
    state of objects that span steps (the best weights of the run so far)
    — is committed here after each step: `progress.json` (small, readable)
    names a `.npz` in `<run>/checkpoint/` holding every variable of the
    model (weights and the layers' random generator states) and the arrays
    of those objects' states; NumPy's and Python's generator states are in
    the JSON. The JSON is renamed into place last, so a kill at any moment
    leaves the previous step's record or the new one
    (`kertransfer.run_folder.write_state`).

    `--resume` then rebuilds the learner as the run did (same config, same
    seed), restores the last record, skips the steps done (loading their
    results), and lets the interrupted fit continue from its own backup. A
    finished run keeps `progress.json` (`"finished": true`) and loses
    `checkpoint/`.

    Args:
        out_dir: the run folder.
        meta: the JSON record.
        arrays: the variables of the last record (`{"model/<i>": array}`).

    Use `RunProgress.start` (a new run) or `RunProgress.load` (resume).
    """

    def __init__(self, out_dir, meta, arrays=None):
        self.out_dir = os.fspath(out_dir)
        self.meta = meta
        self.arrays = arrays or {}

    # ----------------------------------------------------------- opening
    @staticmethod
    def path(out_dir):
        return os.path.join(os.fspath(out_dir), "progress.json")

    @staticmethod
    def checkpoint_dir(out_dir):
        return os.path.join(os.fspath(out_dir), "checkpoint")

    @classmethod
    def start(cls, out_dir, config, data_dir, data_fingerprints):
        """Records a new run (replacing any earlier record and backups).

        Args:
            out_dir: the run folder (exists).
            config: the `TrainConfig`.
            data_dir: the data folder.
            data_fingerprints: `{split: fingerprint}` of the images.

        Returns:
            `RunProgress`.
        """
        shutil.rmtree(cls.checkpoint_dir(out_dir), ignore_errors=True)
        meta = {
            "format": _FORMAT,
            "finished": False,
            "config": dict(vars(config)),
            "data_dir": os.path.abspath(data_dir),
            "data": data_fingerprints,
            "stages": {},
            "history": [],
            "stage_seconds": {},
            "wall_seconds": 0.0,
            "resumes": 0,
        }
        progress = cls(out_dir, meta)
        write_state(cls.path(out_dir), meta)
        return progress

    @classmethod
    def load(cls, out_dir):
        """Reads the record of a run to resume.

        Returns:
            `RunProgress`.

        Raises:
            FileNotFoundError: if `out_dir` or its `progress.json` is
                missing (not a run `kertransfer train` can resume).
            ValueError: if `progress.json` or its `.npz` cannot be read.
        """
        out_dir = os.fspath(out_dir)
        if not os.path.isdir(out_dir):
            raise FileNotFoundError(
                f"Cannot resume {out_dir!r}: there is no such folder. Start a run there with "
                f"`kertransfer train DATA_DIR --out {out_dir}` (without --resume)."
            )
        state = read_state(cls.path(out_dir))
        if state is None:
            holds = ", ".join(sorted(os.listdir(out_dir))[:5]) or "nothing"
            raise FileNotFoundError(
                f"Cannot resume {out_dir!r}: it has no progress.json, so it is not a run "
                f"folder of `kertransfer train` that can be continued (it holds: {holds}). "
                "Start a new run with another --out, or the same with --overwrite to replace it."
            )
        meta, arrays = state
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{cls.path(out_dir)} has format {meta.get('format')!r}; this kertransfer "
                f"resumes format {_FORMAT}. Start a new run (--overwrite)."
            )
        return cls(out_dir, meta, arrays)

    # ---------------------------------------------------------- querying
    @property
    def finished(self):
        return bool(self.meta["finished"])

    def done(self, name):
        """Whether step `name` was committed."""
        return name in self.meta["stages"]

    def result(self, name):
        """The dict committed for step `name`."""
        return self.meta["stages"][name]

    def backup_dir(self, stage):
        """Where the fit of `stage` backs itself up (`ConvLearner.fit(backup_dir=...)`)."""
        return os.path.join(self.checkpoint_dir(self.out_dir), stage)

    # ---------------------------------------------------------- updating
    def commit(self, name, result, model, history, stage_seconds, wall_seconds, stateful=()):
        """Records step `name` as done, with the state to go on from.

        Args:
            name: the step.
            result: JSON-able dict (what a resumed run needs of the step).
            model: the learner's full `keras.Model`: all its variables are
                saved (weights and the layers' random generator states).
            history: `learn.history` so far.
            stage_seconds: `{stage: seconds}` so far.
            wall_seconds: wall time of the run so far.
            stateful: objects with `state_dict()` / `load_state_dict()`
                whose state spans steps (as for `FitCheckpoint`: JSON-able
                values, or lists of numpy arrays); `restore` gives it back.
        """
        self.meta["stages"][name] = result
        self.meta["history"] = list(history)
        self.meta["stage_seconds"] = dict(stage_seconds)
        self.meta["wall_seconds"] = float(wall_seconds)
        self.meta["rng"] = get_rng_state()
        states, state_arrays = save_states(stateful)
        self.meta.update(states)
        self.arrays = {**variable_arrays(model.variables, "model"), **state_arrays}
        write_state(
            self.path(self.out_dir), self.meta, self.arrays,
            arrays_dir=self.checkpoint_dir(self.out_dir), tag=name,
        )

    def restore(self, model, stateful=()):
        """Puts the last committed variables, states and generator states back.

        Does nothing on a run with no step committed yet.

        Args:
            model: the learner's full `keras.Model`.
            stateful: the objects `commit` was given, in the same order.

        Raises:
            ValueError: if the variables do not fit `model`, or the record
                holds the states of another number of objects.
        """
        if self.arrays:
            assign_arrays(model.variables, self.arrays, "model", self.path(self.out_dir))
        if "stateful" in self.meta:
            load_states(stateful, self.meta, self.arrays, self.path(self.out_dir))
        if "rng" in self.meta:
            set_rng_state(self.meta["rng"])

    def count_resume(self):
        """Counts one more resume in the record (written at once)."""
        self.meta["resumes"] = self.meta.get("resumes", 0) + 1
        # The same arrays: only the JSON changes.
        with atomic_path(self.path(self.out_dir)) as tmp, open(tmp, "w") as f:
            json.dump(self.meta, f)

    def finish(self):
        """Marks the run finished and deletes its backups (`checkpoint/`)."""
        self.meta["finished"] = True
        for key in ("rng", "stateful", "stateful_arrays"):  # their arrays go
            self.meta.pop(key, None)
        self.arrays = {}
        write_state(self.path(self.out_dir), self.meta, arrays_dir=self.checkpoint_dir(self.out_dir))
        shutil.rmtree(self.checkpoint_dir(self.out_dir), ignore_errors=True)

    def recorded_settings(self):
        """The `TrainConfig` fields the run started with, as a dict.

        A setting added since the run started, whose default would now do
        something else (`kertransfer.config.SETTINGS_BEFORE_THEY_EXISTED`),
        gets the value that does what the run did; the others are left to
        their defaults.
        """
        return {**SETTINGS_BEFORE_THEY_EXISTED, **self.meta["config"]}

    def check_same(self, config, data_dir):
        """Raises if `config` or `data_dir` differ from those the run started with.

        Raises:
            ValueError: naming each difference.
        """
        # A setting the run's record lacks was added to TrainConfig after
        # the run started: the run had its default's behaviour, or the one
        # `recorded_settings` names.
        defaults = {f.name: f.default for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else {}
        saved = {**defaults, **self.recorded_settings()}
        differ = [
            f"{k}: the run has {saved.get(k)!r}, received {v!r}"
            for k, v in vars(config).items()
            if json.dumps(saved.get(k)) != json.dumps(v)
        ]
        if os.path.abspath(data_dir) != self.meta["data_dir"]:
            differ.append(f"data_dir: the run has {self.meta['data_dir']!r}, received {os.path.abspath(data_dir)!r}")
        if differ:
            raise ValueError(
                f"Cannot resume {self.out_dir!r} with other settings ({'; '.join(differ)}). "
                "Resume with the settings it started with (leave the flags out: the run's own "
                "are used), or start a new run."
            )

    def check_data(self, fingerprints):
        """Raises if the images changed since the run started.

        Raises:
            ValueError: naming the splits that changed.
        """
        changed = [s for s, fp in fingerprints.items() if self.meta["data"].get(s) != fp]
        if changed:
            raise ValueError(
                f"Cannot resume {self.out_dir!r}: the images of the {' and '.join(changed)} "
                f"split(s) in {self.meta['data_dir']} changed since the run started (files "
                "added, removed or modified). Resuming would train on two datasets; start a "
                "new run (--overwrite)."
            )


@contextlib.contextmanager
def removed_on_failure(out_dir):
    """Deletes the run folder `out_dir` if the block made it and fails before any work was saved.

    "Work" is what a resume would use: `model.keras` (written from the
    first epoch on) or a step recorded in `progress.json`. A folder that
    existed before the block is never deleted.

    Example:

    ```python
    with removed_on_failure("runs/new"):
        check_out_dir("runs/new")
        ...  # a bad data folder raises: runs/new is gone
    ```
    """
    out_dir = os.fspath(out_dir)
    existed = os.path.lexists(out_dir)
    try:
        yield
    except BaseException:
        if not existed and os.path.isdir(out_dir) and not _holds_work(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _holds_work(out_dir):
    if os.path.exists(os.path.join(out_dir, "model.keras")):
        return True
    try:
        return bool(RunProgress.load(out_dir).meta["stages"])
    except (OSError, ValueError):
        return False
