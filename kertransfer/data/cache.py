"""Where decoded pixels live between the file and the batch.

A store turns a file path into the uint8 `(height, width, 3)` array of
`kertransfer.images.decode_image` (short side `decode_size`):

- `ImageStore` (`cache=None`): decodes every time (streaming, flat memory);
- `MemoryStore` (`cache="memory"`): keeps each decoded array in RAM, about
  `decode_size**2 * 4/3 * 3` bytes an image (0.26 MB at 224 px);
- `DiskStore` (`cache="disk"`): writes each decoded array once as a `.npy`
  file under the Keras cache and memory-maps it afterwards (fast.ai v0.7's
  `resize_imgs`, without re-encoding: the pixels stay exactly those of the
  decode path). Files are keyed by path, size, mtime, decode size and
  `DECODE_VERSION`, so a changed photo or decoder is decoded again.

`cache="auto"` picks `memory` when the estimated decoded size fits
`memory_budget` bytes (2 GB by default), else streaming.

Every cached `.npy` (decoded images here, precomputed activations in the
learner) has a checksum file beside it (`save_checked`, `load_checked`): a
cache that is truncated, zeroed, garbage or of another shape is logged and
rebuilt instead of being used.
"""

import concurrent.futures
import hashlib
import json
import logging
import os

import numpy as np

from kertransfer.console import progress_bar
from kertransfer.files import atomic_path
from kertransfer.images import DECODE_VERSION
from kertransfer.images import decode_image
from kertransfer.images import probe_image

logger = logging.getLogger(__name__)

__all__ = ["CACHE_MODES", "DiskStore", "ImageStore", "MemoryStore", "make_store"]

CACHE_MODES = ("auto", "memory", "disk", None)
DEFAULT_MEMORY_BUDGET = 2 * 1024**3


def _digest(array):
    h = hashlib.blake2b(digest_size=16)
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, 1 << 26):  # 64 MB at a time from a memory map
        h.update(flat[start : start + (1 << 26)])
    return h.hexdigest()


def write_checksum(path):
    """Writes `<path>.sum` (shape, dtype, BLAKE2 digest) for the `.npy` at `path`."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    record = {"shape": list(array.shape), "dtype": str(array.dtype), "blake2b": _digest(array)}
    with atomic_path(path + ".sum") as tmp, open(tmp, "w") as f:
        json.dump(record, f)


def save_checked(path, array):
    """Saves `array` as `.npy` at `path` (temporary name, then renamed) and its checksum."""
    with atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)
    write_checksum(path)


def load_checked(path, shape=None):
    """The `.npy` at `path`, memory-mapped, or None if it is missing or damaged.

    Damaged: unreadable header, pickled data, a size that does not match the
    header, no checksum file, or a checksum, shape or dtype that differs
    from the one written with it (e.g. zeroed data under a valid header);
    `shape`, when given, must match too. Damage is logged (warning) and the
    caller rebuilds the file.
    """
    if not os.path.isfile(path):
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        with open(path + ".sum") as f:
            record = json.load(f)
        problem = None
        if shape is not None and tuple(array.shape) != tuple(shape):
            problem = f"shape {array.shape}, expected {tuple(shape)}"
        elif [list(array.shape), str(array.dtype)] != [record["shape"], record["dtype"]]:
            problem = "shape or dtype differs from its checksum file"
        elif _digest(array) != record["blake2b"]:
            problem = "checksum mismatch"
    except (OSError, ValueError, EOFError, KeyError, TypeError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is None:
        return array
    logger.warning("Rebuilding the damaged cache file %s (%s)", path, problem)
    return None


def estimated_bytes(num_images, decode_size):
    """Decoded size of `num_images` photos, bytes (4:3 photos, uint8 RGB)."""
    return int(num_images * decode_size * decode_size * 4 / 3 * 3)


class ImageStore:
    """Decodes a file each time it is asked for (no cache).

    Args:
        decode_size: short side of the decoded arrays, pixels.
    """

    kind = None

    def __init__(self, decode_size):
        self.decode_size = int(decode_size)

    def get(self, path):
        """uint8 `(height, width, 3)`, short side `decode_size`.

        Raises:
            OSError: (and other Pillow errors) if the file cannot be decoded.
        """
        return decode_image(path, self.decode_size)

    def clear(self):
        """Drops whatever the store holds."""


class MemoryStore(ImageStore):
    """Keeps every decoded array in RAM after its first decode."""

    kind = "memory"

    def __init__(self, decode_size):
        super().__init__(decode_size)
        self._arrays = {}

    def get(self, path):
        array = self._arrays.get(path)
        if array is None:
            array = super().get(path)
            self._arrays[path] = array
        return array

    def put(self, path, array):
        self._arrays[path] = array

    def clear(self):
        self._arrays.clear()

    @property
    def nbytes(self):
        """Bytes of pixels held."""
        return sum(a.nbytes for a in self._arrays.values())


class DiskStore(ImageStore):
    """Decoded arrays as `.npy` files in `folder`, memory-mapped when read.

    Args:
        decode_size: short side of the decoded arrays, pixels.
        folder: cache folder (created).
    """

    kind = "disk"

    def __init__(self, decode_size, folder):
        super().__init__(decode_size)
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)

    def _file(self, path):
        stat = os.stat(path)
        key = hashlib.sha1(
            f"{DECODE_VERSION}|{self.decode_size}|{os.path.abspath(path)}|"
            f"{stat.st_size}|{stat.st_mtime_ns}".encode()
        ).hexdigest()
        return os.path.join(self.folder, key[:2], key + ".npy")

    def get(self, path):
        cached = self._file(path)
        array = load_checked(cached)  # None when missing or damaged
        if array is not None:
            return array
        array = super().get(path)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        save_checked(cached, array)
        return array


def make_store(cache, decode_size, num_images, memory_budget=None, folder=None):
    """The store for a `cache` setting (see the module docstring).

    Args:
        cache: `"auto"`, `"memory"`, `"disk"` or None (stream).
        decode_size: short side of decoded images, pixels.
        num_images: images in the data (for `"auto"`'s estimate).
        memory_budget: bytes `"auto"` may keep in RAM; default 2 GB.
        folder: the disk cache folder (default: Keras's cache,
            `~/.keras/kertransfer/decoded`).

    Returns:
        an `ImageStore`.

    Raises:
        ValueError: on an unknown `cache` or a negative budget.
    """
    if cache not in CACHE_MODES:
        raise ValueError(
            f"cache must be one of {CACHE_MODES} ('auto': memory when the decoded "
            f"images fit memory_budget, else streaming). Received cache={cache!r}."
        )
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if budget < 0:
        raise ValueError(f"memory_budget must be >= 0 bytes. Received {memory_budget!r}.")
    if cache == "auto":
        cache = "memory" if estimated_bytes(num_images, decode_size) <= budget else None
    if cache == "memory":
        return MemoryStore(decode_size)
    if cache == "disk":
        if folder is None:
            from kertransfer.files import cache_dir

            folder = os.path.join(cache_dir(), "decoded")
        return DiskStore(decode_size, folder)
    return ImageStore(decode_size)


def check_files(paths, store, num_workers):
    """Which files a store can serve; what is wrong with the others.

    A `MemoryStore` decodes every file now (the pixels are needed anyway,
    and a file that decodes once cannot fail later). Other stores only read
    each file's header (`kertransfer.images.probe_image`): fast on large
    data, and a file that breaks later is replaced when a batch meets it.

    Returns:
        `(kept, skipped)`: indices into `paths` that passed, and
        `[(path, reason)]` of those that did not.
    """
    eager = isinstance(store, MemoryStore)

    def work(path):
        try:
            if eager:
                store.put(path, ImageStore.get(store, path))
            else:
                probe_image(path, draft_short_side=store.decode_size)
            return None
        except Exception as e:  # Pillow raises many types on bad files.
            return f"{type(e).__name__}: {e}"

    # Within `kertransfer.console.progress_bars()`: a bar over the files.
    bar = progress_bar(len(paths), unit_name="image")
    errors = []
    with concurrent.futures.ThreadPoolExecutor(max(1, int(num_workers))) as pool:
        for error in pool.map(work, paths):
            errors.append(error)
            bar.update(len(errors))
    kept = [i for i, error in enumerate(errors) if error is None]
    skipped = [(paths[i], error) for i, error in enumerate(errors) if error is not None]
    return kept, skipped
