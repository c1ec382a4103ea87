"""TensorBoard logging over a sequence of fits, with per-group LRs."""

import importlib.util

import keras

from kertransfer.callbacks.learning_rates import get_learning_rates

__all__ = ["TensorBoardLogger"]


def _require_tensorboard():
    missing = [
        name
        for name in ("tensorflow", "tensorboard")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ImportError(
            "TensorBoard logging uses keras.callbacks.TensorBoard, which writes "
            "event files with TensorFlow's tf.summary under any Keras backend "
            f"(JAX and torch included). Missing: {', '.join(missing)}. Install "
            "them with `pip install tensorflow tensorboard` (or "
            "`pip install kertransfer[tensorflow]`), or train without "
            "--tensorboard."
        )


class TensorBoardLogger(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` across several fits, with per-group LRs.

    fast.ai's workflow is a sequence of fits (head on precomputed
    activations, head with augmentation, unfrozen with differential LRs);
    each is one `model.fit`, whose epochs restart at 0. This callback keeps
    one running epoch count over all fits it is passed to, so the curves of
    the stages follow each other on one TensorBoard axis: epoch `n` of the
    run (from 1, as `learn.history`, `history.csv` and the console of
    `kertransfer train` number it) is logged at step `n`. At each epoch end
    it adds the mean learning rate of each trainable layer group over the
    epoch's batches (as set by the `SGDR` callback, read back from the
    sub-optimizers; the LR at the epoch's end is ~0 with `cycle_len=1`) to
    the scalars, as `epoch_lr_<group>` (e.g. `epoch_lr_group0`,
    `epoch_lr_head`). Keras's own scalars are written as Keras writes them:
    `epoch_loss`, `epoch_accuracy` under `train/`, the validation ones under
    `validation/`, and the LR at the epoch's end, `epoch_learning_rate`
    (one optimizer) or `epoch_learning_rate_<sub-optimizer name>` (a
    `MultiOptimizer`; `group_optimizer` names its sub-optimizers after their
    layer groups, so these names hold from one fit to the next).

    Every batch it also writes each group's LR for that batch,
    `batch_lr_<group>` under `train/`, at step `b`: the batch's number
    over all fits (from 1), so SGDR's warm restarts show as jumps back to
    the base LR.

    `keras.callbacks.TensorBoard` writes with `tf.summary`, so it needs
    TensorFlow and TensorBoard installed; the Keras backend can be any.

    Args:
        log_dir: folder for the event files (`train/` and `validation/`
            sub-folders are written).
        group_names: names of the trainable layer groups, earliest first, one
            per sub-optimizer: a list, or a callable returning the list
            (called when each fit begins, since trainable groups change after
            `unfreeze`). None: `group0`, `group1`, ...
        **kwargs: passed to `keras.callbacks.TensorBoard` (`write_graph`
            defaults to False here).

    Attributes:
        epochs_logged: epochs logged so far over all fits; epoch `e`
            (0-based, as Keras counts) of the next fit is logged at step
            `epochs_logged + e + 1` (a fit resumed at `initial_epoch` keeps
            its steps). A job that resumes sets it to the epochs of the fits
            it skips.
        batches_logged: batches so far over all fits, likewise: batch `b`
            of epoch `e` of the next fit is step `batches_logged + e *
            steps_per_epoch + b + 1`.

    Raises:
        ImportError: if TensorFlow or TensorBoard is not installed.

    Example:

    ```python
    tb = TensorBoardLogger("runs/dogscats/tensorboard")
    learn.fit(1e-2, 1, callbacks=[tb])
    learn.unfreeze()
    learn.fit([1e-4, 1e-3, 1e-2], 3, cycle_len=1, cycle_mult=2, callbacks=[tb])
    # then: tensorboard --logdir runs/dogscats/tensorboard
    ```
    """

    def __init__(self, log_dir, group_names=None, **kwargs):
        _require_tensorboard()
        kwargs.setdefault("write_graph", False)
        super().__init__(log_dir=str(log_dir), **kwargs)
        self.group_names = group_names
        self.epochs_logged = 0
        self.batches_logged = 0
        self._fit_start = 0
        self._batch_start = 0
        self._epoch_first = 0
        self._batches = 0
        self._names = None
        self._lr_sums = None
        self._lr_batches = 0

    def on_train_begin(self, logs=None):
        # Epoch `e` of this fit is step `start + e + 1`: a fit resumed at
        # `initial_epoch` logs at the steps it would have had.
        self._fit_start = self.epochs_logged
        self._batch_start = self.batches_logged
        names = self.group_names() if callable(self.group_names) else self.group_names
        self._names = None if names is None else [str(n) for n in names]
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        # The run's batch number before this epoch's first (a dataset of
        # unknown length: counted as the batches come).
        steps = (self.params or {}).get("steps")
        self._epoch_first = self._batch_start + epoch * steps if steps else self.batches_logged
        self._batches = 0
        self._lr_sums = None
        self._lr_batches = 0
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        # Runs after SGDR's on_train_batch_begin (learner callbacks come
        # first), so these are the LRs this batch trains with.
        lrs = get_learning_rates(self.model)
        if self._lr_sums is None:
            self._lr_sums = [0.0] * len(lrs)
        self._lr_sums = [total + lr for total, lr in zip(self._lr_sums, lrs)]
        self._lr_batches += 1
        self._batches = batch + 1
        step = self._epoch_first + batch + 1
        with self._train_writer.as_default():
            for name, lr in zip(self._group_names(len(lrs)), lrs):
                self.summary.scalar(f"batch_lr_{name}", lr, step=step)
        super().on_train_batch_begin(batch, logs)

    def _group_names(self, n):
        names = self._names
        if names is None or len(names) != n:
            names = [f"group{i}" for i in range(n)]
        return names

    def group_learning_rates(self):
        """`{"lr_<group>": mean LR}` over the epoch, one per sub-optimizer."""
        if self._lr_batches:
            lrs = [total / self._lr_batches for total in self._lr_sums]
        else:
            lrs = get_learning_rates(self.model)
        return {f"lr_{name}": lr for name, lr in zip(self._group_names(len(lrs)), lrs)}

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})  # a copy: History keeps its own keys
        logs.update(self.group_learning_rates())
        step = self._fit_start + epoch + 1
        super().on_epoch_end(step, logs)
        self.epochs_logged = step
        self.batches_logged = self._epoch_first + ((self.params or {}).get("steps") or self._batches)
