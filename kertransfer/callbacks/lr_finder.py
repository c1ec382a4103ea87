"""LR range test (Smith 2017; fast.ai v0.7 `lr_find`)."""

import math

import numpy as np

from kertransfer import schedules
from kertransfer.callbacks.batch_losses import BatchLosses
from kertransfer.callbacks.checkpoint import assign_arrays
from kertransfer.callbacks.checkpoint import variable_arrays
from kertransfer.callbacks.learning_rates import check_settable_learning_rates
from kertransfer.callbacks.learning_rates import learning_rate_logs
from kertransfer.callbacks.learning_rates import optimizer_steps
from kertransfer.callbacks.learning_rates import set_learning_rates
from kertransfer.callbacks.learning_rates import sub_optimizers

__all__ = ["LRFinder", "raw_batch_losses"]


def raw_batch_losses(running_means, batch_sizes=None):
    """Recovers per-batch losses from Keras's running mean of one epoch.

    Keras reports `logs["loss"]` at batch end as the mean over the epoch so
    far, weighted by batch size: `m_k = (n_1 l_1 + ... + n_k l_k) / C_k` with
    `C_k = n_1 + ... + n_k`, so `l_k = (C_k m_k - C_{k-1} m_{k-1}) / n_k`.
    (During a fit, `BatchLosses` reads the same sums from Keras's loss
    tracker instead, and needs no batch sizes.)

    Args:
        running_means: the batch-end `logs["loss"]` values of one epoch, in
            order.
        batch_sizes: the number of samples of each batch, or None for equal
            batches. A short last batch (`drop_last=False`) needs them.

    Returns:
        numpy array of per-batch losses.

    Raises:
        ValueError: if `batch_sizes` and `running_means` differ in length.

    Example:

    >>> raw_batch_losses([2.0, 1.5, 1.26], batch_sizes=[4, 4, 2])
    array([2. , 1. , 0.3])
    """
    m = np.asarray(running_means, dtype="float64")
    n = (
        np.ones_like(m)
        if batch_sizes is None
        else np.asarray(batch_sizes, dtype="float64")
    )
    if n.shape != m.shape:
        raise ValueError(
            f"raw_batch_losses needs one batch size per running mean. Received {len(m)} "
            f"running_means and {len(n)} batch_sizes."
        )
    totals = np.cumsum(n) * m
    return np.diff(totals, prepend=0.0) / n


class LRFinder(BatchLosses):
    """Ramps the LR exponentially each batch and records the loss.

    Between `start_lr` and `end_lr` over `num_steps` batches (at most one
    epoch; fast.ai v0.7 `LR_Finder`). The LR is a function of the training
    steps done, `model.optimizer.iterations` counted from the fit's first
    batch. Each batch's own loss is recorded exactly (`BatchLosses`: from
    Keras's loss tracker, whatever the batch sizes), smoothed by an
    exponential moving average with `beta` and bias correction, and
    training stops once the smoothed loss exceeds `stop_factor` times the
    best seen (or is NaN).
    The divergence check starts after the first third of the ramp (NaN
    stops at once): on small data, with small batches, one noisy early batch
    would otherwise end the test before the LR gets anywhere useful.
    With several sub-optimizers (layer groups), all LRs move together,
    keeping the ratios of `group_scales`. The LRs at each epoch's end are
    written into the logs as `SGDR` writes them.

    With `restore=True` (as fastai's `LRFinder` and pytorch-lr-finder), the
    weights and optimizer variables (momentum, step counter, LRs) of the
    fit's start are snapshotted in `on_train_begin` and put back in
    `on_train_end`, so that the test leaves no trace on the model. Keras
    skips `on_train_end` when the fit raises: call `restore_snapshot()` in a
    `finally` to cover that too.

    With `steps_per_execution=N` (TensorFlow, JAX) the LR is set once per N
    batches and each recorded point covers N batches.

    Args:
        start_lr: first LR (of the last group).
        end_lr: LR the ramp would reach at `num_steps`.
        num_steps: batches in the ramp.
        beta: EMA factor of the smoothing (0.98 as fast.ai).
        stop_factor: stop when smoothed loss > `stop_factor` * best.
        group_scales: per-group multipliers of the LR (last group 1.0), or
            None for equal LRs.
        restore: restore the weights and optimizer variables when the fit
            ends.

    Attributes:
        lrs, losses, smoothed_losses: lists, one entry per batch run (`lrs`:
            the LR of the last group).

    Raises:
        ValueError: if `start_lr >= end_lr`, either is not positive, or
            `num_steps < 2`.
        TypeError: in `on_train_begin`, if an optimizer was built with a
            `LearningRateSchedule` (its LR cannot be set).

    Example:

    ```python
    finder = LRFinder(1e-5, 10.0, num_steps=len(train))
    model.fit(train, epochs=1, callbacks=[finder])  # the model is unchanged
    suggest_lrs(finder.lrs[: len(finder.losses)], finder.smoothed_losses)
    ```
    """

    def __init__(
        self,
        start_lr=1e-5,
        end_lr=10.0,
        num_steps=100,
        beta=0.98,
        stop_factor=4.0,
        group_scales=None,
        restore=True,
    ):
        super().__init__()
        if not 0 < start_lr < end_lr:
            raise ValueError(
                "LRFinder needs 0 < start_lr < end_lr. Received "
                f"start_lr={start_lr}, end_lr={end_lr}."
            )
        if num_steps < 2:
            raise ValueError(
                f"LRFinder needs num_steps >= 2. Received num_steps={num_steps}."
            )
        self.start_lr, self.end_lr = float(start_lr), float(end_lr)
        self.num_steps = int(num_steps)
        self.beta = beta
        self.stop_factor = stop_factor
        self.group_scales = group_scales
        self.restore = bool(restore)
        self._snapshot = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        check_settable_learning_rates(self.model, "LRFinder")
        n = len(sub_optimizers(self.model.optimizer))
        scales = self.group_scales if self.group_scales is not None else 1.0
        self.scales = schedules.expand_lrs(scales, n)
        self.lrs, self.smoothed_losses = [], []
        self._avg, self._best, self._first_step = 0.0, math.inf, None
        self._snapshot = self._take_snapshot() if self.restore else None

    def _take_snapshot(self):
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # as FitCheckpoint
        return self.model.get_weights(), variable_arrays(
            optimizer.variables, "optimizer"
        )

    def restore_snapshot(self):
        """Puts back the weights and optimizer variables of the fit's start.

        Called by `on_train_end` when `restore=True`; a no-op once done, or
        without a snapshot.

        Returns:
            True if it restored them.
        """
        if self._snapshot is None:
            return False
        weights, optimizer_arrays = self._snapshot
        self._snapshot = None
        self.model.set_weights(weights)
        assign_arrays(
            self.model.optimizer.variables,
            optimizer_arrays,
            "optimizer",
            "LRFinder's snapshot",
        )
        return True

    def on_train_batch_begin(self, batch, logs=None):
        step = optimizer_steps(self.model)
        if self._first_step is None:
            self._first_step = step
        pct = (step - self._first_step) / (self.num_steps - 1)
        lr = schedules.sched_exp(self.start_lr, self.end_lr, pct)
        set_learning_rates(self.model, [lr * s for s in self.scales])
        self.lrs.append(lr)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        raw = self.losses[-1]
        i = len(self.losses) - 1
        self._avg = self.beta * self._avg + (1 - self.beta) * raw
        smooth = self._avg / (1 - self.beta ** (i + 1))
        self.smoothed_losses.append(smooth)
        if i == 0 or smooth < self._best:
            self._best = smooth
        warm = i + 1 >= max(3, self.num_steps // 3)
        diverged = smooth > self.stop_factor * self._best
        done = optimizer_steps(self.model) - self._first_step >= self.num_steps
        if not math.isfinite(smooth) or (warm and diverged) or done:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(learning_rate_logs(self.model))

    def on_train_end(self, logs=None):
        self.restore_snapshot()
