"""SGDR: cosine annealing with warm restarts, per layer group."""

from kertransfer import schedules
from kertransfer.callbacks.step_schedule import StepSchedule

__all__ = ["SGDR"]


class SGDR(StepSchedule):
    """Sets each layer group's LR every batch by SGDR (fast.ai `CosAnneal`).

    Within a cycle each group's LR anneals from its base LR to 0 along a
    cosine; a new cycle restarts at the base LR. The first cycle lasts
    `cycle_len` epochs and each next one `cycle_mult` times longer
    (Loshchilov & Hutter 2017, "SGDR"; fast.ai v0.7 `fit(lrs, n_cycle,
    cycle_len, cycle_mult)`; Keras's `CosineDecayRestarts(lr,
    cycle_len * steps_per_epoch, t_mul=cycle_mult)`). Without `cycle_len`
    the LR stays at its base. Run `model.fit` for
    `schedules.sgdr_total_epochs(n_cycle, cycle_len, cycle_mult)` epochs.

    The step comes from `model.optimizer.iterations`, so a resumed fit and
    `steps_per_execution > 1` keep to the schedule; the LRs go into the
    epoch logs (`learning_rate_<group>`); see `StepSchedule`. Per-group LRs
    need a `keras.optimizers.MultiOptimizer` in layer-group order
    (`kertransfer.groups.group_optimizer`); each optimizer must be built
    with a float `learning_rate`.

    Args:
        lrs: float, or one base LR per sub-optimizer.
        steps_per_epoch: batches per epoch, or None to take Keras's
            `params["steps"]` (known for arrays, `PyDataset`s and datasets
            of known length).
        cycle_len: epochs in the first cycle, or None (constant LR).
        cycle_mult: growth factor of the cycle length.

    Attributes:
        lr_history: list of per-step lists of the LRs used, one per group
            (from the fit's first step, also when it resumed later; up to
            the last epoch's end).

    Raises:
        ValueError: on a bad `steps_per_epoch` or cycle argument; in
            `on_train_begin`, if the number of LRs does not match the number
            of sub-optimizers, or `steps_per_epoch` is unknown or differs
            from the fit's.
        TypeError: in `on_train_begin`, if an optimizer was built with a
            `LearningRateSchedule` (its LR cannot be set).

    Example:

    ```python
    epochs = sgdr_total_epochs(3, cycle_len=1, cycle_mult=2)  # 7
    history = model.fit(train, epochs=epochs, callbacks=[
        SGDR([1e-4, 1e-3, 1e-2], cycle_len=1, cycle_mult=2)])
    history.history["learning_rate_head"]  # one per epoch
    ```
    """

    def __init__(self, lrs, steps_per_epoch=None, cycle_len=None, cycle_mult=1):
        super().__init__(lrs, steps_per_epoch)
        schedules.sgdr_total_epochs(1, cycle_len, cycle_mult)  # validates
        self.cycle_len = cycle_len
        self.cycle_mult = cycle_mult

    def multiplier(self, step):
        return schedules.sgdr_multiplier(step, self._steps, self.cycle_len, self.cycle_mult)
