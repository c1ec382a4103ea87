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

from kertransfer.data import sources
from kertransfer.data.batches import ImageBatches
from kertransfer.data.batches import Split
from kertransfer.data.batches import load_split
from kertransfer.data.cache import make_store
from kertransfer.images import DECODE_VERSION
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


def _check_two_classes(classes, source):
    """A classifier needs two classes; checked before any image is decoded."""
    if len(classes) < 2:
        raise ValueError(
            f"{source} has {len(classes)} class(es) {classes}; a classifier needs at "
            "least 2. Add a folder (or CSV label) per class."
        )


def _check_every_class_trains(classes, source, split, bad):
    """Raises if a class lost all its training images to unreadable files."""
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
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Data folder not found: {path}")
        trn_dir = os.path.join(path, trn_name)
        keras_layout = not os.path.isdir(trn_dir) and val_name is None and sources.is_keras_layout(path)
        if keras_layout:
            trn_dir = path
        elif not os.path.isdir(trn_dir):
            raise FileNotFoundError(
                f"No training folder {trn_dir} and no class folders of images in "
                f"{path}. Expected fast.ai's layout {path}/{trn_name}/<class>/*.jpg "
                f"(with {path}/valid/<class>/*.jpg; pass trn_name= for another "
                f"folder name) or Keras's layout {path}/<class>/*.jpg (val_pct of "
                "the images held out)."
            )
        trn_paths, trn_labels, classes, listed_skipped = sources.read_split(trn_dir)
        if keras_layout:
            val_name = None
            if test_name is not None and test_name in classes:
                raise ValueError(
                    f"{os.path.join(path, test_name)} would be both a class folder "
                    "and the test folder; move the test images elsewhere."
                )
        elif val_name is None:
            val_name = next(
                (n for n in ("valid", "val") if os.path.isdir(os.path.join(path, n))),
                None,
            )
        elif not os.path.isdir(os.path.join(path, val_name)):
            raise FileNotFoundError(
                f"Validation folder not found: {os.path.join(path, val_name)}"
            )
        if val_name is not None:
            val_paths, val_labels, _, bad = sources.read_split(
                os.path.join(path, val_name), classes
            )
            listed_skipped += bad
        else:
            if not 0 < val_pct < 1:
                raise ValueError(
                    f"{path} has no valid/ or val/ folder, so val_pct of the "
                    f"training images are held out; val_pct must be in (0, 1). "
                    f"Received val_pct={val_pct}."
                )
            if len(trn_paths) < 2:
                raise ValueError(
                    f"{trn_dir} has {len(trn_paths)} image(s); holding out val_pct for "
                    "validation needs at least 2."
                )
            trn_idx, val_idx = sources.random_split(len(trn_paths), val_pct, seed)
            val_paths = [trn_paths[i] for i in val_idx]
            val_labels = trn_labels[val_idx]
            trn_paths = [trn_paths[i] for i in trn_idx]
            trn_labels = trn_labels[trn_idx]
        test_paths = sources.test_paths(path, test_name)
        if max_images is not None:
            keep = sources.subsample(trn_labels, max_images, seed)
            trn_paths, trn_labels = [trn_paths[i] for i in keep], trn_labels[keep]
            keep = sources.subsample(val_labels, max_images, seed)
            val_paths, val_labels = [val_paths[i] for i in keep], val_labels[keep]
            if test_paths is not None:
                test_paths = [test_paths[i] for i in sources.subsample(np.zeros(len(test_paths)), max_images, seed)]
        if tfms is None:
            tfms = tfms_from_model(None, image_size)
        split_sources = {
            "train": (trn_paths, trn_labels),
            "valid": (val_paths, val_labels),
            "test": (test_paths, None) if test_paths is not None else None,
        }
        _check_two_classes(classes, trn_dir)
        data = cls._load(
            path, classes, split_sources, tfms, batch_size, num_workers, cache, memory_budget,
            listed_skipped=listed_skipped,
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
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Data folder not found: {path}")
        csv_path = os.fspath(csv_fname)
        if not os.path.isfile(csv_path) and os.path.isfile(os.path.join(path, csv_path)):
            csv_path = os.path.join(path, csv_path)
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(
                f"Label CSV not found: {csv_fname} (also looked in {path}). "
                "Pass its path, or its file name inside the data folder."
            )
        img_dir = os.path.join(path, folder)
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(
                f"Image folder not found: {img_dir} (folder={folder!r} is "
                f"relative to path={path!r})."
            )
        if cat_separator is not _UNSET:
            label_delim = cat_separator
        if multi_label not in (None, True, False):
            raise ValueError(f"multi_label must be None, True or False. Received {multi_label!r}.")
        ids, tags, header = sources.read_label_csv(csv_path, skip_header, label_delim, multi_label)
        if header and os.path.isfile(os.path.join(img_dir, f"{header}{suffix}")):
            raise ValueError(
                f"The first line of {csv_path} names an image ({header}{suffix} is in "
                f"{img_dir}), so it is data, not a header; skip_header=True would drop it. "
                "Pass skip_header=False."
            )
        root = os.path.realpath(img_dir)
        outside = [
            r for r, i in enumerate(ids)
            if os.path.isabs(i)
            or os.path.commonpath([root, os.path.normpath(os.path.join(root, i))]) != root
        ]
        if outside:
            raise ValueError(
                f"{csv_path}: {sources.csv_row_names(outside, ids)} name files outside "
                f"the image folder {img_dir} (absolute paths or '..'). File ids are "
                "names inside folder=; fix or delete those rows."
            )
        paths = [os.path.join(img_dir, f"{i}{suffix}") for i in ids]
        missing = [r for r, p in enumerate(paths) if not os.path.isfile(p)]
        if missing:
            listing = "\n".join(f"  {paths[r]}  (row {r})" for r in missing[:20])
            more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise FileNotFoundError(
                f"{len(missing)} of the {len(paths)} images listed in "
                f"{csv_path} are missing from {img_dir}:\n{listing}{more}\n"
                f"Check folder= and suffix= (received suffix={suffix!r}), or "
                "delete those rows."
            )
        classes = sorted({t for row in tags for t in row})
        index = {c: i for i, c in enumerate(classes)}
        if multi_label or any(len(row) != 1 for row in tags):
            labels = np.zeros((len(ids), len(classes)), dtype="float32")
            for r, row in enumerate(tags):
                labels[r, [index[t] for t in row]] = 1.0
        else:
            labels = np.asarray([index[row[0]] for row in tags], dtype="int32")
        if val_idxs is not None:
            trn_idx, val_idx = sources.check_val_idxs(val_idxs, len(paths), csv_path)
        elif not 0 < val_pct < 1 or len(paths) < 2:
            raise ValueError(
                f"Without val_idxs, val_pct of the {len(paths)} rows of "
                f"{csv_path} are held out for validation; val_pct must be in "
                f"(0, 1) and there must be 2+ rows. Received val_pct={val_pct}."
            )
        else:
            trn_idx, val_idx = sources.random_split(len(paths), val_pct, seed)
        test_paths = sources.test_paths(path, test_name)
        split_sources = {
            "train": ([paths[i] for i in trn_idx], labels[trn_idx]),
            "valid": ([paths[i] for i in val_idx], labels[val_idx]),
            "test": (test_paths, None) if test_paths is not None else None,
        }
        tfms = tfms if tfms is not None else tfms_from_model(None, image_size)
        _check_two_classes(classes, csv_path)
        return cls._load(
            path, classes, split_sources, tfms, batch_size, num_workers, cache, memory_budget
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
        splits, skipped = {}, list(listed_skipped)
        for name, source in split_sources.items():
            if source is None:
                continue
            split, bad = load_split(source[0], source[1], store, workers)
            if len(split) == 0 and not allow_empty:
                raise ValueError(
                    f"None of the {len(source[0])} {name} files under {path} "
                    f"could be read as images, e.g. {bad[:1]}."
                )
            if name == "train" and split.labels is not None and split.labels.ndim == 1:
                _check_every_class_trains(classes, source, split, bad)
            splits[name] = split
            skipped += bad
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
            workers=self._batch_workers,
            batch_multiple=batch_multiple,
        )

    @property
    def _batch_workers(self):
        # Decoding from disk runs in Keras PyDataset worker threads (Pillow
        # releases the GIL); decoded images in memory only need cropping.
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
        if split not in self._splits:
            raise ValueError(
                f"No {split!r} split in this data (have {list(self._splits)})."
            )
        return ImageBatches(
            self._splits[split],
            tfms or self.valid_tfms,
            batch_size or self.batch_size,
            augment=augment,
            seed=seed,
            per_image_seeds=True,
            workers=self._batch_workers,
        )

    def valid_batches(self):
        """Validation batches: center crops, no augmentation."""
        return self.fixed_batches("valid")

    def augmented_samples(self, n=8, split="train", seed=0, images=0):
        """Center crops and `n` augmented copies of some images of `split`.

        The copies go through exactly what training does: the training
        transforms' random crop and zoom, and their augmentation layers
        called with `training=True`.

        Args:
            n: augmented copies per image.
            split: "train", "valid" or "test".
            seed: seed of the augmentation; equal seeds give equal copies.
            images: index (or list of indices) into the split's images.

        Returns:
            `(center, augmented)`: float32 arrays `(k, size, size, 3)` (the
            validation center crops) and `(k, n, size, size, 3)`, pixels in
            [0, 255], for the `k` images asked for.

        Raises:
            ValueError: on `n < 1`, an unknown split, or an index out of
                range.
        """
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n must be an integer >= 1. Received n={n!r}.")
        if split not in self._splits:
            raise ValueError(
                f"No {split!r} split in this data (have {list(self._splits)})."
            )
        source = self._splits[split]
        indices = [images] if np.ndim(images) == 0 else list(images)
        bad = [i for i in indices if not -len(source) <= int(i) < len(source)]
        if bad or not indices:
            raise ValueError(
                f"images must index the {len(source)} {split} images (one "
                f"index or a non-empty list). Received images={images!r}."
            )
        center, augmented = [], []
        for k, i in enumerate(indices):
            image = source.image(int(i))
            center.append(self.valid_tfms.crop(image, None).astype("float32"))
            copies = Split([source.paths[int(i)]] * int(n), None, source.store)
            batches = ImageBatches(
                copies, self.train_tfms, int(n), augment=True, seed=seed + k
            )
            augmented.append(batches[0][0])
        return np.stack(center), np.stack(augmented)

    def plot_augmented(self, n=8, path=None, split="train", seed=0, images=0):
        """Grid of augmented copies, to check the augmentation by eye.

        fast.ai lesson 1 `plots(get_augs())`: one row per image, its center
        crop first, then `n` augmented copies (see `augmented_samples`).
        Needs matplotlib.

        Args:
            n: augmented copies per image.
            path: PNG file to write, or None to return the figure.
            split: "train", "valid" or "test".
            seed: seed of the augmentation.
            images: index (or list of indices) into the split's images.

        Returns:
            The path written (str) when `path` is given (the figure is
            closed), else the `matplotlib.figure.Figure`.

        Raises:
            ValueError: as `augmented_samples`.

        Example:

        >>> data.plot_augmented(n=8, path="augmented.png", images=[0, 1])
        'augmented.png'
        """
        center, augmented = self.augmented_samples(n, split, seed, images)
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "plot_augmented needs matplotlib: pip install matplotlib"
            ) from e
        rows, cols = len(center), int(n) + 1
        fig, axes = plt.subplots(
            rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False
        )
        for r in range(rows):
            tiles = [center[r]] + list(augmented[r])
            for c, tile in enumerate(tiles):
                ax = axes[r, c]
                ax.imshow(np.clip(tile, 0, 255).astype("uint8"))
                ax.set_axis_off()
                if r == 0:
                    ax.set_title("center crop" if c == 0 else f"aug {c}", fontsize=8)
        fig.tight_layout()
        if path is None:
            return fig
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

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
