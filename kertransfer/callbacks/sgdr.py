"""SGDR: cosine annealing with warm restarts, per layer group."""

import keras

from kertransfer import schedules
from kertransfer.callbacks._optim import set_learning_rates
from kertransfer.callbacks._optim import sub_optimizers

__all__ = ["SGDR"]


class SGDR(keras.callbacks.Callback):
    """Sets each layer group's LR every batch by SGDR (fast.ai `CosAnneal`).

    Within a cycle each group's LR anneals from its base LR to 0 along a
    cosine; a new cycle restarts at the base LR. The first cycle lasts
    `cycle_len` epochs and each next one `cycle_mult` times longer
    (Loshchilov & Hutter 2017, "SGDR"; fast.ai v0.7 `fit(lrs, n_cycle,
    cycle_len, cycle_mult)`). Without `cycle_len` the LR stays at its base.
    Run `model.fit` for `schedules.sgdr_total_epochs(n_cycle, cycle_len,
    cycle_mult)` epochs. The LR is a function of the position in the fit,
    `epoch * steps_per_epoch + batch`, so a fit resumed at `initial_epoch`
    (`FitCheckpoint`) continues the schedule where it stopped.

    Per-group LRs need a `keras.optimizers.MultiOptimizer` whose
    sub-optimizers are in layer-group order (see
    `kertransfer.groups.group_optimizer`); with a plain optimizer pass one LR.

    Args:
        lrs: float, or one base LR per sub-optimizer.
        steps_per_epoch: batches per epoch (`len(train_dataset)`).
        cycle_len: epochs in the first cycle, or None (constant LR).
        cycle_mult: growth factor of the cycle length.

    Attributes:
        lr_history: list of per-batch lists of the LRs set, one per group
            (from the fit's first batch, also when it resumed later).

    Raises:
        ValueError: in `on_train_begin`, if the number of LRs does not match
            the number of sub-optimizers.

    Example:

    ```python
    epochs = sgdr_total_epochs(3, cycle_len=1, cycle_mult=2)  # 7
    model.fit(train, epochs=epochs, callbacks=[
        SGDR([1e-4, 1e-3, 1e-2], len(train), cycle_len=1, cycle_mult=2)])
    ```
    """

    def __init__(self, lrs, steps_per_epoch, cycle_len=None, cycle_mult=1):
        super().__init__()
        if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
            raise ValueError(
                "steps_per_epoch must be a positive integer. Received "
                f"steps_per_epoch={steps_per_epoch}."
            )
        schedules.sgdr_total_epochs(1, cycle_len, cycle_mult)  # validates
        self.lrs = lrs
        self.steps_per_epoch = int(steps_per_epoch)
        self.cycle_len = cycle_len
        self.cycle_mult = cycle_mult
        self.lr_history = []
        self.step = 0

    def on_train_begin(self, logs=None):
        n = len(sub_optimizers(self.model.optimizer))
        self.base_lrs = schedules.expand_lrs(self.lrs, n)
        self.step = 0

    def _lrs(self, step):
        mult = schedules.sgdr_multiplier(
            step, self.steps_per_epoch, self.cycle_len, self.cycle_mult
        )
        return [lr * mult for lr in self.base_lrs]

    def on_epoch_begin(self, epoch, logs=None):
        self.step = epoch * self.steps_per_epoch
        # A resumed fit starts after its first epochs: their LRs were those
        # of the schedule.
        while len(self.lr_history) < self.step:
            self.lr_history.append(self._lrs(len(self.lr_history)))

    def on_train_batch_begin(self, batch, logs=None):
        lrs = self._lrs(self.step)
        set_learning_rates(self.model, lrs)
        self.lr_history.append(lrs)
        self.step += 1
