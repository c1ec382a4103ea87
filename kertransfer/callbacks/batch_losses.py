"""The training loss of every batch, exactly."""

import keras

from kertransfer.callbacks.learning_rates import InFlightValues

__all__ = ["BatchLosses"]


def _loss_tracker(model):
    """The `keras.metrics.Mean` named "loss" that `compile(loss=...)` creates."""
    for metric in model.metrics:
        if metric.name == "loss" and isinstance(metric, keras.metrics.Mean):
            return metric
    raise ValueError(
        f"BatchLosses reads each batch's loss from the model's 'loss' metric (the "
        f"keras.metrics.Mean that model.compile(loss=...) creates); model {model.name!r} has "
        f"none (metrics: {[m.name for m in model.metrics]}). Compile it with a loss."
    )


class BatchLosses(keras.callbacks.Callback):
    """Records the training loss of every batch, exactly.

    Keras logs `loss` at each batch end as the mean over the epoch so far,
    weighted by batch size (its loss tracker, a `keras.metrics.Mean`, adds
    `loss * batch_size` to `total` and `batch_size` to `count`). This
    callback reads `total` and `count` after each batch: their increments
    give the batch's own loss, `d_total / d_count`, for batches of any size
    (the short last batch included) and without inverting the running mean.

    With `steps_per_execution=N` (TensorFlow, JAX) Keras calls back once per
    N batches; each entry is then the mean loss of those N batches,
    weighted by their sizes.

    Attributes:
        losses: list of floats, one per batch end (reset when a fit begins).
        sizes: list of the number of samples each entry covers.

    Raises:
        ValueError: in `on_train_begin`, if the model has no `loss` metric
            (compiled without a loss).

    Example:

    ```python
    losses = BatchLosses()
    model.fit(x, y, batch_size=32, callbacks=[losses])
    losses.losses  # one float per batch
    ```
    """

    def __init__(self):
        super().__init__()
        self.losses, self.sizes = [], []

    def on_train_begin(self, logs=None):
        self.losses, self.sizes = [], []
        model = self.model  # taken once: `self.model` syncs the JAX state at every use
        tracker = _loss_tracker(model)
        # Under JAX, read from the trainer's state without a sync (`InFlightValues`).
        self._loss_values = InFlightValues(model, [tracker.total, tracker.count])

    def _read(self):
        total, count = self._loss_values.read()
        return total, count

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets the tracker just before; read it rather than assume.
        self._total, self._count = self._read()

    def on_train_batch_end(self, batch, logs=None):
        total, count = self._read()
        size = count - self._count
        self.losses.append((total - self._total) / size if size else float("nan"))
        self.sizes.append(round(size))
        self._total, self._count = total, count
