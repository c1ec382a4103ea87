"""LR range test (Smith 2017; fast.ai v0.7 `lr_find`)."""

import math

import keras
import numpy as np

from kertransfer import schedules
from kertransfer.callbacks._optim import set_learning_rates
from kertransfer.callbacks._optim import sub_optimizers

__all__ = ["LRFinder", "raw_batch_losses"]


def raw_batch_losses(running_means):
    """Recovers per-batch losses from Keras's running mean of one epoch.

    Keras reports `logs["loss"]` at batch end as the mean over the epoch so
    far: `m_k = (l_1 + ... + l_k) / k` for equal batches, so
    `l_k = k * m_k - (k - 1) * m_{k-1}`.

    Args:
        running_means: the batch-end `logs["loss"]` values of one epoch, in
            order, for batches of equal size.

    Returns:
        numpy array of per-batch losses.
    """
    m = np.asarray(running_means, dtype="float64")
    k = np.arange(1, len(m) + 1)
    prev = np.concatenate([[0.0], m[:-1]])
    return k * m - (k - 1) * prev


class LRFinder(keras.callbacks.Callback):
    """Ramps the LR exponentially each batch and records the loss.

    Between `start_lr` and `end_lr` over `num_steps` batches (at most one
    epoch; fast.ai v0.7 `LR_Finder`). The raw per-batch loss is recovered
    from Keras's running mean (`raw_batch_losses`; the dataset must have equal
    batches, e.g. `drop_last=True`), smoothed by an exponential moving
    average with `beta` and bias correction, and training stops once the
    smoothed loss exceeds `stop_factor` times the best seen (or is NaN).
    The divergence check starts after the first third of the ramp (NaN
    stops at once): on small data, with small batches, one noisy early batch
    would otherwise end the test before the LR gets anywhere useful.
    With several sub-optimizers (layer groups), all LRs move together,
    keeping the ratios of `group_scales`.

    The callback changes weights; `ConvLearner.lr_find` restores them.

    Args:
        start_lr: first LR (of the last group).
        end_lr: LR the ramp would reach at `num_steps`.
        num_steps: batches in the ramp.
        beta: EMA factor of the smoothing (0.98 as fast.ai).
        stop_factor: stop when smoothed loss > `stop_factor` * best.
        group_scales: per-group multipliers of the LR (last group 1.0), or
            None for equal LRs.

    Attributes:
        lrs, losses, smoothed_losses: lists, one entry per batch run.

    Raises:
        ValueError: if `start_lr >= end_lr`, either is not positive, or
            `num_steps < 2`.
    """

    def __init__(
        self,
        start_lr=1e-5,
        end_lr=10.0,
        num_steps=100,
        beta=0.98,
        stop_factor=4.0,
        group_scales=None,
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

    def on_train_begin(self, logs=None):
        n = len(sub_optimizers(self.model.optimizer))
        scales = self.group_scales if self.group_scales is not None else 1.0
        self.scales = schedules.expand_lrs(scales, n)
        self.lrs, self.losses, self.smoothed_losses = [], [], []
        self._avg, self._best, self._prev_mean = 0.0, math.inf, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        i = len(self.lrs)
        lr = schedules.sched_exp(
            self.start_lr, self.end_lr, i / (self.num_steps - 1)
        )
        set_learning_rates(self.model, [lr * s for s in self.scales])
        self.lrs.append(lr)

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        k = batch + 1
        raw = k * mean - (k - 1) * self._prev_mean
        self._prev_mean = mean
        i = len(self.losses)
        self.losses.append(raw)
        self._avg = self.beta * self._avg + (1 - self.beta) * raw
        smooth = self._avg / (1 - self.beta ** (i + 1))
        self.smoothed_losses.append(smooth)
        if i == 0 or smooth < self._best:
            self._best = smooth
        warm = i + 1 >= max(3, self.num_steps // 3)
        diverged = smooth > self.stop_factor * self._best
        if (
            not math.isfinite(smooth)
            or (warm and diverged)
            or len(self.lrs) >= self.num_steps
        ):
            self.model.stop_training = True
