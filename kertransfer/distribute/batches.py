"""`PyDataset` wrappers that fit batches to the devices and processes.

Under a distribution every batch must divide by the device count and each
process feeds only its slice of every global batch: `ProcessSlices` slices
training batches (`Replicas.shard`), `PaddedBatches` pads prediction
batches (`predict_padded`), `ArrayBatches` batches a numpy array.
"""

import math

import keras
import numpy as np

__all__ = ["ArrayBatches", "PaddedBatches", "ProcessSlices", "pad_rows"]


def _slice(x, index, count):
    """Rows `[index * n / count, (index + 1) * n / count)` of `x` (`n` divides by `count`)."""
    share = len(x) // count
    return x[index * share : (index + 1) * share]


class _BatchesView(keras.utils.PyDataset):
    """A `PyDataset` made from the batches of another, with its worker settings."""

    def __init__(self, batches):
        super().__init__(
            workers=getattr(batches, "workers", 1),
            use_multiprocessing=False,
            max_queue_size=getattr(batches, "max_queue_size", 10),
        )
        self.batches = batches

    def __len__(self):
        return len(self.batches)


class ProcessSlices(_BatchesView):
    """Process `index`'s slice of every batch of `batches` (see `Replicas.shard`).

    Args:
        batches: a `PyDataset` of `(x, y)` or `(x,)` items; with
            `process_slice` (`ImageBatches`), only the slice's images are
            decoded.
        index: this process's index (0-based).
        count: the number of processes; every batch must divide by it.
    """

    def __init__(self, batches, index, count):
        super().__init__(batches)
        self.index = index
        self.count = count

    def __getitem__(self, index):
        if hasattr(self.batches, "process_slice"):  # decodes only this slice's images
            return self.batches.process_slice(index, self.index, self.count)[0]
        item = self.batches[index]
        if len(item[0]) % self.count:
            raise ValueError(
                f"Batch {index} has {len(item[0])} rows, which do not divide by the "
                f"{self.count} processes; cut batches to a multiple of the device "
                "count (ImageBatches(batch_multiple=...))."
            )
        return tuple(
            None if part is None else _slice(part, self.index, self.count)
            for part in item
        )

    def on_epoch_end(self):
        self.batches.on_epoch_end()


class PaddedBatches(_BatchesView):
    """The inputs of `batches`, each batch padded to a multiple of `multiple` rows.

    With several processes, each gets its slice of every padded batch.
    `sizes[index]` is batch `index`'s size before padding, once it has been
    read (`predict_padded` trims the outputs with it).

    Args:
        batches: a `PyDataset` whose items start with the inputs.
        multiple: the device count.
        process: `(index, count)` of this process.
    """

    def __init__(self, batches, multiple, process=(0, 1)):
        super().__init__(batches)
        self.multiple = multiple
        self.process = process
        self.sizes = {}

    def __getitem__(self, index):
        if getattr(
            self.batches, "per_image_seeds", False
        ):  # decodes only this slice's images
            item, self.sizes[index] = self.batches.process_slice(
                index, *self.process, self.multiple
            )
            return (item[0],)
        x = np.asarray(self.batches[index][0])
        self.sizes[index] = len(x)
        return (_slice(pad_rows(x, self.multiple), *self.process),)


class ArrayBatches(keras.utils.PyDataset):
    """Batches of `batch_size` rows of an array, as `(x,)` items (the last one short)."""

    def __init__(self, x, batch_size):
        super().__init__()
        self.x = x
        self.batch_size = int(batch_size)

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        return (self.x[index * self.batch_size : (index + 1) * self.batch_size],)


def pad_rows(x, multiple):
    """`x` with its last row repeated up to a multiple of `multiple` rows."""
    pad = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
