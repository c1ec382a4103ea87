"""What `learn.fit` returns: Keras's `History`, with a short text form."""

import keras

__all__ = ["FitHistory"]


class FitHistory(keras.callbacks.History):
    """`keras.callbacks.History` that reads as the last epoch's numbers.

    `learn.fit(...)` (and `fit_sgdr`, `fit_one_cycle`, `fine_tune`) return
    it: `history.history` (`{log: [value per epoch]}`), `history.epoch` and
    `history.params` are Keras's. Its text form, what a notebook shows when
    a cell ends with `learn.fit(...)`, gives the number of epochs and the
    last epoch's loss and metrics, as fast.ai v0.7's `fit` returned the last
    `[val_loss, accuracy]`:

    `FitHistory(stage='fit', epochs=2, loss=0.4123, accuracy=0.8720,
    val_loss=0.3010, val_accuracy=0.9100)`

    The per-group learning rates Keras logs (`learning_rate_<group>`) are in
    `history.history`, not in the text.

    Args:
        stage: the fit's name in `learn.history`, or None.
    """

    def __init__(self, stage=None):
        super().__init__()
        self.stage = stage
        self.epoch = []

    def __repr__(self):
        parts = [] if self.stage is None else [f"stage={self.stage!r}"]
        parts.append(f"epochs={len(self.epoch)}")
        for name, values in self.history.items():
            if values and not name.startswith("learning_rate"):
                parts.append(f"{name}={float(values[-1]):.4f}")
        return f"FitHistory({', '.join(parts)})"
