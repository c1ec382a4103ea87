"""Image folders -> batches, for any Keras backend.

`ImageClassifierData.from_paths` reads fast.ai's layout
(`path/train/<class>/*`, `path/valid/<class>/*`), decodes every image once
with Pillow (EXIF orientation applied, any mode converted to RGB), keeps the
decoded, resized pixels in memory, and serves numpy batches through a
`keras.utils.PyDataset`. Files that cannot be decoded are skipped and
reported once, before training starts, so an epoch never dies on a bad file.
"""

import concurrent.futures
import hashlib
import logging
import math
import os
import warnings

import keras
import numpy as np
from PIL import Image
from PIL import ImageOps

from kertransfer.transforms import ImageTransforms

__all__ = ["ImageClassifierData", "ImageBatches", "load_image", "decode_image"]

logger = logging.getLogger(__name__)


def load_image(path):
    """Opens an image file as an RGB Pillow image.

    EXIF orientation is applied; grayscale, palette, CMYK and other modes are
    converted to RGB; transparent pixels are composited onto white; for
    animated files (GIF), the first frame is used.

    Args:
        path: image file.

    Returns:
        `PIL.Image.Image` in mode `"RGB"`.

    Raises:
        OSError: if Pillow cannot decode the file (`PIL.UnidentifiedImageError`
            is a subclass).
    """
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (
            im.mode == "P" and "transparency" in im.info
        )
        if has_alpha:
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("RGB")
        im.load()
    return im


def decode_image(path, short_side, min_long_side=None):
    """Decodes `path` and resizes it so its short side is `short_side` pixels.

    JPEGs are decoded at reduced scale first when much larger (Pillow's
    `draft`), then resized with a bilinear filter with antialiasing.

    Returns:
        uint8 numpy array `(height, width, 3)` with `min(height, width) ==
        short_side`.
    """
    im = load_image(path)
    w, h = im.size
    scale = short_side / min(w, h)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    im = im.resize(size, Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(im, dtype="uint8")


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
    `[0, 255]`, and (when labels exist) `y` int32 `(batch,)`.

    Args:
        split: the decoded images (internal `_Split`).
        tfms: `ImageTransforms` (crop, then augmentation if any).
        batch_size: images per batch.
        shuffle: reshuffle the order every epoch.
        drop_last: drop the last, smaller batch (the LR finder needs equal
            batches to recover per-batch losses from Keras's running mean).
        augment: apply the transforms' augmentation layers.
        seed: seed for crops, shuffling and augmentation.
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
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.split = split
        self.tfms = tfms
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.with_labels = with_labels and split.labels is not None
        self.rng = np.random.default_rng(seed)
        self.augmenter = tfms.build_augmenter(seed) if augment else None
        self.order = np.arange(len(split))
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self):
        n = len(self.split) / self.batch_size
        return int(math.floor(n) if self.drop_last else math.ceil(n))

    @property
    def num_samples(self):
        """Images served per epoch."""
        return min(len(self) * self.batch_size, len(self.split))

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x = np.stack(
            [self.tfms.crop(self.split.images[i], self.rng) for i in idx]
        ).astype("float32")
        if self.augmenter is not None:
            x = self.augmenter(x)
        if not self.with_labels:
            return (x,)
        return x, self.split.labels[idx]

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)


class ImageClassifierData:
    """Training/validation(/test) images of a single-label classification task.

    Build it with `ImageClassifierData.from_paths`. Images are decoded once
    and held in memory as uint8 arrays (short side `round(image_size /
    crop_pct)` pixels): about 200 KB per image at 224 px.

    Attributes:
        path: the data folder.
        classes: sorted class names; label `i` is `classes[i]`.
        train_paths, valid_paths, test_paths: files kept, in label order.
        train_labels, valid_labels: int32 arrays.
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
            order = np.random.default_rng(seed).permutation(len(trn_paths))
            n_val = max(1, int(round(val_pct * len(trn_paths))))
            val_idx, trn_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            val_paths = [trn_paths[i] for i in val_idx]
            val_labels = trn_labels[val_idx]
            trn_paths = [trn_paths[i] for i in trn_idx]
            trn_labels = trn_labels[trn_idx]
        test_paths = None
        if test_name is not None:
            test_dir = os.path.join(path, test_name)
            if not os.path.isdir(test_dir):
                raise FileNotFoundError(f"Test folder not found: {test_dir}")
            test_paths = _list_files(test_dir)
        if tfms is None:
            from kertransfer.transforms import transforms_side_on

            tfms = (
                ImageTransforms(
                    image_size,
                    random_crop=True,
                    aug_tfms=transforms_side_on,
                    max_zoom=1.1,
                ),
                ImageTransforms(image_size),
            )
        sources = {
            "train": (trn_paths, trn_labels),
            "valid": (val_paths, val_labels),
            "test": (test_paths, None) if test_paths is not None else None,
        }
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
        """Images per class in `split`, as `{class_name: count}`."""
        labels = self._splits[split].labels
        return {c: int((labels == i).sum()) for i, c in enumerate(self.classes)}

    def fingerprint(self, split):
        """Hash of a split's files (path, size, mtime) and image size."""
        return _fingerprint(
            self._splits[split].paths,
            self.valid_tfms.decode_size,
            self.image_size,
        )

    # --------------------------------------------------------------- batches
    def train_batches(
        self, augment=True, shuffle=True, drop_last=False, seed=None, batch_size=None
    ):
        """Training batches: random crops, augmented unless `augment=False`."""
        return ImageBatches(
            self._splits["train"],
            self.train_tfms,
            batch_size or self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            augment=augment,
            seed=seed,
        )

    def fixed_batches(self, split, tfms=None, augment=False, seed=None):
        """Unshuffled batches of `split` ("train", "valid" or "test").

        With the default `tfms` (validation transforms: center crop, no
        augmentation) this is what precompute and prediction use; TTA passes
        the training transforms and `augment=True`.
        """
        if split not in self._splits:
            raise ValueError(
                f"No {split!r} split in this data (have {list(self._splits)})."
            )
        return ImageBatches(
            self._splits[split],
            tfms or self.valid_tfms,
            self.batch_size,
            augment=augment,
            seed=seed,
        )

    def valid_batches(self):
        """Validation batches: center crops, no augmentation."""
        return self.fixed_batches("valid")

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
        return new

    def summary(self):
        """Counts per class and skipped files, as a plain dict."""
        return {
            "path": os.path.abspath(self.path),
            "classes": self.classes,
            "train_counts": self.counts("train"),
            "valid_counts": self.counts("valid"),
            "skipped": [p for p, _ in self.skipped],
            "image_size": self.image_size,
        }
