"""The run folder a training run writes: never half-written, never clobbered.

`kertransfer train --out DIR` writes `model.keras`, `metrics.json`,
`predictions.npz`, `history.csv`, plots and a report into DIR. `RunFolder`
is the one writer and reader of those files: the main job writes through
it, and `kertransfer predict`, `report` and `export` read through it, with
one error policy (`RunFolderError`). `metrics.json` carries the format's
version (`"schema"`); folders written before it existed still load.

Two rules keep a previous run safe:

- a folder that already holds a run is refused unless the caller says
  `overwrite=True` (`--overwrite`);
- every file is written under a temporary name beside its final one and
  renamed into place (`os.replace`, atomic on POSIX and Windows), so a run
  killed while saving leaves the previous `model.keras` whole and loadable.

A run that saves state to continue from (`kertransfer train --resume`)
commits it with `write_state`: arrays in a new `.npz` file, then the JSON
that names it, renamed into place; the rename is the commit, so a reader
(`read_state`) finds the previous state or the new one, never a mix.

This module imports only `kertransfer.files` (`atomic_path`, kept as
`kertransfer.run_folder.atomic_path`) and, to load a model, the custom
layers (`kertransfer.layers`).
"""

import csv
import glob
import json
import os
import uuid

import numpy as np

from kertransfer.files import atomic_path

# Files whose presence marks a folder as holding a run (progress.json: a
# run that has started, finished or not; see `kertransfer.train`).
RUN_FILES = ("model.keras", "metrics.json", "predictions.npz", "history.csv", "progress.json")

# Version of the run folder's format, written into metrics.json as
# "schema". Folders without it (written before it existed) are version 0.
# Raise it when a reader of the old format would misread the new one.
SCHEMA_VERSION = 1

# What each file holds, for the messages of `RunFolderError`.
_CONTENTS = {
    "model.keras": "the trained model",
    "metrics.json": "the class names, image size and scores",
    "predictions.npz": "the validation predictions",
    "history.csv": "one row per epoch",
}
_FIX = "Pass a folder written by `kertransfer train`"


def check_out_dir(out_dir, overwrite=False, flag="overwrite=True"):
    """Creates `out_dir`, refusing one that already holds a run.

    Args:
        out_dir: the run folder.
        overwrite: allow a folder that holds a run; its files are then
            replaced one by one as the new run writes them.
        flag: how the caller spells `overwrite` in the message
            (`"--overwrite"` on the command line).

    Returns:
        `out_dir`.

    Raises:
        FileExistsError: if `out_dir` holds a run (any of `RUN_FILES`) and
            `overwrite` is False, or is a file.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"The run folder {out_dir!r} is a file. Pass another folder.")
    if os.path.isdir(out_dir) and not overwrite:
        found = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
        if found:
            # A killed run can be continued: say so.
            resume = "--resume" if flag.startswith("--") else "resume=True"
            hint = f" {resume} to continue it," if _unfinished(out_dir) else ""
            raise FileExistsError(
                f"The run folder {out_dir!r} already holds a run ({', '.join(found)}). "
                f"Pass another folder,{hint} or {flag} to replace it."
            )
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def _unfinished(out_dir):
    try:
        with open(os.path.join(out_dir, "progress.json")) as f:
            return not json.load(f).get("finished", False)
    except (OSError, ValueError):
        return False


def write_state(json_path, meta, arrays=None, arrays_dir=None, tag="state"):
    """Commits `meta` (JSON) and `arrays` together, atomically.

    The arrays go to a new file `<json stem>-<tag>-<random>.npz` in
    `arrays_dir` (default: `json_path`'s folder), written under a temporary
    name and renamed; then `meta`, with the key `"arrays"` naming that file
    (relative to `json_path`'s folder), is written to `json_path` the same
    way. That last rename is the commit: a process killed at any moment
    leaves the previous pair or the new one. The `.npz` files of earlier
    commits are removed after it.

    Args:
        json_path: the JSON file (the commit point).
        meta: a JSON-serializable dict (NaN and infinities allowed, as
            Python's `json` writes them).
        arrays: None, or a dict `{name: numpy array}`.
        arrays_dir: folder of the `.npz` file (created).
        tag: a word in the `.npz` file name (e.g. `"epoch-0003"`), for
            people looking in the folder.

    Returns:
        The path of the `.npz` written, or None.
    """
    json_path = os.path.abspath(os.fspath(json_path))
    folder = os.path.dirname(json_path)
    arrays_dir = os.path.abspath(os.fspath(arrays_dir)) if arrays_dir else folder
    stem = os.path.splitext(os.path.basename(json_path))[0]
    meta = dict(meta)
    meta.pop("arrays", None)
    npz = None
    if arrays is not None:
        os.makedirs(arrays_dir, exist_ok=True)
        npz = os.path.join(arrays_dir, f"{stem}-{tag}-{uuid.uuid4().hex[:6]}.npz")
        with atomic_path(npz) as tmp:
            np.savez(tmp, **arrays)
        meta["arrays"] = os.path.relpath(npz, folder)
    with atomic_path(json_path) as tmp, open(tmp, "w") as f:
        json.dump(meta, f)
    for old in glob.glob(os.path.join(glob.escape(arrays_dir), f"{glob.escape(stem)}-*.npz")):
        if old != npz:
            os.remove(old)
    return npz


def read_state(json_path):
    """Reads a state committed by `write_state`.

    Args:
        json_path: the JSON file.

    Returns:
        `(meta, arrays)`: the dict, and a dict of numpy arrays (empty when
        none were committed); None when there is no `json_path`.

    Raises:
        ValueError: if the JSON or its `.npz` cannot be read (named).
    """
    json_path = os.fspath(json_path)
    if not os.path.isfile(json_path):
        return None
    try:
        with open(json_path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise ValueError(f"{json_path} is not readable JSON ({e}); it cannot be resumed from.") from e
    arrays = {}
    if meta.get("arrays"):
        npz = os.path.join(os.path.dirname(os.path.abspath(json_path)), meta["arrays"])
        try:
            with np.load(npz) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{json_path} names {npz}, which cannot be read ({type(e).__name__}: {e}); "
                "it cannot be resumed from."
            ) from e
    return meta, arrays


def load_model_file(model_path):
    """Loads a `.keras` file written by kertransfer, without its optimizer.

    Files written by `ConvLearner.save` hold Keras's own layers
    (`kertransfer.portable`); older ones hold kertransfer's, which are
    registered first (`kertransfer.layers`), so neither needs
    `custom_objects`.

    Args:
        model_path: path of the `.keras` file.

    Returns:
        The `keras.Model`.

    Raises:
        FileNotFoundError: if there is no file at `model_path`.
        ValueError: if the file exists but cannot be loaded (truncated,
            corrupt, not a `.keras` archive); names the file.
    """
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"No model file at {model_path!r}.")
    import keras

    import kertransfer.layers  # noqa: F401 (registers the custom layers)
    from kertransfer.backbones.weights import initialized_by_loading

    try:
        # The file holds every weight: the initializers need not run.
        with initialized_by_loading():
            return keras.saving.load_model(model_path, compile=False)
    except Exception as e:  # Keras raises many types on a bad file.
        # Keras says "File not found" for a file that is there but not a
        # zip archive: that part of its message would mislead.
        detail = type(e).__name__ if "File not found" in str(e) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"{model_path} exists ({os.path.getsize(model_path)} bytes) but is not a "
            f"loadable .keras file: corrupt or truncated ({detail}). Retrain, or "
            "restore it from a copy."
        ) from e


class RunFolderError(ValueError):
    """A run folder, or one of its files, cannot be read.

    The message names the path, what is wrong and what to do. A missing
    folder or file raises `MissingRunFileError`, which is also a
    `FileNotFoundError`; so `except RunFolderError` catches every problem
    of a run folder, and code written for `FileNotFoundError` /
    `ValueError` keeps working.
    """


class MissingRunFileError(RunFolderError, FileNotFoundError):
    """The run folder, or a file it should hold, does not exist."""


class RunFolder:
    """The files of one training run: the one writer and reader.

    `kertransfer train` writes `model.keras`, `metrics.json` (with
    `"schema": SCHEMA_VERSION`), `history.csv` and `predictions.npz`
    through it, each atomically (`atomic_path`); `kertransfer predict`,
    `report` and `export` read them through it. Every reader has one error
    policy: a missing folder or file raises `MissingRunFileError`, an
    unreadable file, a `metrics.json` from a newer kertransfer or one
    lacking a needed key raise `RunFolderError`, each naming the path and
    the fix. Run folders written before the schema key existed load as
    schema 0.

    Args:
        path: the run folder (str or path-like). Nothing is read or
            created until a method needs it.

    Example:

    ```python
    run = RunFolder("runs/dogscats")
    metrics = run.read_metrics(keys=("classes", "image_size"))
    model = run.load_model()
    probs = run.read_predictions()["probs"]
    ```
    """

    MODEL = "model.keras"
    METRICS = "metrics.json"
    HISTORY = "history.csv"
    PREDICTIONS = "predictions.npz"

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunFolder({self.path!r})"

    def file(self, name):
        """Path of the file `name` in the folder (it may not exist)."""
        return os.path.join(self.path, name)

    @property
    def model_path(self):
        """Path of `model.keras` (written at every best epoch by the main job)."""
        return self.file(self.MODEL)

    def has(self, name):
        """Whether the folder holds the file `name`."""
        return os.path.isfile(self.file(name))

    # ------------------------------------------------------------ writing

    def write_model(self, model):
        """Saves `model` (anything with `.save(path)`: a `keras.Model`, a
        learner) as `model.keras`, atomically. Returns its path."""
        with atomic_path(self.model_path) as tmp:
            model.save(tmp)
        return self.model_path

    def write_metrics(self, metrics):
        """Writes `metrics` to `metrics.json` with `"schema": SCHEMA_VERSION`.

        Args:
            metrics: a JSON-serializable dict.

        Returns:
            The path written.
        """
        document = {"schema": SCHEMA_VERSION, **{k: v for k, v in metrics.items() if k != "schema"}}
        path = self.file(self.METRICS)
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(document, f, indent=2)
        return path

    def write_history(self, rows):
        """Writes one CSV row per epoch to `history.csv`.

        Args:
            rows: a list of dicts (`learn.history`); the columns are the
                union of their keys, `epoch` and `stage` first, then sorted.

        Returns:
            The path written.
        """
        fields = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("epoch", "stage"), k))
        path = self.file(self.HISTORY)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def write_predictions(self, **arrays):
        """Writes numpy arrays (`probs`, `tta_probs`, `targets`, `paths`)
        to `predictions.npz`. Returns the path written."""
        path = self.file(self.PREDICTIONS)
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)
        return path

    # ------------------------------------------------------------ reading

    def require(self, name=None):
        """Path of the file `name`, which must exist (or of the folder).

        Raises:
            MissingRunFileError: if the folder or the file does not exist.
        """
        if not os.path.isdir(self.path):
            raise MissingRunFileError(
                f"Run folder not found: {self.path!r} does not exist or is not a folder. "
                f"{_FIX} (it holds model.keras and metrics.json)."
            )
        if name is None:
            return self.path
        path = self.file(name)
        if not os.path.isfile(path):
            what = _CONTENTS.get(name, name)
            raise MissingRunFileError(
                f"No {name} in the run folder {self.path!r} ({path} does not exist); it holds "
                f"{what}. {_FIX}, or rerun it to write the file."
            )
        return path

    def _unreadable(self, path, problem):
        return RunFolderError(
            f"{path} cannot be read: {problem}. It is corrupt, truncated or not written by "
            "kertransfer: rerun `kertransfer train`, or restore the file from a copy."
        )

    def read_metrics(self, keys=(), required=True):
        """The `metrics.json` dict.

        Args:
            keys: keys the caller needs (e.g. `("classes", "image_size")`).
            required: if False, a folder without `metrics.json` gives `{}`
                (a bare `model.keras` can still be exported); an unreadable
                one still raises.

        Returns:
            The dict as the main job wrote it; `"schema"` is checked (absent:
            0, a folder written before it existed), not returned, so every
            version reads back as the dict `kertransfer.train.train` returned.

        Raises:
            MissingRunFileError: if the folder, or (with `required`) the
                file, does not exist.
            RunFolderError: if the file is not a JSON object, its schema is
                newer than `SCHEMA_VERSION`, or a key of `keys` is missing.
        """
        if not required and not self.has(self.METRICS):
            self.require()
            return {}
        path = self.require(self.METRICS)
        try:
            with open(path, encoding="utf-8") as f:
                metrics = json.load(f)
        except (OSError, ValueError) as e:  # ValueError: bad JSON or UTF-8
            raise self._unreadable(path, f"not valid JSON ({e})") from e
        if not isinstance(metrics, dict):
            raise self._unreadable(path, f"a JSON object was expected, found {type(metrics).__name__}")
        schema = metrics.pop("schema", 0)
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 0:
            raise self._unreadable(path, f"'schema' must be a non-negative integer, found {schema!r}")
        if schema > SCHEMA_VERSION:
            raise RunFolderError(
                f"{path} has schema {schema}, newer than this kertransfer reads (up to "
                f"{SCHEMA_VERSION}): the run was written by a newer kertransfer. Upgrade it "
                "(`pip install -U kertransfer`) to read this run folder."
            )
        missing = [key for key in keys if key not in metrics]
        if missing:
            raise RunFolderError(
                f"{path} lacks {missing}; expected the keys {list(keys)} that `kertransfer train` "
                f"writes. {_FIX}, or add them to the file."
            )
        return metrics

    def read_predictions(self, keys=()):
        """The arrays of `predictions.npz` as a dict (no pickle).

        Args:
            keys: arrays the caller needs (e.g. `("probs", "targets")`).

        Raises:
            MissingRunFileError: if the folder or the file does not exist.
            RunFolderError: if the file cannot be read without pickle, or
                an array of `keys` is missing.
        """
        path = self.require(self.PREDICTIONS)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError) as e:
            raise self._unreadable(
                path, f"{type(e).__name__}: {e} (paths must be a str array, e.g. "
                "np.asarray(paths, dtype=str), not objects)") from e
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise RunFolderError(
                f"{path} lacks the array(s) {missing}; found {sorted(arrays)}. {_FIX}: it writes "
                "probs (n, c), tta_probs (n, c), targets (n,) and paths (n,)."
            )
        return arrays

    def read_history(self):
        """`history.csv` as a `pandas.DataFrame`, one row per epoch.

        Raises:
            MissingRunFileError: if the folder or the file does not exist.
            RunFolderError: if the file is empty or not CSV.
        """
        import pandas as pd

        path = self.require(self.HISTORY)
        try:
            return pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise self._unreadable(path, f"not CSV ({e})") from e

    def load_model(self):
        """Loads `model.keras` without its optimizer (`load_model_file`).

        Raises:
            MissingRunFileError: if the folder or the file does not exist.
            ValueError: if the file cannot be loaded (names it).
        """
        return load_model_file(self.require(self.MODEL))
