"""The run folder a training run writes: never half-written, never clobbered.

`kertransfer train --out DIR` writes `model.keras`, `metrics.json`,
`predictions.npz`, plots and a report into DIR. Two rules keep a previous
run safe:

- a folder that already holds a run is refused unless the caller says
  `overwrite=True` (`--overwrite`);
- every file is written under a temporary name beside its final one and
  renamed into place (`os.replace`, atomic on POSIX and Windows), so a run
  killed while saving leaves the previous `model.keras` whole and loadable.

This module imports nothing from the rest of kertransfer.
"""

import contextlib
import os
import uuid

# Files whose presence marks a folder as holding a run.
RUN_FILES = ("model.keras", "metrics.json", "predictions.npz", "history.csv")


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
            raise FileExistsError(
                f"The run folder {out_dir!r} already holds a run ({', '.join(found)}). "
                f"Pass another folder, or {flag} to replace it."
            )
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


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
