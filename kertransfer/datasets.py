"""Sample datasets (fast.ai's `untar_data`)."""

import hashlib
import logging
import os

__all__ = ["untar_data", "SAMPLES"]

logger = logging.getLogger(__name__)

# name -> (official archive URL, folder inside the archive, sha256 or None).
# The sha256 pins could not be looked up from the offline build machine;
# until they are filled in, the hash of a downloaded archive is logged.
SAMPLES = {
    "hymenoptera": (
        "https://download.pytorch.org/tutorial/hymenoptera_data.zip",
        "hymenoptera_data",
        None,
    ),
    "dogscats": ("http://files.fast.ai/data/dogscats.zip", "dogscats", None),
}


def _has_splits(path):
    return os.path.isdir(os.path.join(path, "train"))


def untar_data(name, path=None, download=True):
    """Returns the folder of sample dataset `name`, downloading if needed.

    Looks, in order, at: `path` when given; `$KERTRANSFER_DATA/<name>`; the
    Keras cache (`~/.keras/datasets/<name>`); and finally downloads the
    official archive with `keras.utils.get_file` (checked against its sha256
    when pinned in `SAMPLES`) and extracts it there.

    Args:
        name: `"hymenoptera"` (PyTorch transfer-learning tutorial: 245/153
            ants and bees) or `"dogscats"` (fast.ai lesson 1).
        path: explicit folder holding `train/`; used as is.
        download: allow the download step.

    Returns:
        str, a folder with `train/` and `valid/` or `val/`.

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: if `path` lacks `train/`, or nothing is found and
            `download=False` or the download fails (the message lists every
            place looked at and the `KERTRANSFER_DATA` variable).

    Example:

    >>> untar_data("hymenoptera")  # doctest: +SKIP
    '/data/hymenoptera'
    """
    if name not in SAMPLES:
        raise ValueError(
            f"Unknown sample dataset {name!r}. Available: {sorted(SAMPLES)}."
        )
    if path is not None:
        path = os.fspath(path)
        if not _has_splits(path):
            raise FileNotFoundError(f"{path} has no train/ folder.")
        return path
    looked = []
    env = os.environ.get("KERTRANSFER_DATA")
    if env:
        candidate = os.path.join(env, name)
        if _has_splits(candidate):
            return candidate
        looked.append(candidate)
    cache = os.path.join(
        os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "datasets"
    )
    url, inner, sha256 = SAMPLES[name]
    for candidate in (os.path.join(cache, name), os.path.join(cache, name, inner)):
        if _has_splits(candidate):
            return candidate
        looked.append(candidate)
    if not download:
        raise FileNotFoundError(
            f"Sample dataset {name!r} not found in {looked}. Set "
            "KERTRANSFER_DATA to the folder holding it, or allow the download."
        )
    import keras

    try:
        archive = keras.utils.get_file(
            fname=f"{name}.zip",
            origin=url,
            file_hash=sha256,
            hash_algorithm="sha256",
            cache_dir=os.path.dirname(cache),
            cache_subdir=os.path.join("datasets", name),
            extract=True,
        )
    except Exception as e:
        raise FileNotFoundError(
            f"Sample dataset {name!r} not found in {looked} and the download "
            f"of {url} failed ({type(e).__name__}: {e}). Set KERTRANSFER_DATA "
            "to a folder holding it."
        ) from e
    if sha256 is None and os.path.isfile(archive):
        with open(archive, "rb") as f:
            logger.info("%s sha256=%s", archive, hashlib.sha256(f.read()).hexdigest())
    root = archive if os.path.isdir(archive) else os.path.dirname(archive)
    for dirpath, dirnames, _ in os.walk(root):
        if "train" in dirnames:
            return dirpath
    raise FileNotFoundError(f"The archive from {url} has no train/ folder under {root}.")
