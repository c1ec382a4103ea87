"""`StepSchedule`: sets each layer group's LR every batch from a schedule of the step."""

import keras

from kertransfer import schedules
from kertransfer.callbacks.learning_rates import StepLearningRates
from kertransfer.callbacks.learning_rates import check_settable_learning_rates
from kertransfer.callbacks.learning_rates import learning_rate_logs
from kertransfer.callbacks.learning_rates import optimizer_steps
from kertransfer.callbacks.learning_rates import sub_optimizers

__all__ = ["StepSchedule"]


class StepSchedule(keras.callbacks.Callback):
    """Base of the per-batch LR schedulers (`SGDR`, `OneCycle`).

    Each batch, each layer group's LR is its base LR times
    `multiplier(step)`, a pure function of the training step (fastai v2's
    one thin `ParamScheduler` under `fit_sgdr` and `fit_one_cycle`).
    Subclasses only define `multiplier`.

    The step is `epoch * steps_per_epoch + batch`, from the epoch and batch
    numbers Keras calls back with: a fit resumed at `initial_epoch`
    (`FitCheckpoint`) continues the schedule where it stopped. With
    `steps_per_execution=N` (TensorFlow, JAX) Keras calls back once per N
    batches; the LR is then set at each call for the step the call starts
    at, and holds for its N batches (as it would with
    `keras.callbacks.LearningRateScheduler`), and the schedule keeps pace
    with the steps. Nothing is read back from the device each batch, and
    the LRs are set only when they change (under JAX without a sync of the
    trainer's state, see `StepLearningRates`);
    `model.optimizer.iterations` is read at the fit's first batch and at
    each epoch's end, to record the steps run in `lr_history`.

    At each epoch's end the current LRs go into the logs as Keras's
    `LearningRateScheduler` writes them, so `History` (`history.history`),
    `CSVLogger` and `TensorBoard` record them: `learning_rate` for one
    optimizer, `learning_rate_<name>` per sub-optimizer of a
    `MultiOptimizer` (`group_optimizer` names them after their layer groups,
    e.g. `learning_rate_head`). They are the LRs of the epoch's last batch.

    Per-group LRs need a `keras.optimizers.MultiOptimizer` whose
    sub-optimizers are in layer-group order (see
    `kertransfer.groups.group_optimizer`); with a plain optimizer pass one LR.
    Each optimizer must be built with a float `learning_rate`.

    Args:
        lrs: float, or one base LR per sub-optimizer.
        steps_per_epoch: batches per epoch, or None to take Keras's
            `params["steps"]` (known for arrays, `PyDataset`s and datasets
            of known length).

    Attributes:
        lr_history: list of per-step lists of the LRs used, one per group
            (from the fit's first step, also when it resumed later; up to
            the last epoch's end).

    Raises:
        ValueError: on a bad `steps_per_epoch`; in `on_train_begin`, if the
            number of LRs does not match the number of sub-optimizers, or
            `steps_per_epoch` is unknown or differs from the fit's.
        TypeError: in `on_train_begin`, if an optimizer was built with a
            `LearningRateSchedule` (its LR cannot be set).
    """

    def __init__(self, lrs, steps_per_epoch=None):
        super().__init__()
        if steps_per_epoch is not None and (
            int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1
        ):
            raise ValueError(
                "steps_per_epoch must be a positive integer or None. Received "
                f"steps_per_epoch={steps_per_epoch}."
            )
        self.lrs = lrs
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.lr_history = []

    def multiplier(self, step):
        """Fraction of the base LRs at training step `step` (0-based)."""
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        name = type(self).__name__
        check_settable_learning_rates(self.model, name)
        n = len(sub_optimizers(self.model.optimizer))
        self.base_lrs = schedules.expand_lrs(self.lrs, n)
        steps = (self.params or {}).get("steps")
        if self.steps_per_epoch is None and steps is None:
            raise ValueError(
                f"{name} needs the number of batches per epoch, and Keras does not know it for this "
                f"data (a generator or a dataset of unknown length). Pass {name}(..., steps_per_epoch=N)."
            )
        if (
            self.steps_per_epoch is not None
            and steps is not None
            and steps != self.steps_per_epoch
        ):
            raise ValueError(
                f"{name} was given steps_per_epoch={self.steps_per_epoch}, but this fit runs {steps} "
                "batches per epoch. Pass the fit's number (len(train_dataset)), or None."
            )
        self._steps = self.steps_per_epoch or steps
        self._epoch, self._offset, self._current = 0, None, None
        # Taken once: under JAX, `self.model` syncs the trainer's state at every use.
        self._fit_model = self.model
        self._setter = StepLearningRates(self._fit_model)

    def _lrs(self, step):
        mult = self.multiplier(step)
        return [lr * mult for lr in self.base_lrs]

    def _record(self, upto):
        # `lr_history` up to step `upto`: the LRs in use since the last call,
        # or, before the fit's first batch (a resumed fit), the schedule's.
        while len(self.lr_history) < upto:
            self.lr_history.append(self._current or self._lrs(len(self.lr_history)))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self._epoch * self._steps + batch
        if self._offset is None:
            # The optimizer may have counted steps before (an earlier fit).
            self._offset = optimizer_steps(self._fit_model) - step
            del self.lr_history[step:]
        self._record(step)
        lrs = self._lrs(step)
        if lrs != self._current:
            self._setter.set(lrs)
        self._current = lrs

    def on_epoch_end(self, epoch, logs=None):
        if self._offset is not None:
            self._record(optimizer_steps(self._fit_model) - self._offset)
        if logs is not None:
            logs.update(learning_rate_logs(self.model))

    def on_train_end(self, logs=None):
        self._setter.close()
