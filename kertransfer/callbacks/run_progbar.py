"""`RunProgbarLogger`: Keras's progress bar, epochs numbered over a sequence of fits."""

import keras

__all__ = ["RunProgbarLogger"]


class RunProgbarLogger(keras.callbacks.ProgbarLogger):
    """`keras.callbacks.ProgbarLogger` that numbers epochs over all fits of a run.

    fast.ai's workflow is a sequence of fits, each one `model.fit` whose
    epochs restart at 1 (Keras prints `Epoch 1/2`, `Epoch 1/3`, ...; one
    epoch alone gets no line at all). This logger prints each epoch's
    number in the whole run, as `history.csv` and TensorBoard number it,
    with its place in the fit: `Epoch 4/9 (unfrozen 1/3)`. Passed to
    `model.fit(callbacks=...)`, it takes the place of Keras's own logger
    (which Keras then does not add); the bar itself is Keras's.

    Args:
        total_epochs: epochs of the whole run (all fits).

    Attributes:
        epochs_before: epochs of the run before the next fit's first one
            (set before each fit, e.g. `len(learn.history)`).
        stage: a name for the next fit, shown in brackets (or None).

    Example:

    ```python
    progbar = RunProgbarLogger(total_epochs=3)
    learn.fit(1e-2, 1, callbacks=[progbar], stage="head")  # Epoch 1/3 (head 1/1)
    progbar.epochs_before, progbar.stage = len(learn.history), "unfrozen"
    learn.fit(1e-3, 2, callbacks=[progbar], stage="unfrozen")  # Epoch 2/3 (unfrozen 1/2) ...
    ```
    """

    def __init__(self, total_epochs):
        super().__init__()
        self.total_epochs = int(total_epochs)
        self.epochs_before = 0
        self.stage = None

    def on_epoch_begin(self, epoch, logs=None):
        epochs, self.epochs = self.epochs, 1  # Keras's own "Epoch e/n" line is left out
        super().on_epoch_begin(epoch, logs)
        self.epochs = epochs
        if self.verbose:
            where = f"{self.stage} " if self.stage else ""
            # Where Keras's own line goes: standard output.
            print(f"Epoch {self.epochs_before + epoch + 1}/{self.total_epochs} ({where}{epoch + 1}/{self.epochs})", flush=True)
