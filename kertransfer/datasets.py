"""Sample datasets (fast.ai's `untar_data`)."""

import logging
import os

__all__ = ["untar_data", "SAMPLES"]

logger = logging.getLogger(__name__)

# name -> where the archive lives and how it is checked: `url` (HTTPS),
# `fname` (archive name in the Keras cache), `file_hash` + `hash_algorithm`
# (the full digest; `keras.utils.get_file` checks it).
# dogscats: fast.ai's own copy and pin (fastai/data/checks.txt, the
# manifest `fastai.data.external.untar_data` checks: 839,285,364 bytes and
# this md5; fast.ai publishes no sha256). hymenoptera: the PyTorch tutorial publishes no
# digest and none could be computed on the offline build machine, so it is
# unpinned: its sha256 is logged on download, to be pinned here.
SAMPLES = {
    "hymenoptera": {
        "url": "https://download.pytorch.org/tutorial/hymenoptera_data.zip",
        "fname": "hymenoptera.zip",
        "file_hash": None,
        "hash_algorithm": "sha256",
    },
    "dogscats": {
        "url": "https://s3.amazonaws.com/fast-ai-sample/dogscats.tgz",
        "fname": "dogscats.tgz",
        "file_hash": "3e483c8d6ef2175e9d395a6027eb92b7",
        "hash_algorithm": "md5",
    },
}


def _has_splits(path):
    return os.path.isdir(os.path.join(path, "train"))


def untar_data(name, path=None, download=True):
    """Returns the folder of sample dataset `name`, downloading if needed.

    Looks, in order, at: `path` when given; `$KERTRANSFER_DATA/<name>`; the
    Keras cache (`~/.keras/datasets/<name>`); and finally downloads the
    official archive over HTTPS with `keras.utils.get_file`, checks it
    against the full digest pinned in `SAMPLES` (dogscats: fast.ai's md5;
    hymenoptera has no published digest: its sha256 is logged) and
    extracts it there.

    Args:
        name: `"hymenoptera"` (PyTorch transfer-learning tutorial: 245/153
            ants and bees) or `"dogscats"` (fast.ai lesson 1).
        path: explicit folder holding `train/`; used as is.
        download: allow the download step.

    Returns:
        str, a folder with `train/` and `valid/` or `val/`.

    Raises:
        ValueError: for an unknown name, or a download that does not match
            its pinned digest (the file is deleted).
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
    sample = SAMPLES[name]
    url = sample["url"]
    for candidate in (os.path.join(cache, name), *_inner_candidates(cache, name)):
        if _has_splits(candidate):
            return candidate
        looked.append(candidate)
    if not download:
        raise FileNotFoundError(
            f"Sample dataset {name!r} not found in {looked}. Set "
            "KERTRANSFER_DATA to the folder holding it, or allow the download."
        )
    import keras

    archive = os.path.join(cache, name, sample["fname"])
    # `get_file` falls back to /tmp/.keras when its folder does not exist
    # yet (it checks write access), where the next call would not look.
    os.makedirs(os.path.dirname(archive), exist_ok=True)
    try:
        extracted = keras.utils.get_file(
            fname=sample["fname"],
            origin=url,
            file_hash=sample["file_hash"],
            hash_algorithm=sample["hash_algorithm"],
            cache_dir=os.path.dirname(cache),
            cache_subdir=os.path.join("datasets", name),
            extract=True,
        )
    except ValueError as e:
        # `get_file` leaves a file that fails its hash check in place.
        if os.path.isfile(archive):
            os.remove(archive)
        raise ValueError(
            f"The download of {url} does not match its pinned "
            f"{sample['hash_algorithm']} {sample['file_hash']} ({e}): a partial or "
            f"tampered file. It was deleted ({archive}); try again, or set "
            "KERTRANSFER_DATA to a folder holding the data."
        ) from e
    except Exception as e:
        raise FileNotFoundError(
            f"Sample dataset {name!r} not found in {looked} and the download "
            f"of {url} failed ({type(e).__name__}: {e}). Set KERTRANSFER_DATA "
            "to a folder holding it."
        ) from e
    if sample["file_hash"] is None and os.path.isfile(archive):
        logger.info("%s sha256=%s", archive, keras.utils.hash_file(archive, "sha256"))
    for dirpath, dirnames, _ in os.walk(extracted):
        if "train" in dirnames:
            return dirpath
    raise FileNotFoundError(f"The archive from {url} has no train/ folder under {extracted}.")


def _inner_candidates(cache, name):
    """Folders inside an earlier extraction that may hold `train/`."""
    base = os.path.join(cache, name)
    if not os.path.isdir(base):
        return []
    found = []
    for entry in sorted(os.listdir(base)):
        outer = os.path.join(base, entry)
        if os.path.isdir(outer):
            found.append(outer)
            found += [os.path.join(outer, e) for e in sorted(os.listdir(outer))]
    return found
