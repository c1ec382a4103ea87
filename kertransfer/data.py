"""Image folders -> batches, for any Keras backend.

`ImageClassifierData.from_paths` reads fast.ai's layout
(`path/train/<class>/*`, `path/valid/<class>/*`) and `from_csv` a label CSV
(Kaggle dog breeds `id,breed`, or Planet's multi-label `image_name,tags`);
both decode every image once with `kertransfer.images.decode_image` (the
one decode path, shared with prediction and export), keep the decoded, resized pixels in memory, and serve
numpy batches through a `keras.utils.PyDataset`. Files that cannot be
decoded are skipped and reported once, before training starts, so an epoch
never dies on a bad file.
"""

import concurrent.futures
import hashlib
import logging
import math
import os
import warnings

import keras
import numpy as np
from kertransfer.images import DECODE_VERSION
from kertransfer.images import DEFAULT_CROP_PCT
from kertransfer.images import decode_image
from kertransfer.transforms import ImageTransforms

__all__ = ["ImageClassifierData", "ImageBatches"]

logger = logging.getLogger(__name__)


def _list_files(folder):
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
    )


def _class_folders(split_dir):
    return sorted(
        d
        for d in os.listdir(split_dir)
        if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))
    )


def _read_split(split_dir, classes=None):
    """Returns `(paths, labels, classes)` of a `split/<class>/*` folder."""
    found = _class_folders(split_dir)
    if not found:
        raise ValueError(
            f"No class folders in {split_dir}. Expected one sub-folder per "
            f"class, e.g. {os.path.join(split_dir, 'cats')}/*.jpg."
        )
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise ValueError(
                f"{split_dir} has class folder(s) {unknown} that the training "
                f"folder does not have (training classes: {classes}). Rename "
                "or remove them, or add training images for them."
            )
    paths, labels = [], []
    for c in found:
        files = _list_files(os.path.join(split_dir, c))
        if not files:
            raise ValueError(
                f"Class folder {os.path.join(split_dir, c)} is empty. Add "
                "images to it or remove it."
            )
        paths += files
        labels += [classes.index(c)] * len(files)
    return paths, np.asarray(labels, dtype="int32"), classes


def _random_split(n, val_pct, seed):
    """`(train_idx, valid_idx)`: sorted indices, a seeded `val_pct` held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_pct * n)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _test_paths(path, test_name):
    """Files of the unlabeled `path/<test_name>/` folder, or None."""
    if test_name is None:
        return None
    test_dir = os.path.join(path, test_name)
    if not os.path.isdir(test_dir):
        raise FileNotFoundError(f"Test folder not found: {test_dir}")
    return _list_files(test_dir)


def _default_tfms(image_size, crop_pct=DEFAULT_CROP_PCT):
    """fast.ai's default: side-on augmentation, `max_zoom=1.1`, center crop."""
    from kertransfer.transforms import transforms_side_on

    return (
        ImageTransforms(
            image_size,
            random_crop=True,
            aug_tfms=transforms_side_on,
            max_zoom=1.1,
            crop_pct=crop_pct,
        ),
        ImageTransforms(image_size, crop_pct=crop_pct),
    )


def _csv_row_names(rows, ids, limit=10):
    """`"row 3 (id 'x'), ..."` for error messages, at most `limit` rows."""
    names = [f"row {r} (id {ids[r]!r})" for r in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(names) + more


def _read_label_csv(csv_path, skip_header, cat_separator):
    """Reads `file_id,tags` rows; returns `(ids, tags)`, tags as lists.

    Tags are split on `cat_separator` (None: the whole cell is one label),
    blanks dropped, duplicates within a row removed.
    """
    import pandas as pd

    try:
        frame = pd.read_csv(
            csv_path,
            header=0 if skip_header else None,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(
            f"Could not read {csv_path} as CSV ({type(e).__name__}: {e}). "
            "Expected rows `file_id,tags`, e.g. `train_0,haze primary`."
        ) from e
    if frame.shape[1] < 2:
        raise ValueError(
            f"{csv_path} needs two columns, file id then label(s) (e.g. "
            f"`id,breed` or `image_name,tags`). Received columns "
            f"{list(frame.columns)}. If the file has no header row, pass "
            "skip_header=False."
        )
    ids = [s.strip() for s in frame.iloc[:, 0]]
    cells = [s.strip() for s in frame.iloc[:, 1]]
    if cat_separator is None:
        tags = [[c] if c else [] for c in cells]
    else:
        tags = [
            list(dict.fromkeys(t.strip() for t in c.split(cat_separator) if t.strip()))
            for c in cells
        ]
    no_id = [r for r, i in enumerate(ids) if not i]
    if no_id:
        raise ValueError(
            f"{csv_path}: empty file id in {_csv_row_names(no_id, ids)} "
            "(rows counted from 0 after the header). Fill in or delete them."
        )
    empty = [r for r, row in enumerate(tags) if not row]
    if empty:
        raise ValueError(
            f"{csv_path}: no label in {_csv_row_names(empty, ids)} (rows "
            "counted from 0 after the header). Every image needs at least one "
            "label; fill them in or delete those rows."
        )
    seen, dupes = set(), []
    for i in ids:
        if i in seen:
            dupes.append(i)
        seen.add(i)
    if dupes:
        warnings.warn(
            f"{csv_path} lists {len(dupes)} file id(s) more than once, e.g. "
            f"{dupes[:5]}; each row is used as a separate item.",
            stacklevel=3,
        )
    return ids, tags


def _check_val_idxs(val_idxs, n, csv_path):
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


def _fingerprint(paths, *extra):
    digest = hashlib.sha1(repr(extra).encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class _Split:
    """Decoded images of one split, with their labels and source paths."""

    def __init__(self, paths, labels, images):
        self.paths = list(paths)
        self.labels = labels
        self.images = images

    def __len__(self):
        return len(self.paths)


def _decode_split(paths, labels, short_side, num_workers):
    """Decodes all `paths`; returns the kept `_Split` and skipped items."""

    def work(p):
        try:
            return decode_image(p, short_side), None
        except Exception as e:  # Pillow raises many types on bad files.
            return None, f"{type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        results = list(pool.map(work, paths))
    keep = [i for i, (img, _) in enumerate(results) if img is not None]
    skipped = [(paths[i], err) for i, (img, err) in enumerate(results) if img is None]
    kept_labels = None if labels is None else labels[keep]
    return (
        _Split([paths[i] for i in keep], kept_labels, [results[i][0] for i in keep]),
        skipped,
    )


class ImageBatches(keras.utils.PyDataset):
    """Batches of `(images, labels)` from decoded images, for `model.fit`.

    Each item is `x` float32 `(batch, image_size, image_size, 3)` pixels in
    `[0, 255]`, and (when labels exist) `y`: int32 class indices
    `(batch,)`, or multi-hot float32 `(batch, num_classes)` for multi-label
    data.

    Args:
        split: the decoded images (internal `_Split`).
        tfms: `ImageTransforms` (crop, then augmentation if any).
        batch_size: images per batch.
        shuffle: reshuffle the order every epoch.
        drop_last: drop the last, smaller batch (the LR finder needs equal
            batches to recover per-batch losses from Keras's running mean).
        augment: apply the transforms' augmentation layers.
        seed: seed for crops, shuffling and augmentation; None draws one
            from NumPy's global generator (seeded by
            `keras.utils.set_random_seed`).
        with_labels: yield `(x, y)` (True, when the split has labels) or
            `(x,)`.
        indices: indices into `split` served each epoch, repeats allowed
            (oversampling); default every image once.
        workers: threads preparing batches ahead of the model (Keras
            `PyDataset` workers).
            Results do not depend on it: each batch's crops and augmentation
            are drawn from its own generator, seeded by `(seed, epoch,
            batch index)`.
        max_queue_size: batches prepared ahead when `workers > 1`.
        per_image_seeds: draw each image's crop and augmentation from its
            own generator, seeded by `(seed, epoch, position in the
            epoch)`, so an image comes out the same whatever the batch size
            (TTA, predictions); default: one generator per batch, the
            augmentation layers vectorised over the batch (training).
    """

    def __init__(
        self,
        split,
        tfms,
        batch_size,
        shuffle=False,
        drop_last=False,
        augment=False,
        seed=None,
        with_labels=True,
        indices=None,
        workers=1,
        max_queue_size=10,
        per_image_seeds=False,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size
        )
        self.split = split
        self.tfms = tfms
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.per_image_seeds = per_image_seeds
        self.with_labels = with_labels and split.labels is not None
        if seed is None:
            # Drawn from NumPy's global generator, so that
            # `keras.utils.set_random_seed` (which seeds it) makes a whole
            # run reproducible, as fast.ai's `set_seed` does.
            seed = int(np.random.randint(0, 2**31 - 1))
        self.rng = np.random.default_rng(seed)
        # Per-batch generators derive from this, so batches are reproducible
        # in any order (threads, TTA).
        self.seed = int(seed)
        self.epoch = 0
        self.augmenter = tfms.build_augmenter(seed) if augment else None
        self.order = (
            np.arange(len(split)) if indices is None else np.array(indices)
        )
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self):
        n = len(self.order) / self.batch_size
        return int(math.floor(n) if self.drop_last else math.ceil(n))

    @property
    def num_samples(self):
        """Images served per epoch."""
        return min(len(self) * self.batch_size, len(self.order))

    def __getitem__(self, index):
        start = index * self.batch_size
        idx = self.order[start : start + self.batch_size]
        if self.per_image_seeds:
            rng = [
                np.random.default_rng([self.seed, self.epoch, position])
                for position in range(start, start + len(idx))
            ]
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
        x = self.tfms.batch([self.split.images[i] for i in idx], rng, self.augmenter)
        if not self.with_labels:
            return (x,)
        return x, self.split.labels[idx]

    def on_epoch_end(self):
        self.epoch += 1
        if self.shuffle:
            self.rng.shuffle(self.order)


class ImageClassifierData:
    """Training/validation(/test) images of a classification task.

    Build it with `ImageClassifierData.from_paths` (class folders) or
    `ImageClassifierData.from_csv` (a label CSV, single- or multi-label:
    see `is_multi`). Images are decoded once
    and held in memory as uint8 arrays (short side `round(image_size /
    crop_pct)` pixels): about 200 KB per image at 224 px.

    Attributes:
        path: the data folder.
        classes: sorted class names; label `i` is `classes[i]`.
        train_paths, valid_paths, test_paths: files kept (`from_paths`: in
            label order; `from_csv`: in CSV row order).
        train_labels, valid_labels: int32 class indices `(n,)`, or
            multi-hot float32 `(n, num_classes)` when `is_multi`.
        skipped: `[(path, reason)]` of files that could not be decoded.
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
        sources=None,
    ):
        self.path = path
        self.classes = list(classes)
        self._splits = splits
        self.train_tfms, self.valid_tfms = tfms
        self.batch_size = int(batch_size)
        self.skipped = list(skipped)
        self.num_workers = num_workers
        self._sources = sources
        self.oversample = False

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
    ):
        """Reads a fast.ai-layout folder of images (fast.ai `from_paths`).

        Layout: `path/<trn_name>/<class>/*` for training, and
        `path/valid/<class>/*` or `path/val/<class>/*` for validation. With
        neither, a seeded random `val_pct` of the training images is held out.
        An optional unlabeled `path/<test_name>/*` becomes the test set.

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
            oversample: repeat the training images of rarer classes so each
                class appears as often as the largest one per epoch (fast.ai's
                advice for unbalanced data: copy the rare cases). Only the
                training split; indices are repeated, images are not copied.
                See also `learn.fit(..., class_weight="balanced")`.

        Returns:
            `ImageClassifierData`.

        Raises:
            FileNotFoundError: if `path`, the training folder, or a named
                validation/test folder does not exist.
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
        if not os.path.isdir(trn_dir):
            raise FileNotFoundError(
                f"No training folder {trn_dir}. Expected fast.ai's layout "
                f"{path}/{trn_name}/<class>/*.jpg (pass trn_name= for another "
                "folder name)."
            )
        trn_paths, trn_labels, classes = _read_split(trn_dir)
        if val_name is None:
            val_name = next(
                (n for n in ("valid", "val") if os.path.isdir(os.path.join(path, n))),
                None,
            )
        elif not os.path.isdir(os.path.join(path, val_name)):
            raise FileNotFoundError(
                f"Validation folder not found: {os.path.join(path, val_name)}"
            )
        if val_name is not None:
            val_paths, val_labels, _ = _read_split(
                os.path.join(path, val_name), classes
            )
        else:
            if not 0 < val_pct < 1:
                raise ValueError(
                    f"{path} has no valid/ or val/ folder, so val_pct of the "
                    f"training images are held out; val_pct must be in (0, 1). "
                    f"Received val_pct={val_pct}."
                )
            trn_idx, val_idx = _random_split(len(trn_paths), val_pct, seed)
            val_paths = [trn_paths[i] for i in val_idx]
            val_labels = trn_labels[val_idx]
            trn_paths = [trn_paths[i] for i in trn_idx]
            trn_labels = trn_labels[trn_idx]
        test_paths = _test_paths(path, test_name)
        if tfms is None:
            tfms = _default_tfms(image_size)
        sources = {
            "train": (trn_paths, trn_labels),
            "valid": (val_paths, val_labels),
            "test": (test_paths, None) if test_paths is not None else None,
        }
        data = cls._decode(path, classes, sources, tfms, batch_size, num_workers)
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
        cat_separator=" ",
        num_workers=None,
    ):
        """Reads images named in a CSV of labels (fast.ai v0.7 `from_csv`).

        Each CSV row is `file_id,labels`; the image is
        `path/folder/<file_id><suffix>`. Labels are split on
        `cat_separator`: Kaggle Planet's `train_v2.csv` (`image_name,tags`,
        e.g. `train_0,haze primary`) is multi-label, Kaggle dog breeds'
        `labels.csv` (`id,breed`) single-label. The data is multi-label
        (`is_multi`) as soon as one row has other than exactly one label;
        its targets are then multi-hot float32 `(batch, num_classes)`,
        otherwise int32 class indices `(batch,)` as with `from_paths`.
        Columns after the second are ignored. Undecodable images are
        skipped and reported, as in `from_paths`.

        Args:
            path: data folder.
            folder: image sub-folder of `path` (e.g. `"train-jpg"`).
            csv_fname: the CSV file: a path, or a file name inside `path`.
            val_idxs: row indices (0 = first row after the header) held out
                for validation; None holds out a seeded random `val_pct`.
            suffix: appended to each file id, e.g. `".jpg"`.
            skip_header: the first CSV line is a header.
            image_size: model input side, pixels (ignored when `tfms` given).
            batch_size: images per batch.
            tfms: `(train_tfms, valid_tfms)` from `tfms_from_model`; default:
                side-on augmentation with `max_zoom=1.1`.
            test_name: unlabeled test sub-folder of `path`, or None.
            val_pct: fraction held out when `val_idxs` is None.
            seed: seed of that split.
            cat_separator: separator of several labels in one cell; None
                takes each cell as one label (single-label names with spaces).
            num_workers: decoding threads (default: CPU count).

        Returns:
            `ImageClassifierData`; classes are the sorted distinct labels.

        Raises:
            FileNotFoundError: if `path`, `folder`, the CSV, the test folder
                or any listed image file is missing (missing files listed).
            ValueError: on an unreadable CSV, fewer than two columns, a row
                without file id or without labels, bad `val_idxs` or
                `val_pct`, or no decodable image in a split.

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
        ids, tags = _read_label_csv(csv_path, skip_header, cat_separator)
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
        if any(len(row) != 1 for row in tags):
            labels = np.zeros((len(ids), len(classes)), dtype="float32")
            for r, row in enumerate(tags):
                labels[r, [index[t] for t in row]] = 1.0
        else:
            labels = np.asarray([index[row[0]] for row in tags], dtype="int32")
        if val_idxs is not None:
            trn_idx, val_idx = _check_val_idxs(val_idxs, len(paths), csv_path)
        elif not 0 < val_pct < 1 or len(paths) < 2:
            raise ValueError(
                f"Without val_idxs, val_pct of the {len(paths)} rows of "
                f"{csv_path} are held out for validation; val_pct must be in "
                f"(0, 1) and there must be 2+ rows. Received val_pct={val_pct}."
            )
        else:
            trn_idx, val_idx = _random_split(len(paths), val_pct, seed)
        test_paths = _test_paths(path, test_name)
        sources = {
            "train": ([paths[i] for i in trn_idx], labels[trn_idx]),
            "valid": ([paths[i] for i in val_idx], labels[val_idx]),
            "test": (test_paths, None) if test_paths is not None else None,
        }
        tfms = tfms if tfms is not None else _default_tfms(image_size)
        return cls._decode(path, classes, sources, tfms, batch_size, num_workers)

    @classmethod
    def _decode(cls, path, classes, sources, tfms, batch_size, num_workers):
        workers = num_workers or os.cpu_count() or 1
        splits, skipped = {}, []
        for name, source in sources.items():
            if source is None:
                continue
            split, bad = _decode_split(
                source[0], source[1], tfms[1].decode_size, workers
            )
            if len(split) == 0:
                raise ValueError(
                    f"None of the {len(source[0])} {name} files under {path} "
                    f"could be decoded as images, e.g. {bad[:1]}."
                )
            splits[name] = split
            skipped += bad
        if skipped:
            listing = "\n".join(f"  {p}  ({why})" for p, why in skipped)
            warnings.warn(
                f"Skipped {len(skipped)} file(s) that are not readable "
                f"images:\n{listing}",
                stacklevel=3,
            )
        return cls(path, classes, splits, tfms, batch_size, skipped, num_workers, sources)

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
        self, augment=True, shuffle=True, drop_last=False, seed=None, batch_size=None
    ):
        """Training batches: random crops, augmented unless `augment=False`.

        With `oversample`, rare classes' images are repeated (`train_index`).
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
        )

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
            image = source.images[int(i)]
            center.append(self.valid_tfms.crop(image, None).astype("float32"))
            copies = _Split([source.paths[int(i)]] * int(n), None, [image] * int(n))
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

        Re-decodes the kept images at the new size; splits and classes are
        unchanged.
        """
        tfms = (
            self.train_tfms.resized(image_size),
            self.valid_tfms.resized(image_size),
        )
        sources = {}
        for name, split in self._splits.items():
            sources[name] = (split.paths, split.labels)
        new = self._decode(
            self.path,
            self.classes,
            sources,
            tfms,
            self.batch_size,
            self.num_workers,
        )
        new.skipped = self.skipped + new.skipped
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
