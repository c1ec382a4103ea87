"""`ImageClassifierData`: the front of the data package.

`ImageClassifierData.from_paths` reads fast.ai's layout (`path/train/<class>/*`,
`path/valid/<class>/*`) or Keras's (`path/<class>/*`, a seeded `val_pct`
held out), and `from_csv` a label CSV (Kaggle dog breeds `id,breed`, or
Planet's multi-label `image_name,tags`). Pixels come from
`kertransfer.images.decode_image` (the one decode path, shared with
prediction and export) through a store (`kertransfer.data.cache`): kept in
memory when the data is small, streamed from disk (or from a disk cache of
decoded arrays) when it is not, and served as numpy batches through Keras
`PyDataset`s (`kertransfer.data.batches`). Files that cannot be read are
skipped and reported before training starts; one that breaks later is
replaced by another image of its class, so an epoch never dies on a bad
file.
"""

import hashlib
import logging
import os
import warnings

import numpy as np

from kertransfer.data import preview
from kertransfer.data import sources
from kertransfer.data.batches import ImageBatches
from kertransfer.data.cache import make_store
from kertransfer.data.splits import load_splits
from kertransfer.images import DECODE_VERSION
from kertransfer.reprs import html_repr
from kertransfer.reprs import short_list
from kertransfer.reprs import text_repr
from kertransfer.transforms import tfms_from_model

__all__ = ["ImageClassifierData"]

logger = logging.getLogger(__name__)


def _fingerprint(paths, *extra):
    digest = hashlib.sha1(repr(extra).encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


_UNSET = object()  # an argument not given


class ImageClassifierData:
    """Training/validation(/test) images of a classification task.

    Build it with `ImageClassifierData.from_paths` (class folders) or
    `ImageClassifierData.from_csv` (a label CSV, single- or multi-label:
    see `is_multi`). Images are decoded with their short side at
    `round(image_size / crop_pct)` pixels (about 0.26 MB each at 224 px)
    and, by `cache`, kept in memory, cached on disk, or decoded again for
    every batch (see `kertransfer.data.cache`).

    Attributes:
        path: the data folder.
        classes: sorted class names; label `i` is `classes[i]`.
        train_paths, valid_paths, test_paths: files kept (`from_paths`: in
            label order; `from_csv`: in CSV row order).
        train_labels, valid_labels: int32 class indices `(n,)`, or
            multi-hot float32 `(n, num_classes)` when `is_multi`.
        skipped: `[(path, reason)]` of files that could not be read: at
            the scan, and any that failed to decode later (replaced in
            batches by another image of their class).
        store: where decoded pixels live (`store.kind`: "memory", "disk"
            or None for streaming).
        image_size, batch_size: model input side (pixels), batch size.
        train_tfms, valid_tfms: `ImageTransforms`.
    """

    def __init__(
        self,
        path,
        classes,
        splits,
        tfms,
        batch_size,
        skipped,
        num_workers=None,
        store=None,
    ):
        self.path = path
        self.classes = list(classes)
        self._splits = splits
        self.train_tfms, self.valid_tfms = tfms
        self.batch_size = int(batch_size)
        self._skipped = list(skipped)
        self.num_workers = num_workers
        self.store = store or next(iter(splits.values())).store
        self.oversample = False

    @property
    def skipped(self):
        """`[(path, reason)]`: files skipped at the scan, then any that failed later."""
        later = [item for split in self._splits.values() for item in split.skipped]
        return self._skipped + later

    @classmethod
    def from_paths(
        cls,
        path,
        image_size=224,
        batch_size=64,
        tfms=None,
        trn_name="train",
        val_name=None,
        test_name=None,
        val_pct=0.2,
        seed=42,
        num_workers=None,
        oversample=False,
        cache="auto",
        memory_budget=None,
        max_images=None,
    ):
        """Reads a folder of class folders (fast.ai `from_paths`).

        Layouts: fast.ai's `path/<trn_name>/<class>/*` for training, and
        `path/valid/<class>/*` or `path/val/<class>/*` for validation (with
        neither, a seeded random `val_pct` of the training images is held
        out); or Keras's `path/<class>/*` (what
        `keras.utils.image_dataset_from_directory` reads), with a seeded
        `val_pct` held out. An optional unlabeled `path/<test_name>/*`
        becomes the test set.

        Args:
            path: data folder.
            image_size: model input side, pixels (ignored when `tfms` given).
            batch_size: images per batch.
            tfms: `(train_tfms, valid_tfms)` from `tfms_from_model`; default:
                side-on augmentation with `max_zoom=1.1`.
            trn_name: training sub-folder.
            val_name: validation sub-folder; None tries `valid`, then `val`.
            test_name: unlabeled test sub-folder, or None.
            val_pct: fraction held out when there is no validation folder.
            seed: seed of that split.
            num_workers: decoding threads (default: CPU count).
            cache: where decoded pixels live: `"memory"` (decoded once, at
                load time), `"disk"` (decoded arrays written once under the
                Keras cache, memory-mapped), None (decoded for every batch,
                flat memory), or `"auto"`: memory when the estimated decoded
                size fits `memory_budget`, else None. Without memory, files
                are only checked by their header at load time.
            memory_budget: bytes `"auto"` may keep in memory (default 2 GB).
            oversample: repeat the training images of rarer classes so each
                class appears as often as the largest one per epoch (fast.ai's
                advice for unbalanced data: copy the rare cases). Only the
                training split; indices are repeated, images are not copied.
                See also `learn.fit(..., class_weight="balanced")`.
            max_images: None, or at most this many images per split
                (training, validation, test), drawn with `seed` and spread
                evenly over the classes (`sources.subsample`): a quick smoke
                run. Only the files kept are decoded.

        Returns:
            `ImageClassifierData`.

        Raises:
            FileNotFoundError: if `path`, the training folder, or a named
                validation/test folder does not exist, or `path` is in neither
                layout.
            ValueError: on an empty class folder, a validation class that is
                not a training class, no decodable images in a split, or
                `val_pct` outside (0, 1).

        Example:

        >>> data = ImageClassifierData.from_paths("data/dogscats", image_size=224)
        >>> data.classes
        ['cats', 'dogs']
        """
        found = sources.read_folders(path, trn_name, val_name, test_name, val_pct, seed, max_images)
        if tfms is None:
            tfms = tfms_from_model(None, image_size)
        data = cls._load(
            found.path, found.classes, found.splits, tfms, batch_size, num_workers, cache,
            memory_budget, listed_skipped=found.skipped,
        )
        data.oversample = bool(oversample)
        return data

    @classmethod
    def from_csv(
        cls,
        path,
        folder,
        csv_fname,
        val_idxs=None,
        suffix="",
        skip_header=True,
        image_size=224,
        batch_size=64,
        tfms=None,
        test_name=None,
        val_pct=0.2,
        seed=42,
        label_delim=" ",
        num_workers=None,
        cache="auto",
        memory_budget=None,
        multi_label=None,
        cat_separator=_UNSET,
    ):
        """Reads images named in a CSV of labels (fast.ai v0.7 `from_csv`).

        Each CSV row is `file_id,labels`; the image is
        `path/folder/<file_id><suffix>`, inside `path/folder` (ids with
        `..` or absolute paths are refused). Labels are split on
        `label_delim`: Kaggle Planet's `train_v2.csv` (`image_name,tags`,
        e.g. `train_0,haze primary`) is multi-label, Kaggle dog breeds'
        `labels.csv` (`id,breed`) single-label. With `multi_label=None` the
        data is multi-label (`is_multi`) as soon as one row has other than
        exactly one label; its targets are then multi-hot float32
        `(batch, num_classes)`, otherwise int32 class indices `(batch,)` as
        with `from_paths`. Readings that could go either way raise instead
        of guessing (`sources.split_tags`): another separator inside a cell
        (`ant,insect`), or words that never occur apart (`carpenter ant`).
        Columns after the second are ignored. Undecodable images are
        skipped and reported, as in `from_paths`.

        Args:
            path: data folder.
            folder: image sub-folder of `path` (e.g. `"train-jpg"`).
            csv_fname: the CSV file: a path, or a file name inside `path`.
            val_idxs: row indices (0 = first row after the header) held out
                for validation; None holds out a seeded random `val_pct`.
            suffix: appended to each file id, e.g. `".jpg"`.
            skip_header: the first CSV line is a header. If its file id
                names an existing image, the file has no header and the
                call raises rather than drop that row.
            image_size: model input side, pixels (ignored when `tfms` given).
            batch_size: images per batch.
            tfms: `(train_tfms, valid_tfms)` from `tfms_from_model`; default:
                side-on augmentation with `max_zoom=1.1`.
            test_name: unlabeled test sub-folder of `path`, or None.
            val_pct: fraction held out when `val_idxs` is None.
            seed: seed of that split.
            label_delim: separator of several labels in one cell (fast.ai's
                `label_delim`); None takes each cell as one label.
            multi_label: None infers it from the cells (see above); True
                splits every cell on `label_delim` and gives multi-hot
                targets; False keeps each cell as one label (names with
                spaces, `carpenter ant`).
            cat_separator: fast.ai v0.7's name for `label_delim`; when given
                (None included), it is used instead.
            num_workers: decoding threads (default: CPU count).
            cache, memory_budget: where decoded pixels live, as in
                `from_paths`.

        Returns:
            `ImageClassifierData`; classes are the sorted distinct labels.

        Raises:
            FileNotFoundError: if `path`, `folder`, the CSV, the test folder
                or any listed image file is missing (missing files listed).
            ValueError: on an unreadable CSV, fewer than two columns, a row
                without file id or without labels, a header line that names
                an image, an id outside `folder`, an ambiguous label cell,
                bad `val_idxs` or `val_pct`, or no decodable image in a
                split.

        Example:

        >>> data = ImageClassifierData.from_csv(
        ...     "data/planet", "train-jpg", "data/planet/train_v2.csv",
        ...     suffix=".jpg", image_size=64,
        ...     tfms=tfms_from_model("efficientnet_lite0", 64,
        ...                          aug_tfms=transforms_top_down, max_zoom=1.05))
        >>> data.is_multi, data.classes[:3]
        (True, ['agriculture', 'artisinal_mine', 'bare_ground'])
        """
        if cat_separator is not _UNSET:
            label_delim = cat_separator
        found = sources.read_csv(
            path, folder, csv_fname, val_idxs, suffix, skip_header, test_name, val_pct, seed,
            label_delim, multi_label,
        )
        tfms = tfms if tfms is not None else tfms_from_model(None, image_size)
        return cls._load(
            found.path, found.classes, found.splits, tfms, batch_size, num_workers, cache,
            memory_budget,
        )

    @classmethod
    def _load(cls, path, classes, split_sources, tfms, batch_size, num_workers, cache, memory_budget, store=None, allow_empty=False, warn=True, listed_skipped=()):
        workers = num_workers or os.cpu_count() or 1
        total = sum(len(source[0]) for source in split_sources.values() if source is not None)
        if store is None:
            store = make_store(cache, tfms[1].decode_size, total, memory_budget)
        logger.info(
            "%d images, cache=%s (%s)", total, store.kind,
            "decoding all now" if store.kind == "memory" else "checking headers",
        )
        splits, skipped = load_splits(split_sources, store, workers, path, classes, allow_empty)
        skipped = list(listed_skipped) + skipped
        if skipped and warn:
            listing = "\n".join(f"  {p}  ({why})" for p, why in skipped)
            warnings.warn(
                f"Skipped {len(skipped)} file(s) that are not readable "
                f"images:\n{listing}",
                stacklevel=3,
            )
        return cls(path, classes, splits, tfms, batch_size, skipped, num_workers, store)

    @classmethod
    def from_files(
        cls,
        paths,
        classes,
        tfms,
        batch_size=64,
        num_workers=None,
        cache="memory",
    ):
        """Unlabeled image files as the `test` split, e.g. to predict them.

        Args:
            paths: image files, in the order predictions are wanted.
            classes: the class names of the model that will score them.
            tfms: `(train_tfms, valid_tfms)` (TTA uses the first).
            batch_size: images per batch.
            num_workers: decoding threads (default: CPU count).
            cache: as in `from_paths`; default `"memory"` (each file is
                decoded at once, so unreadable ones are known up front).

        Returns:
            `ImageClassifierData` with only a `test` split (possibly empty:
            `skipped` lists the files that could not be read; no warning).
        """
        split_sources = {"test": ([os.fspath(p) for p in paths], None)}
        return cls._load(
            os.getcwd(), classes, split_sources, tfms, batch_size, num_workers,
            cache, None, allow_empty=True, warn=False,
        )

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def is_multi(self):
        """True for multi-label data (multi-hot targets, sigmoid head)."""
        return self._splits["train"].labels.ndim == 2

    @property
    def image_size(self):
        return self.valid_tfms.image_size

    def split(self, name):
        """The `Split` named `name`: its files, labels and decoded images.

        Args:
            name: "train", "valid" or "test".

        Returns:
            `kertransfer.data.splits.Split`.

        Raises:
            ValueError: if this data has no split `name` (no test folder).
        """
        if name not in self._splits:
            raise ValueError(f"No {name!r} split in this data (have {list(self._splits)}).")
        return self._splits[name]

    @property
    def train_paths(self):
        return self._splits["train"].paths

    @property
    def valid_paths(self):
        return self._splits["valid"].paths

    @property
    def test_paths(self):
        return self._splits["test"].paths if "test" in self._splits else None

    @property
    def train_labels(self):
        return self._splits["train"].labels

    @property
    def valid_labels(self):
        return self._splits["valid"].labels

    def counts(self, split="train"):
        """Images per class (having the tag, if multi-label) in `split`.

        Returns:
            `{class_name: count}`.
        """
        labels = self._splits[split].labels
        if labels.ndim == 2:
            return {c: int(labels[:, i].sum()) for i, c in enumerate(self.classes)}
        return {c: int((labels == i).sum()) for i, c in enumerate(self.classes)}

    def fingerprint(self, split):
        """Hash of a split's files (path, size, mtime), image size and decoder version."""
        return _fingerprint(
            self._splits[split].paths,
            DECODE_VERSION,
            self.valid_tfms.decode_size,
            self.image_size,
        )

    # --------------------------------------------------------------- batches
    def train_batches(
        self, augment=True, shuffle=True, drop_last=False, seed=None, batch_size=None,
        batch_multiple=1,
    ):
        """Training batches: random crops, augmented unless `augment=False`.

        With `oversample`, rare classes' images are repeated (`train_index`).
        `batch_multiple` (the device count) cuts the short last batch to a
        multiple of it (`ImageBatches`).
        """
        return ImageBatches(
            self._splits["train"],
            self.train_tfms,
            batch_size or self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            augment=augment,
            seed=seed,
            indices=self.train_index,
            workers=self.batch_workers,
            batch_multiple=batch_multiple,
        )

    @property
    def batch_workers(self):
        """Worker threads that decode the batches (`ImageBatches(workers=)`).

        Decoding from disk runs in Keras PyDataset worker threads (Pillow
        releases the GIL): `num_workers`, else one per CPU. Images decoded
        in memory only need cropping: 1.
        """
        if self.store.kind == "memory":
            return 1
        return self.num_workers or os.cpu_count() or 1

    @property
    def train_index(self):
        """Indices of the training images served each epoch.

        Every image once, or with `oversample` each class's images repeated
        up to the largest class's count (`kertransfer.balance.oversample_indices`).

        Returns:
            int64 array `(images_per_epoch,)` into `train_paths`/`train_labels`.

        Raises:
            ValueError: with `oversample` on multi-label data.
        """
        n = len(self._splits["train"])
        if not self.oversample:
            return np.arange(n, dtype="int64")
        from kertransfer.balance import oversample_indices

        return oversample_indices(self.train_labels, self.num_classes)

    def fixed_batches(self, split, tfms=None, augment=False, seed=None, batch_size=None):
        """Unshuffled batches of `split` ("train", "valid" or "test").

        With the default `tfms` (validation transforms: center crop, no
        augmentation) this is what precompute and prediction use; TTA passes
        the training transforms and `augment=True`. Crops and augmentation
        are seeded per image (`ImageBatches(per_image_seeds=True)`), so the
        result does not depend on `batch_size`.
        """
        return ImageBatches(
            self.split(split),
            tfms or self.valid_tfms,
            batch_size or self.batch_size,
            augment=augment,
            seed=seed,
            per_image_seeds=True,
            workers=self.batch_workers,
        )

    def valid_batches(self):
        """Validation batches: center crops, no augmentation."""
        return self.fixed_batches("valid")

    def augmented_samples(self, n=8, split="train", seed=0, images=0):
        """Center crops and `n` augmented copies of some images of `split`.

        See `kertransfer.data.preview.augmented_samples`.
        """
        return preview.augmented_samples(self, n, split, seed, images)

    def plot_augmented(self, n=8, path=None, split="train", seed=0, images=0):
        """Grid of augmented copies, to check the augmentation by eye.

        See `kertransfer.data.preview.plot_augmented`.

        Example:

        >>> data.plot_augmented(n=8, path="augmented.png", images=[0, 1])
        'augmented.png'
        """
        return preview.plot_augmented(self, n, path, split, seed, images)

    def resize(self, image_size):
        """The same data at another `image_size` (progressive resizing).

        The kept images are decoded again at the new size into a store of
        the same kind; a memory store of this data is emptied first (it
        refills if this data is used again), so two full copies are never
        held at once. Splits and classes are unchanged.
        """
        tfms = (
            self.train_tfms.resized(image_size),
            self.valid_tfms.resized(image_size),
        )
        split_sources = {name: (split.paths, split.labels) for name, split in self._splits.items()}
        total = sum(len(split) for split in self._splits.values())
        self.store.clear()
        store = make_store(self.store.kind, tfms[1].decode_size, total)
        new = self._load(
            self.path, self.classes, split_sources, tfms, self.batch_size,
            self.num_workers, None, None, store=store,
        )
        new._skipped = self.skipped + new._skipped
        new.oversample = self.oversample
        return new

    # --------------------------------------------------------------- display
    def _repr_rows(self):
        """What `repr(data)` and a notebook show: `[(name, value)]`."""

        def images(split):
            counts = self.counts(split)
            per_class = short_list(f"{c} {n}" for c, n in counts.items())
            return f"{len(self._splits[split])} ({per_class})"

        where = {"memory": "decoded in memory", "disk": "decoded, cached on disk"}
        return [
            (f"classes ({self.num_classes}{', multi-label' if self.is_multi else ''})", short_list(self.classes)),
            ("image size", f"{self.image_size} px"),
            ("batch size", self.batch_size),
            ("train", images("train") + (", oversampled" if self.oversample else "")),
            ("valid", images("valid")),
            ("test", len(self._splits["test"]) if "test" in self._splits else None),
            ("pixels", where.get(self.store.kind, "decoded for every batch")),
            ("skipped", f"{len(self.skipped)} unreadable files" if self.skipped else None),
        ]

    def __repr__(self):
        """The classes, image size and images per split (and class).

        ```
        ImageClassifierData(path='data/hymenoptera')
          classes (2): ants, bees
          image size: 64 px
          batch size: 16
          train: 245 (ants 124, bees 121)
          valid: 153 (ants 70, bees 83)
          pixels: decoded in memory
        ```
        """
        return text_repr(f"ImageClassifierData(path={os.fspath(self.path)!r})", self._repr_rows())

    def _repr_html_(self):
        """`repr` as a small table, what Jupyter shows."""
        return html_repr(f"ImageClassifierData(path={os.fspath(self.path)!r})", self._repr_rows())

    def summary(self):
        """Counts per class and skipped files, as a plain dict."""
        return {
            "path": os.path.abspath(self.path),
            "classes": self.classes,
            "multi_label": self.is_multi,
            "train_counts": self.counts("train"),
            "valid_counts": self.counts("valid"),
            "skipped": [p for p, _ in self.skipped],
            "image_size": self.image_size,
        }
