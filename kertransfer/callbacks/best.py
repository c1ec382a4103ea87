"""Keep the weights of the best epoch."""

import math

import keras

__all__ = ["KeepBestWeights"]


class KeepBestWeights(keras.callbacks.Callback):
    """Restores, at the end of training, the weights of the best epoch.

    Like `keras.callbacks.EarlyStopping(restore_best_weights=True)` without
    stopping early: fast.ai's `best_save_name` with weights kept in memory.

    Args:
        monitor: epoch log to watch (default `"val_loss"`).
        mode: `"min"` or `"max"`.
        baseline: None, or the `monitor` value of the weights training starts
            from: they then compete with the epochs, and are restored if no
            epoch beats them (a NaN baseline is ignored; a NaN epoch never
            wins).

    Attributes:
        best, best_epoch: the best value and its 0-based epoch (None when
            the starting weights won).

    `state_dict()` / `load_state_dict()` carry the best value, epoch and
    weights over to a resumed fit (`FitCheckpoint`).

    Raises:
        ValueError: if `mode` is not "min"/"max"; `KeyError` at epoch end if
            `monitor` is not in the logs (e.g. no validation data).
    """

    def __init__(self, monitor="val_loss", mode="min", baseline=None):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max'. Received {mode!r}.")
        self.monitor, self.mode, self.baseline = monitor, mode, baseline

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.best_weights = None, None
        if self.baseline is not None and math.isfinite(self.baseline):
            self.best, self.best_weights = float(self.baseline), self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor not in (logs or {}):
            raise KeyError(
                f"KeepBestWeights monitors {self.monitor!r}, which is not in "
                f"the epoch logs {sorted(logs or {})}. Pass validation data."
            )
        value = float(logs[self.monitor])
        better = value < self.best if self.mode == "min" else value > self.best
        if better:
            self.best, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()

    def state_dict(self):
        """The best value, its epoch and weights (for `FitCheckpoint`)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state):
        """Restores what `state_dict` returned."""
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        weights = state["best_weights"]
        self.best_weights = None if weights is None else list(weights)

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
