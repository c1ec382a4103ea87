"""Predictions and validation whatever the device count: pad, predict, trim.

`predict_padded` pads each batch to a multiple of the device count, feeds
every process its slice, gathers the outputs and drops the padding's, so
the result equals one device's. `PaddedValidation` validates through it,
where Keras's own validation would fail or weigh the padding.
"""

import contextlib

import keras
import numpy as np

from kertransfer.distribute.batches import ArrayBatches
from kertransfer.distribute.batches import PaddedBatches
from kertransfer.distribute.batches import pad_rows
from kertransfer.distribute.replicas import Replicas
from kertransfer.distribute.replicas import replica_count

__all__ = ["PaddedValidation", "predict_padded"]


def _process_share():
    """`(index, count)` of this process among those sharing the current distribution."""
    if (
        keras.backend.backend() == "jax"
        and keras.distribution.distribution() is not None
    ):
        import jax

        return jax.process_index(), jax.process_count()
    return 0, 1


@contextlib.contextmanager
def _gathered_predictions(model):
    """Makes `model.predict` return every process's rows on every process.

    Under a distribution over several processes the predictions of a batch
    are one global array whose rows live on other hosts too; NumPy cannot
    read it ("spans non-addressable devices"). The model's predict step is
    wrapped so that each batch's outputs are gathered
    (`jax.experimental.multihost_utils.process_allgather`) before Keras
    concatenates them.
    """
    from jax.experimental import multihost_utils

    model.make_predict_function()
    inner = model.predict_function

    def gathered(state, iterator):
        outputs, state = inner(state, iterator)
        outputs = keras.tree.map_structure(
            lambda out: multihost_utils.process_allgather(out, tiled=True), outputs
        )
        return outputs, state

    model.predict_function = gathered
    try:
        yield
    finally:
        model.predict_function = inner


def predict_padded(model, x, batch_size=None):
    """`model.predict` that works whatever the device count: pads, then trims.

    Under a distribution every batch must divide by the device count
    (JAX raises `IndivisibleError`). Each batch is padded with copies of its
    last row to a multiple of `replica_count(model)` and the padding's
    outputs are dropped, so the result equals one device's. With several
    processes each feeds its slice of every padded batch and gets back the
    whole: every process returns all `n` rows. Outside a distribution this
    is plain `model.predict`.

    Args:
        model: a `keras.Model`.
        x: a numpy array `(n, ...)`, or a `keras.utils.PyDataset` whose items
            start with the inputs (`(x,)` or `(x, y)`).
        batch_size: with an array, rows per batch (a multiple of the device
            count; default 32 rounded up to one).

    Returns:
        numpy array `(n, ...)`: the model's outputs, in input order.

    Raises:
        ValueError: if `batch_size` does not divide by the device count.
    """
    multiple = replica_count(model)
    if multiple == 1:
        return model.predict(x, batch_size=batch_size, verbose=0)
    process = _process_share()
    if not isinstance(x, keras.utils.PyDataset):
        if batch_size is None:
            batch_size = -(-32 // multiple) * multiple
        Replicas(devices=multiple).check_batch_size(batch_size)
        if process[1] == 1:
            x = np.asarray(x)
            return model.predict(pad_rows(x, multiple), batch_size=batch_size, verbose=0)[
                : len(x)
            ]
        x = ArrayBatches(np.asarray(x), batch_size)
    padded = PaddedBatches(x, multiple, process)
    with _gathered_predictions(model) if process[1] > 1 else contextlib.nullcontext():
        out = model.predict(padded, verbose=0)
    parts, row = [], 0
    for index in range(len(padded)):
        size = padded.sizes[index]
        parts.append(out[row : row + size])
        row += size + (-size % multiple)
    return np.concatenate(parts)


class PaddedValidation(keras.callbacks.Callback):
    """Validation at each epoch's end through `predict_padded`.

    Under a distribution Keras's own validation fails on a batch that does
    not divide by the device count, and padding it with zero-weight rows
    would still shift the loss (Keras divides by the padded batch size).
    This callback predicts the validation set (padded, then trimmed) and
    adds `val_loss` and `val_<metric>` to the epoch's logs, before
    `KeepBestWeights`, `History` and the progress bar read them. Place it
    first in the callback list.

    Args:
        batches: the validation `PyDataset` of `(x, y)`.
        labels: the validation labels, `(n,)` or `(n, num_classes)`.
        loss: a Keras loss (name or object) on `(labels, probabilities)`.
        metrics: callable returning fresh Keras metric objects (their
            `name` gives the log key `val_<name>`).
    """

    def __init__(self, batches, labels, loss, metrics):
        super().__init__()
        self.batches = batches
        self.labels = np.asarray(labels)
        self.loss = keras.losses.get(loss)
        self.metrics = metrics

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probs = predict_padded(self.model, self.batches)
        loss = self.loss(self.labels, probs)
        logs["val_loss"] = float(keras.ops.convert_to_numpy(keras.ops.mean(loss)))
        for metric in self.metrics():
            metric.update_state(self.labels, probs)
            logs[f"val_{metric.name}"] = float(
                keras.ops.convert_to_numpy(metric.result())
            )
