"""Batches for `model.fit`: images decoded on the fly, or cached activations.

`ImageBatches` decodes and crops the images of a `Split`
(`kertransfer.data.splits`) into uint8 batches in worker threads (Pillow
releases the GIL while decoding); the augmentation runs on the device, on
whole batches (`kertransfer.augment`). `FeatureBatches`
serves precomputed activations (a memory-mapped `.npy`) by index, so
shuffling and oversampling never copy the whole array.
"""

from typing import NamedTuple
from typing import Optional

import keras
import numpy as np

# `Split` and `load_split` lived here before `kertransfer.data.splits`.
from kertransfer.data.prefetch import Prefetcher
from kertransfer.data.splits import Split
from kertransfer.data.splits import load_split

__all__ = ["FeatureBatches", "ImageBatches", "Split", "WorkerBatch", "load_split"]


def _check_multiple(batch_multiple, batch_size):
    if int(batch_multiple) != batch_multiple or batch_multiple < 1 or batch_size % batch_multiple:
        raise ValueError(
            "batch_multiple must be a positive integer that divides batch_size "
            f"(the device count). Received batch_multiple={batch_multiple!r}, "
            f"batch_size={batch_size}."
        )
    return int(batch_multiple)


def _num_batches(n, batch_size, drop_last, batch_multiple):
    """Batches of an epoch of `n` items; the last one cut to a multiple."""
    full, rest = divmod(n, batch_size)
    return full + (0 if drop_last or rest < batch_multiple else 1)


def _cut(rows, batch_multiple):
    """`rows` cut down to a multiple of `batch_multiple`."""
    return rows[: len(rows) // batch_multiple * batch_multiple]


class WorkerBatch(NamedTuple):
    """What `ImageBatches`' workers hand on: uint8 crops, and the augmentation to apply.

    Attributes:
        x: uint8 `(n, image_size, image_size, 3)` crops.
        transformations: the augmentation layers' transformations for these
            rows (`BatchAugmenter.draw`), or None (no augmentation).
        y: the labels of the rows, or None.
    """

    x: np.ndarray
    transformations: Optional[list]
    y: Optional[np.ndarray]


class ImageBatches(keras.utils.PyDataset):
    """Batches of `(images, labels)` from decoded images, for `model.fit`.

    Each item is `x`, `(batch, image_size, image_size, 3)` pixels in
    `[0, 255]`, and (when labels exist) `y`: int32 class indices
    `(batch,)`, or multi-hot float32 `(batch, num_classes)` for multi-label
    data. Without augmentation `x` is the uint8 crops (numpy): the model
    casts them to float32 on its device (a functional model converts its
    inputs to its `Input`'s dtype). With augmentation `x` is a float32
    tensor of the backend, made on its device: the uint8 crops are cast and
    the augmentation layers run there on the whole batch, compiled
    (`BatchAugmenter.apply`), as fastai v2's `batch_tfms` do on the GPU.

    The work splits in two (`worker_batch`, then `on_device`): `workers`
    threads decode and crop batches ahead (uint8: a quarter of float32's
    memory in the queue and in the copy to the device) and draw each
    batch's augmentation parameters; the thread Keras reads the batches
    from casts and augments them on the device.

    Args:
        split: a `Split` (files, labels, and the store decoding them).
        tfms: `ImageTransforms` (crop, then augmentation if any).
        batch_size: images per batch.
        shuffle: reshuffle the order every epoch.
        drop_last: drop the last, smaller batch (the LR finder needs equal
            batches to recover per-batch losses from Keras's running mean).
        augment: apply the transforms' augmentation layers.
        seed: seed for crops, shuffling and augmentation; None draws one
            from NumPy's global generator (seeded by
            `keras.utils.set_random_seed`), unless nothing is random
            (center crops, no shuffle, no augmentation: then 0, and the
            global generator is left alone).
        with_labels: yield `(x, y)` (True, when the split has labels) or
            `(x,)`.
        indices: indices into `split` served each epoch, repeats allowed
            (oversampling); default every image once.
        workers: threads decoding and cropping batches ahead of the model
            (`kertransfer.data.prefetch.Prefetcher`; Keras itself reads the
            batches in one thread). Results do not depend on it: each
            batch's crops and augmentation are drawn from its own
            generator, seeded by `(seed, epoch, batch index)`.
        max_queue_size: batches prepared ahead when `workers > 1`.
        per_image_seeds: draw each image's crop and augmentation from its
            position in the epoch and the seed alone
            (`BatchAugmenter.draw_per_position`), so an image comes out the
            same whatever the batch size (TTA, predictions); default: one
            generator per batch (training). The layers run on whole
            batches either way.
        batch_multiple: every batch's size is a multiple of this: the
            short last batch is cut down to one (dropped if smaller), as
            training on several devices needs (`kertransfer.distribute`);
            at most `batch_multiple - 1` images sit out an epoch.
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
        batch_multiple=1,
    ):
        # Keras reads the batches in one thread (the device part runs
        # there); the workers' part is prefetched by `self.prefetcher`.
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        self.prefetcher = Prefetcher(workers, max_queue_size)
        self.split = split
        self.tfms = tfms
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.per_image_seeds = per_image_seeds
        self.batch_multiple = _check_multiple(batch_multiple, self.batch_size)
        self.with_labels = with_labels and split.labels is not None
        if seed is None and not (shuffle or augment or tfms.random_crop):
            # Nothing random to seed (center crops in order: predictions,
            # precompute). Drawing anyway would move NumPy's global
            # generator, so a seeded run would differ by whether its
            # activations were computed or found in the cache.
            seed = 0
        elif seed is None:
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
        return _num_batches(len(self.order), self.batch_size, self.drop_last, self.batch_multiple)

    @property
    def num_samples(self):
        """Images served per epoch."""
        full, rest = divmod(len(self.order), self.batch_size)
        if self.drop_last:
            return full * self.batch_size
        return full * self.batch_size + rest // self.batch_multiple * self.batch_multiple

    def __getitem__(self, index):
        return self.on_device(self._fetch(index, None)[0])

    def _fetch(self, index, part):
        """`(worker_batch(index, part), n)` of this epoch, made ahead by the workers."""
        epoch, order = self.epoch, self.order

        def job(i):
            return lambda: self._worker_batch(i, part, epoch, order)

        ahead = range(index + 1, min(index + 1 + self.prefetcher.ahead, len(self)))
        upcoming = [((epoch, i, part), job(i)) for i in ahead]
        return self.prefetcher.get((epoch, index, part), job(index), upcoming)

    def worker_batch(self, index, process=0, processes=1, multiple=1):
        """The workers' part of batch `index` (or of a process's slice): `WorkerBatch`.

        Decodes and crops (uint8) the images and draws the augmentation's
        transformations; `on_device` finishes the batch. `process`,
        `processes` and `multiple` are as in `process_slice`.
        """
        part = None if (process, processes, multiple) == (0, 1, 1) else (process, processes, multiple)
        return self._worker_batch(index, part, self.epoch, self.order)[0]

    def _worker_batch(self, index, part, epoch, order):
        """`(WorkerBatch, n)`: `part` `(process, processes, multiple)` or None (the whole batch)."""
        start = index * self.batch_size
        idx = _cut(order[start : start + self.batch_size], self.batch_multiple)
        n = len(idx)
        rows = np.arange(n) if part is None else self._slice_rows(index, n, *part)
        local = idx[rows]
        images = [self.split.image(i) for i in local]
        transformations = None
        if self.per_image_seeds:
            positions = start + rows
            x = self.tfms.crops_per_position(images, positions, self.seed, epoch)
            if self.augmenter is not None:
                transformations = self.augmenter.draw_per_position(positions, self.seed, epoch)
        else:
            rng = np.random.default_rng([self.seed, epoch, index])
            x = self.tfms.crops(images, rng, rows=rows, batch_size=n)
            if self.augmenter is not None:
                transformations = self.augmenter.draw(rng, n, rows)
        y = self.split.labels[local] if self.with_labels else None
        return WorkerBatch(x, transformations, y), n

    def _slice_rows(self, index, n, process, processes, multiple):
        """Rows of a batch of `n` that process `process` of `processes` gets."""
        padded = n + (-n % multiple)
        if padded % processes:
            raise ValueError(
                f"Batch {index} has {padded} rows, which do not divide by the {processes} "
                "processes; the batch size must divide by the device count."
            )
        if padded > n and not self.per_image_seeds:
            raise ValueError("Padding is for prediction batches (per_image_seeds=True).")
        share = padded // processes
        rows = np.arange(process * share, (process + 1) * share)
        return np.minimum(rows, n - 1) if self.per_image_seeds else rows

    def on_device(self, batch):
        """The model's item `(x, y)` or `(x,)` from a `WorkerBatch`.

        Without augmentation `x` stays the uint8 crops; with it, the crops
        are cast to float32 and augmented on the device
        (`BatchAugmenter.apply`): a float32 tensor of the backend.
        """
        x = batch.x
        if batch.transformations is not None:
            x = self.augmenter.apply(x, batch.transformations)
        return (x,) if batch.y is None else (x, batch.y)

    def process_slice(self, index, process, processes, multiple=1):
        """Process `process`'s rows of batch `index`, decoding only those images.

        The batch (padded with copies of its last image to a multiple of
        `multiple`, for predictions on several devices) is split into
        `processes` equal slices; the slice's crops and augmentation are
        those the whole batch would give these rows (training batches draw
        two crop uniforms per image and the layers' transformations for the
        whole batch's shape). `kertransfer.distribute` feeds each process
        its slice this way.

        Returns:
            `(x, y)` or `(x,)` for the slice, and the batch's size before
            padding.
        """
        batch, n = self._fetch(index, (process, processes, multiple))
        return self.on_device(batch), n

    def on_epoch_end(self):
        self.prefetcher.clear()
        self.epoch += 1
        if self.shuffle:
            # A new array: batches made ahead keep the order they were given.
            order = self.order.copy()
            self.rng.shuffle(order)
            self.order = order


class FeatureBatches(keras.utils.PyDataset):
    """Batches of precomputed activations `(features, labels)` by index.

    Reads rows of `features` (a memory-mapped `.npy` works: only the rows of
    one batch are copied) in the order of `indices`, reshuffled every epoch
    when `shuffle`. fast.ai v0.7 kept activations on disk (bcolz) for the
    same reason.

    Args:
        features: array `(n, dim)`, e.g. `np.load(path, mmap_mode="r")`.
        labels: array `(n,)` or `(n, num_classes)`, or None (predict).
        batch_size: rows per batch.
        indices: row indices served each epoch, repeats allowed; default
            every row once.
        shuffle: reshuffle `indices` every epoch.
        seed: seed of the shuffles.
        drop_last: drop the last, smaller batch.
        batch_multiple: every batch's size is a multiple of this (see
            `ImageBatches`).
    """

    def __init__(self, features, labels, batch_size, indices=None, shuffle=False, seed=0, drop_last=False, batch_multiple=1):
        super().__init__()
        self.features = features
        self.labels = labels
        self.batch_size = int(batch_size)
        self.order = np.arange(len(features)) if indices is None else np.asarray(indices)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.batch_multiple = _check_multiple(batch_multiple, self.batch_size)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self):
        return _num_batches(len(self.order), self.batch_size, self.drop_last, self.batch_multiple)

    def __getitem__(self, index):
        rows = _cut(self.order[index * self.batch_size : (index + 1) * self.batch_size], self.batch_multiple)
        # Sorted reads from a memory map, then back to the batch's order.
        unique, inverse = np.unique(rows, return_inverse=True)
        x = np.asarray(self.features[unique], dtype="float32")[inverse]
        if self.labels is None:
            return (x,)
        return x, self.labels[rows]

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)
