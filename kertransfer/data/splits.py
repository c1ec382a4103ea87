"""Splits: which files train and which validate, and each split's decoded images.

The index side (no pixels): a seeded `val_pct` held out (`random_split`),
user row indices checked (`check_val_idxs`), a class-balanced subsample
(`subsample`). The pixel side: `Split` holds one split's files and labels
and serves decoded images from a store (`kertransfer.data.cache`); a file
that fails to decode in the middle of an epoch is replaced by another image
of the same class, reported once (`Split.failed`), and the epoch keeps its
size. `load_splits` checks every listed file against the store (headers, or
a full decode for the memory store) before training starts.
"""

import logging
import os
import threading
import warnings

import numpy as np

from kertransfer.data.cache import check_files

__all__ = [
    "Split",
    "check_every_class_trains",
    "check_val_idxs",
    "load_split",
    "load_splits",
    "random_split",
    "subsample",
]

logger = logging.getLogger(__name__)


def random_split(n, val_pct, seed):
    """`(train_idx, valid_idx)`: sorted indices, a seeded `val_pct` held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_pct * n)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def subsample(labels, max_images, seed):
    """Sorted indices of at most `max_images` items, seeded, spread over the classes.

    Items are drawn in a seeded random order, class by class in turn (the
    first of each class, then the second of each, ...), so every class
    keeps `max_images // num_classes` items or all it has, and the rest go
    to the classes with more. All indices when there are no more than
    `max_images`.

    Args:
        labels: int class of each item `(n,)`.
        max_images: None (all), or the most items kept.
        seed: seed of the draw.

    Returns:
        int array of the kept indices, ascending.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_images is None or n <= max_images:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    rank = np.empty(n, dtype="int64")  # place of each item among its class, in `order`
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    position = np.empty(n, dtype="int64")
    position[order] = np.arange(n)
    return np.sort(np.lexsort((position, rank))[:max_images])


def check_val_idxs(val_idxs, n, csv_path):
    """`(train_idx, valid_idx)` from user row indices, validated."""
    val = np.asarray(val_idxs).reshape(-1)
    if val.size and not np.issubdtype(val.dtype, np.integer):
        raise ValueError(
            f"val_idxs must be integer row indices of {csv_path} (0 = first "
            f"row after the header). Received dtype {val.dtype}."
        )
    val = np.unique(val.astype(np.int64))
    if val.size == 0 or val.size >= n:
        raise ValueError(
            f"val_idxs must hold between 1 and {n - 1} of the {n} rows of "
            f"{csv_path}, so both splits have images. Received {val.size}."
        )
    if val[0] < 0 or val[-1] >= n:
        raise ValueError(
            f"val_idxs must be row indices in [0, {n - 1}] for {csv_path}. "
            f"Received values from {val[0]} to {val[-1]}."
        )
    return np.setdiff1d(np.arange(n), val), val


class Split:
    """One split's files and labels; pixels come from a store on demand.

    Args:
        paths: image files.
        labels: int32 `(n,)`, multi-hot float32 `(n, num_classes)`, or None.
        store: an `ImageStore` (`kertransfer.data.cache`).

    Attributes:
        failed: `{index: reason}` of files that failed to decode after the
            scan (each reported once, then replaced in every batch).
    """

    def __init__(self, paths, labels, store):
        self.paths = list(paths)
        self.labels = labels
        self.store = store
        self.failed = {}
        self._lock = threading.Lock()

    def __len__(self):
        return len(self.paths)

    def image(self, index):
        """The decoded uint8 `(h, w, 3)` image `index`, or its stand-in.

        A file that cannot be decoded any more (changed, truncated or
        removed after the scan) is reported once and replaced by the next
        readable image of the same class (the same tags, multi-label; any
        image, unlabeled), so an epoch never dies and keeps its size.

        Raises:
            ValueError: when no readable image is left to stand in.
        """
        tried = set()
        while True:
            if index not in self.failed:
                try:
                    return self.store.get(self.paths[index])
                except Exception as e:  # Pillow raises many types on bad files.
                    self._fail(index, f"{type(e).__name__}: {e}")
            tried.add(index)
            index = self._stand_in(index, tried)

    def _fail(self, index, reason):
        with self._lock:
            if index in self.failed:
                return
            self.failed[index] = reason
        message = (
            f"Cannot decode {self.paths[index]} any more ({reason}); it was "
            "readable when the data was scanned. Using another image of the same "
            "class in its place from now on (listed in data.skipped)."
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=4)

    def _stand_in(self, index, tried):
        n = len(self.paths)
        for step in range(1, n):
            other = (index + step) % n
            if other in tried or other in self.failed:
                continue
            if self.labels is None or np.array_equal(self.labels[other], self.labels[index]):
                return other
        raise ValueError(
            f"No readable image is left to stand in for {self.paths[index]} (its class's "
            f"files all failed to decode: {[self.paths[i] for i in sorted(tried)][:5]}). "
            "Check the data folder and restart."
        )

    @property
    def skipped(self):
        """`[(path, reason)]` of the files that failed after the scan."""
        return [(self.paths[i], why) for i, why in sorted(self.failed.items())]


def load_split(paths, labels, store, num_workers):
    """A `Split` of the files that `store` can serve, and the rest.

    See `kertransfer.data.cache.check_files`: a memory store decodes every
    file now; the others read headers only.

    Returns:
        `(split, skipped)` with `skipped` as `[(path, reason)]`.
    """
    kept, skipped = check_files(paths, store, num_workers)
    kept_labels = None if labels is None else labels[kept]
    return Split([paths[i] for i in kept], kept_labels, store), skipped


def check_every_class_trains(classes, source, split, bad):
    """Raises if a class lost all its training images to unreadable files.

    Args:
        classes: class names; label `i` is `classes[i]`.
        source: the training split's listed `(paths, labels)`.
        split: the `Split` of the files kept (`load_split`).
        bad: `[(path, reason)]` of the files skipped.

    Raises:
        ValueError: naming the classes left without a readable image.
    """
    counts = np.bincount(split.labels, minlength=len(classes))
    listed = np.bincount(np.asarray(source[1]), minlength=len(classes))
    empty = [c for c, n, m in zip(classes, counts, listed) if n == 0 and m > 0]
    if empty:
        examples = [p for p, _ in bad if any(os.sep + c + os.sep in p for c in empty)][:3]
        raise ValueError(
            f"No readable training image for class(es) {empty}: all their files were "
            f"skipped as unreadable, e.g. {examples or bad[:3]}. Replace them with "
            "images, or remove the class."
        )


def load_splits(split_sources, store, num_workers, path, classes, allow_empty=False):
    """`Split`s of every listed split, checked against `store` (`load_split`).

    Args:
        split_sources: `{name: (paths, labels)}` (labels None when
            unlabeled); a None value is no such split.
        store: the `ImageStore` every split decodes through.
        num_workers: threads checking (or, memory store, decoding) files.
        path: the data folder, for error messages.
        classes: class names (to check every class keeps a training image).
        allow_empty: accept a split with no readable file.

    Returns:
        `(splits, skipped)`: `{name: Split}` and `[(path, reason)]` of the
        files that could not be read.

    Raises:
        ValueError: on a split with no readable file (unless `allow_empty`),
            or a class whose training files were all unreadable.
    """
    splits, skipped = {}, []
    for name, source in split_sources.items():
        if source is None:
            continue
        split, bad = load_split(source[0], source[1], store, num_workers)
        if len(split) == 0 and not allow_empty:
            raise ValueError(
                f"None of the {len(source[0])} {name} files under {path} "
                f"could be read as images, e.g. {bad[:1]}."
            )
        if name == "train" and split.labels is not None and split.labels.ndim == 1:
            check_every_class_trains(classes, source, split, bad)
        splits[name] = split
        skipped += bad
    return splits, skipped
