"""Files on disk: written atomically, cached in kertransfer's folder.

The two helpers every layer of kertransfer writes files with: decoded
images and weights (`kertransfer.data.cache`, `kertransfer.backbones`),
cached activations (`kertransfer.precompute`) and run folders
(`kertransfer.run_folder`). This module imports nothing from the rest of
kertransfer.
"""

import contextlib
import os
import uuid

__all__ = ["atomic_path", "cache_dir"]


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


def cache_dir():
    """Returns (and creates) kertransfer's folder in the Keras cache.

    `$KERAS_HOME/kertransfer` when `KERAS_HOME` is set, else
    `~/.keras/kertransfer` (falling back to `/tmp/.keras/kertransfer` when the
    home folder is not writable, as Keras does).
    """
    base = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    if not os.access(os.path.dirname(base) or ".", os.W_OK):
        base = os.path.join("/tmp", ".keras")
    path = os.path.join(base, "kertransfer")
    os.makedirs(path, exist_ok=True)
    return path
