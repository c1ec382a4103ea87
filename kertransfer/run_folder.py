"""The run folder a training run writes: never half-written, never clobbered.

`kertransfer train --out DIR` writes `model.keras`, `metrics.json`,
`predictions.npz`, plots and a report into DIR. Two rules keep a previous
run safe:

- a folder that already holds a run is refused unless the caller says
  `overwrite=True` (`--overwrite`);
- every file is written under a temporary name beside its final one and
  renamed into place (`os.replace`, atomic on POSIX and Windows), so a run
  killed while saving leaves the previous `model.keras` whole and loadable.

A run that saves state to continue from (`kertransfer train --resume`)
commits it with `write_state`: arrays in a new `.npz` file, then the JSON
that names it, renamed into place; the rename is the commit, so a reader
(`read_state`) finds the previous state or the new one, never a mix.

This module imports nothing from the rest of kertransfer.
"""

import contextlib
import glob
import json
import os
import uuid

import numpy as np

# Files whose presence marks a folder as holding a run (progress.json: a
# run that has started, finished or not; see `kertransfer.train`).
RUN_FILES = ("model.keras", "metrics.json", "predictions.npz", "history.csv", "progress.json")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write; renames it to `path` on success.

    The temporary file sits in the same folder (same file system, so the
    rename is atomic) and keeps `path`'s extension, as writers like
    `keras.Model.save` (`.keras`) and `matplotlib` (`.png`) choose the
    format from it. On an exception the temporary file is removed and
    `path` is untouched.

    Args:
        path: the final file path.

    Yields:
        The temporary path (str) to write to.

    Example:

    >>> with atomic_path("runs/demo/model.keras") as tmp:
    ...     model.save(tmp)
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    # Unique per process and thread: two writers never share a temporary file.
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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

    kertransfer's custom layers (`kertransfer.layers`) are registered
    first, so the file needs no `custom_objects`.

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

    try:
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
