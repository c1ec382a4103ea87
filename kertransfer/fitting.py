"""The training verbs of `ConvLearner`: `lr_find`, `fit` and its drivers.

`fit` is fast.ai v0.7's (SGDR with `cycle_len`/`cycle_mult`); `fit_sgdr`,
`fit_one_cycle` and `fine_tune` are fastai v2's short drivers over the
same one-`model.fit` core, each a different `StepSchedule` callback. Every
fit compiles (or resets) fresh optimizers, as fast.ai does and Keras needs
whenever `trainable` changes.
"""

import functools
import json
import math
import time

import keras
import numpy as np

from kertransfer import schedules
from kertransfer.balance import resolve_class_weight
from kertransfer.callbacks import SGDR
from kertransfer.callbacks import BatchLosses
from kertransfer.callbacks import FitCheckpoint
from kertransfer.callbacks import FitHistory
from kertransfer.callbacks import KeepBestWeights
from kertransfer.callbacks import LRFinder
from kertransfer.callbacks import OneCycle
from kertransfer.data import FeatureBatches
from kertransfer.distribute import PaddedValidation
from kertransfer.fbeta_score import SamplesFBetaScore
from kertransfer.groups import group_optimizer
from kertransfer.groups import trainable_groups
from kertransfer.recorder import FitRecord
from kertransfer.recorder import LRFindResult

__all__ = ["TrainingVerbs", "in_scope"]


def in_scope(method):
    """Runs a learner method inside its distribution's scope (`learn.distribution`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.distribution.scope():
            return method(self, *args, **kwargs)

    return wrapper


class _FitLog(BatchLosses):
    """Records each batch's training loss (`BatchLosses`) and each epoch's
    logs and seconds; `FitCheckpoint` saves its state.

    An epoch's `seconds` run from its start to the next one's (the last:
    to `close()`, when `model.fit` has returned), so what the other
    callbacks do at its end (backups, saving the best model) counts in it,
    and the first epoch's run from `start`, the fit's start (compiling
    counts): the epochs of a fit add up to its wall time. (The backup of an
    epoch, written at its end, holds its seconds until then.)
    """

    def __init__(self, start=None):
        super().__init__()
        self.epochs = []
        self._mark = time.time() if start is None else start
        self._open = None  # the last epoch's row, until the next one begins

    def close(self):
        """Ends the last epoch's time (call when the fit has returned)."""
        now = time.time()
        if self._open is not None:
            self._open["seconds"] = now - self._mark
            self._open = None
            self._mark = now

    def on_epoch_begin(self, epoch, logs=None):
        self.close()
        super().on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        row = {k: float(v) for k, v in (logs or {}).items()}
        row["seconds"] = time.time() - self._mark
        self.epochs.append(row)
        self._open = row

    def state_dict(self):
        return {"losses": self.losses, "sizes": self.sizes, "epochs": self.epochs}

    def load_state_dict(self, state):
        self.losses, self.epochs = list(state["losses"]), list(state["epochs"])
        # Backups written before batch sizes were recorded have none.
        self.sizes = list(state.get("sizes", [None] * len(self.losses)))


def _check_same_fit(backup_dir, saved, wanted):
    """Raises if the backup in `backup_dir` was written by another fit."""
    keys = [k for k in wanted if k != "data_seed"]
    differ = [k for k in keys if json.dumps(saved.get(k)) != json.dumps(wanted[k])]
    if differ:
        detail = ", ".join(f"{k}: backup {saved.get(k)!r}, now {wanted[k]!r}" for k in differ)
        raise ValueError(
            f"{backup_dir} holds the backup of a different fit ({detail}). Call fit with the "
            "arguments it was started with to continue it, or delete the folder to start anew."
        )


class TrainingVerbs:
    """The verbs that train a `ConvLearner` (a mixin, as Keras's `Trainer`
    is of `keras.Model`).

    Needs of its host: `model`, `head_model`, `data`, `layer_groups`,
    `group_names`, `opt_fn`, `distribution`, `is_multi`, `precompute`,
    `_activations(split)`, `history`, `freeze()`/`unfreeze()`.
    """

    def _train_inputs(self, batch_size=None, drop_last=False, seed=None):
        """`(model, train, valid, steps_per_epoch, fit_kwargs)` for a fit."""
        bs = batch_size or self.data.batch_size
        devices = self.distribution.devices
        if self.precompute:
            index = self.data.train_index  # repeats rare classes if oversample
            if seed is None:
                seed = int(np.random.randint(0, 2**31 - 1))
            train = FeatureBatches(
                self._activations("train"), self.data.train_labels, bs,
                indices=index, shuffle=True, seed=seed, drop_last=drop_last,
                batch_multiple=devices,
            )
            valid = FeatureBatches(self._activations("valid"), self.data.valid_labels, bs)
            return self.head_model, train, valid, len(train), {}
        train = self.data.train_batches(
            augment=True, drop_last=drop_last, seed=seed, batch_size=bs,
            batch_multiple=devices,
        )
        return self.model, train, self.data.valid_batches(), len(train), {}

    @property
    def _loss(self):
        return "binary_crossentropy" if self.is_multi else "sparse_categorical_crossentropy"

    def _metrics(self):
        if self.is_multi:
            return [SamplesFBetaScore(beta=2, threshold=0.5)]
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def _compile(self, model, lrs):
        """Compiles `model` for a fit at `lrs` (one per group); the active groups.

        Every fit starts from a fresh optimizer (fast.ai v0.7 builds a new
        one per `fit`). When the trainable variables are those of the last
        compile of this model, the optimizer is reset to its fresh state
        (momentum and step counters zeroed, the new LRs set) instead of
        compiling again: a new `compile` makes Keras trace (TensorFlow) or
        compile (JAX) the train step again, which took about as long as
        the whole 6-step fit of a 64-pixel Lite0 on this 2-core CPU
        (`lr_find` then `fit` after `unfreeze()`, the main job's order: 24 s
        -> 4 s under TensorFlow, 34 s -> 4 s under JAX, with the same
        losses). Under torch, which does not trace, every fit compiles: a
        reset optimizer gave other (deterministic) losses there, for a
        cause not found, and nothing to gain.
        """
        active = trainable_groups(self.layer_groups)
        key = tuple(id(v) for v in model.trainable_variables)
        cached = self._compiled.get(id(model))
        reuse = keras.backend.backend() in ("tensorflow", "jax")
        if reuse and cached is not None and cached[0] == key and model.optimizer is cached[1]:
            optimizer, fresh = cached[1], cached[2]
            for variable, value in zip(optimizer.variables, fresh):
                variable.assign(value)
            for sub, i in zip(optimizer.optimizers, active):
                sub.learning_rate = lrs[i]
            return active
        optimizer, active = group_optimizer(self.layer_groups, self.opt_fn, lrs, names=self.group_names)
        model.compile(optimizer=optimizer, loss=self._loss, metrics=self._metrics())
        optimizer.build(model.trainable_variables)
        self.distribution.prepare_optimizer(optimizer)
        fresh = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
        self._compiled[id(model)] = (key, optimizer, fresh)
        return active

    @in_scope
    def lr_find(self, start_lr=1e-5, end_lr=10.0, group_ratios=None, min_steps=40, verbose=0):
        """LR range test: ramps the LR over at most one epoch (fast.ai name).

        Trains from `start_lr` upwards exponentially, recording the raw
        per-batch loss, and stops when the smoothed loss passes 4x its best
        (see `kertransfer.callbacks.LRFinder`). Model weights are restored
        afterwards and every later `fit` starts with fresh optimizers, so the
        test leaves no trace. When an epoch has fewer than `min_steps` full
        batches, the ramp goes over precomputed activations several times
        (each pass reshuffled); through the body, it uses smaller batches
        instead (down to 16 images: smaller ones make the curve too noisy to
        read), so the curve has more points.

        Args:
            start_lr, end_lr: LR range of the last layer group.
            group_ratios: per-group multipliers of the LR when several groups
                train (e.g. `[1/10, 1/3, 1]`); default all equal.
            min_steps: fewest batches wanted in the ramp.
            verbose: Keras verbosity.

        Returns:
            `LRFindResult`, kept as `learn.lr_finder` until the next
            `lr_find` (fast.ai v2 keeps the finder apart from the fits) and
            as `learn.sched` until the next fit (fast.ai v0.7's
            `learn.lr_find(); learn.sched.plot(); learn.sched.plot_lr()`);
            call `.plot()` and `.suggestions()`.
        """
        n_train = len(self.data.train_labels)
        bs = self.data.batch_size
        if n_train // bs < min_steps and not self.precompute:
            bs = min(bs, max(16, n_train // min_steps))
            devices = self.distribution.devices
            bs = max(devices, bs // devices * devices)  # global: divides by the devices
        model, train, _, steps, _ = self._train_inputs(batch_size=bs, drop_last=True, seed=0)
        if steps < 2:
            raise ValueError(
                f"lr_find needs at least 2 batches of {bs} images; the "
                f"training set has {n_train}."
            )
        if isinstance(train, FeatureBatches) and steps < min_steps:
            # Precomputed activations cost next to nothing to revisit: pass
            # over them several times, each in a new order, so that a small
            # dataset still gives a ramp of `min_steps` full batches.
            rng = np.random.default_rng(1)
            index = self.data.train_index
            order = np.concatenate(
                [rng.permutation(index) for _ in range(math.ceil(min_steps / steps))]
            )
            train = FeatureBatches(train.features, train.labels, bs, indices=order, drop_last=True)
            steps = len(train)
        ratios = None
        if group_ratios is not None:
            ratios = schedules.expand_lrs(group_ratios, len(self.layer_groups))
            ratios = [ratios[i] for i in trainable_groups(self.layer_groups)]
        self._compile(model, [start_lr] * len(self.layer_groups))
        # restore=True: the finder puts back the weights and optimizer
        # variables of its start when the fit ends.
        finder = LRFinder(start_lr, end_lr, num_steps=steps, group_scales=ratios, restore=True)
        try:
            # shuffle=False: the batches shuffle themselves, seeded; Keras's
            # extra shuffle of the batch order draws from Python's global
            # generator, which distributed runs advance differently.
            model.fit(
                self.distribution.shard(train), epochs=1,
                callbacks=[*self.distribution.callbacks(), finder], verbose=verbose,
                shuffle=False,
            )
        finally:
            finder.restore_snapshot()  # Keras skips on_train_end when a fit raises
        self.lr_finder = LRFindResult(finder.lrs[: len(finder.losses)], finder.losses, finder.smoothed_losses, bs)
        self.sched = self.lr_finder  # fast.ai v0.7: `sched` is the last schedule run
        return self.lr_finder

    def fit(
        self,
        lrs,
        n_cycle,
        cycle_len=None,
        cycle_mult=1,
        callbacks=(),
        keep_best=False,
        best_baseline=None,
        stage=None,
        verbose=1,
        class_weight=None,
        backup_dir=None,
    ):
        """Trains with SGDR, one LR per layer group (fast.ai `fit`).

        Runs `sgdr_total_epochs(n_cycle, cycle_len, cycle_mult)` epochs:
        `cycle_len * (1 + m + ... + m**(n_cycle-1))`, or `n_cycle` at a
        constant LR without `cycle_len`. Each batch, each trainable group's
        LR is its base LR times the cosine-annealing factor of the cycle.

        Each epoch adds a row to `learn.history` (`history.csv` of a run):
        `epoch` (counted over all fits of the learner, from 1), `stage`,
        the epoch's logs (`loss`, `val_loss`, metrics, and
        `learning_rate_<group>`: each trained group's LR at the epoch's
        last batch, as Keras's `LearningRateScheduler` logs it), `lr` (the
        largest LR any group trained at in the epoch: the base LR at a
        restart, less later in a cycle), `precompute`, `best` and
        `seconds` (wall time from the epoch's start to the next one's, the
        first from the fit's start, the last to its end: a fit's rows add
        up to its time).

        Args:
            lrs: float (all groups), one LR per layer group (earliest first,
                e.g. `np.array([1e-4, 1e-3, 1e-2])`), or `slice(lo, hi)`.
            n_cycle: number of cycles (epochs without `cycle_len`).
            cycle_len: epochs in the first cycle, or None.
            cycle_mult: growth factor of each next cycle.
            callbacks: extra Keras callbacks.
            keep_best: restore the weights of the epoch with the lowest
                validation loss at the end.
            best_baseline: with `keep_best`, the validation loss of the
                weights the fit starts from: they compete with the epochs
                and are kept if no epoch beats them (then no row of
                `history` is marked `best`).
            stage: a name for this fit in `learn.history`.
            verbose: Keras verbosity (1: progress bar).
            class_weight: None, `"balanced"` (scikit-learn's weights
                `n / (num_classes * count_c)` from the training labels), or
                a dict `{class_index: weight}` (missing classes: 1). Scales
                each image's training loss by its class's weight (Keras
                `model.fit(class_weight=...)`); an alternative to
                `ImageClassifierData.from_paths(..., oversample=True)` for
                unbalanced classes. Single-label data only.
            backup_dir: None, or a folder where the fit backs itself up at
                the end of every epoch (`kertransfer.callbacks.FitCheckpoint`:
                weights, optimizer state, SGDR position, data order, random
                generators, best weights, epoch logs, and the state of any
                of `callbacks` with `state_dict()`/`load_state_dict()`;
                written atomically). If it holds the backup of an
                interrupted call with the same arguments, this call
                continues after its last complete epoch and ends as the
                uninterrupted fit would have; the backup is deleted when the
                fit completes. Like `keras.callbacks.BackupAndRestore`.

        Returns:
            A `kertransfer.callbacks.FitHistory`: the
            `keras.callbacks.History` of the `model.fit` call (when resumed,
            of the epochs it ran; `learn.history` has them all), whose text
            (what a notebook cell ending with `learn.fit(...)` shows) is the
            last epoch's loss and metrics.

        Raises:
            ValueError: on bad `lrs`/cycle arguments, a bad `class_weight`,
                if all is frozen, or if `backup_dir` holds the backup of a
                different fit.

        Example:

        ```python
        learn.unfreeze()
        # Killed during it? The same call again continues where it stopped.
        learn.fit(np.array([1e-4, 1e-3, 1e-2]), 3, cycle_len=1, cycle_mult=2,
                  backup_dir="runs/mine/backup")
        ```
        """
        epochs = schedules.sgdr_total_epochs(n_cycle, cycle_len, cycle_mult)
        return self._fit(
            lrs, epochs, lambda base, steps: SGDR(base, steps, cycle_len, cycle_mult),
            {"cycle_len": cycle_len, "cycle_mult": cycle_mult},
            callbacks=callbacks, keep_best=keep_best, best_baseline=best_baseline, stage=stage,
            verbose=verbose, class_weight=class_weight, backup_dir=backup_dir,
        )

    @in_scope
    def _fit(
        self, lrs, epochs, make_schedule, schedule_args, callbacks=(), keep_best=False,
        best_baseline=None, stage=None, verbose=1, class_weight=None, backup_dir=None,
    ):
        """One `model.fit` of `epochs` with fresh optimizers, the LRs set by
        `make_schedule(active_base_lrs, steps_per_epoch)` (a `StepSchedule`);
        `schedule_args` identify the schedule in a backup. See `fit`."""
        start = time.time()
        weights = resolve_class_weight(
            class_weight, self.data.train_labels, self.data.num_classes
        )
        base = schedules.expand_lrs(lrs, len(self.layer_groups))
        resumed = FitCheckpoint.read(backup_dir) if backup_dir else None
        model, train, valid, steps, _ = self._train_inputs(
            seed=resumed["fit_args"]["data_seed"] if resumed else None
        )
        active = self._compile(model, base)
        fit_args = {
            "stage": stage, "epochs": epochs, "lrs": [float(x) for x in base],
            **schedule_args, "active_groups": active,
            "precompute": self.precompute, "keep_best": bool(keep_best),
            "steps_per_epoch": steps, "data_seed": int(train.seed),
        }
        initial_epoch = 0
        if resumed:
            _check_same_fit(backup_dir, resumed["fit_args"], fit_args)
            initial_epoch = int(resumed["epoch"])
            # The data order goes on from where it was: one reshuffle per epoch done.
            for _ in range(initial_epoch):
                train.on_epoch_end()
        schedule = make_schedule([base[i] for i in active], steps)
        log = _FitLog(start)
        # Keras records into this History instead of its own (it takes the
        # one it is given); its text is the last epoch's numbers.
        hist = FitHistory(stage)
        cbs = [schedule, log, hist]
        if self.distribution.devices > 1:
            # Keras's validation would need every batch to divide by the
            # devices; this pads and trims, and runs before KeepBestWeights.
            labels = self.data.valid_labels
            cbs.insert(0, PaddedValidation(valid, labels, self._loss, self._metrics))
            valid = None
        cbs[:0] = self.distribution.callbacks()
        best = KeepBestWeights(baseline=best_baseline) if keep_best else None
        if best:
            cbs.append(best)
        cbs += list(callbacks)
        if backup_dir:
            # Callbacks with a state (the log, the best weights, any of
            # `callbacks` with `state_dict`) are backed up with the model.
            stateful = [c for c in cbs if hasattr(c, "state_dict") and hasattr(c, "load_state_dict")]
            # Last: what it saves includes everything the epoch changed.
            cbs.append(FitCheckpoint(backup_dir, fit_args, stateful=stateful))
        model.fit(
            self.distribution.shard(train), validation_data=valid, epochs=epochs, callbacks=cbs,
            initial_epoch=initial_epoch, verbose=verbose, class_weight=weights,
            shuffle=False,  # see lr_find
        )
        log.close()  # Keras's own end of the fit counts in the last epoch
        self.sched = FitRecord(schedule.lr_history, [self.group_names[i] for i in active], log.losses, steps, stage)
        first = len(self.history)
        used = np.asarray(schedule.lr_history, dtype="float64").reshape(-1, len(active))
        for e, logs in enumerate(log.epochs):
            row = {"epoch": first + e + 1, "stage": stage or "fit"}
            row.update({k: v for k, v in logs.items() if k != "seconds"})
            # The largest LR any group trained at in the epoch (a restart's
            # base LR; less later in a cosine cycle).
            epoch_lrs = used[e * steps : (e + 1) * steps]
            row["lr"] = float(epoch_lrs.max()) if epoch_lrs.size else max(base[i] for i in active)
            row["precompute"] = self.precompute
            row["best"] = bool(best and best.best_epoch == e)
            row["seconds"] = logs["seconds"]
            self.history.append(row)
        return hist


    # ------------------------------------------------------------ drivers
    def fit_sgdr(self, n_cycles, cycle_len, lr_max=1e-2, cycle_mult=2, **kwargs):
        """SGDR for `n_cycles` cycles (fastai v2 `fit_sgdr`).

        `fit(lr_max, n_cycles, cycle_len=cycle_len, cycle_mult=cycle_mult)`:
        each cycle anneals each group's LR from its base along a cosine to 0
        and restarts; the first lasts `cycle_len` epochs, each next one
        `cycle_mult` times longer (`sgdr_total_epochs(n_cycles, cycle_len,
        cycle_mult)` epochs in all).

        Args:
            n_cycles: number of cycles.
            cycle_len: epochs of the first cycle.
            lr_max: base LR: float, one per layer group, or a slice
                (default 1e-2: fast.ai lesson 1's LR for SGD with momentum).
            cycle_mult: growth factor of the cycle length (default 2, as
                fastai v2).
            **kwargs: passed to `fit` (`callbacks`, `keep_best`, `stage`,
                `verbose`, `class_weight`, `backup_dir`).

        Returns:
            The `FitHistory` of the fit (see `fit`).

        Example:

        ```python
        learn.fit_sgdr(3, 1, lr_max=slice(1e-4, 1e-2))  # 1 + 2 + 4 = 7 epochs
        ```
        """
        return self.fit(lr_max, n_cycles, cycle_len=cycle_len, cycle_mult=cycle_mult, **kwargs)

    def fit_one_cycle(self, epochs, lr_max=1e-2, pct_start=0.25, div=25.0, div_final=1e5, **kwargs):
        """Trains `epochs` epochs with the 1cycle policy (fastai v2 `fit_one_cycle`).

        Each group's LR warms up along a cosine from `lr_max / div` to
        `lr_max` over the first `pct_start` of the steps, then anneals to
        `lr_max / div_final` (`kertransfer.callbacks.OneCycle`; the momentum
        stays constant).

        Args:
            epochs: epochs of the fit.
            lr_max: maximum LR: float, one per layer group, or a slice
                (default 1e-2: fast.ai lesson 1's LR for SGD with momentum).
            pct_start: fraction of the steps spent warming up, in [0, 1).
            div: the LR starts at `lr_max / div`.
            div_final: the LR ends at `lr_max / div_final`.
            **kwargs: passed to `fit` (`callbacks`, `keep_best`, `stage`,
                `verbose`, `class_weight`, `backup_dir`).

        Returns:
            The `FitHistory` of the fit (see `fit`).

        Raises:
            ValueError: on a bad `epochs`, `pct_start` or `div`, and as `fit`.

        Example:

        ```python
        learn.fit_one_cycle(3, lr_max=slice(1e-4, 1e-2))
        ```
        """
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
            raise ValueError(f"fit_one_cycle epochs must be a positive integer. Received epochs={epochs!r}.")
        schedules.one_cycle_multiplier(0.0, pct_start, div, div_final)  # validates
        return self._fit(
            lr_max, int(epochs),
            lambda base, steps: OneCycle(base, int(epochs), steps, pct_start, div, div_final),
            {"schedule": "one_cycle", "pct_start": pct_start, "div": div, "div_final": div_final},
            **kwargs,
        )

    def fine_tune(self, epochs, base_lr=1e-2, freeze_epochs=1, lr_mult=100, pct_start=0.3, div=5.0, stage="fine_tune", **kwargs):
        """Trains the head, then everything (fastai v2 `fine_tune`).

        `freeze()`; `fit_one_cycle(freeze_epochs, base_lr, pct_start=0.99)`
        (on precomputed activations when `precompute` is on); then
        `unfreeze()` and `fit_one_cycle(epochs, slice(base_lr / 2 / lr_mult,
        base_lr / 2), pct_start=pct_start, div=div)`: the earlier groups at
        LRs geometrically lower, down to `lr_mult` times.

        Args:
            epochs: epochs with the body unfrozen.
            base_lr: LR of the head stage; the unfrozen stage's last group
                gets half of it (default 1e-2, fast.ai lesson 1's LR for SGD
                with momentum; fastai v2's 2e-3 is for Adam).
            freeze_epochs: epochs of the head alone first (0: none).
            lr_mult: ratio of the last group's LR to the first's when
                unfrozen.
            pct_start, div: of the unfrozen stage's 1cycle.
            stage: name prefix of the two stages in `learn.history`
                (`<stage>_frozen`, `<stage>_unfrozen`).
            **kwargs: passed to each `fit_one_cycle`.

        Returns:
            The `FitHistory` of the unfrozen stage (see `fit`).

        Example:

        ```python
        learn = ConvLearner.pretrained("efficientnet_lite0", data)
        learn.fine_tune(2)
        ```
        """
        if isinstance(freeze_epochs, bool) or int(freeze_epochs) != freeze_epochs or freeze_epochs < 0:
            raise ValueError(
                f"fine_tune freeze_epochs must be an integer >= 0. Received freeze_epochs={freeze_epochs!r}."
            )
        if freeze_epochs:
            self.freeze()
            self.fit_one_cycle(freeze_epochs, base_lr, pct_start=0.99, stage=f"{stage}_frozen", **kwargs)
        base_lr /= 2
        self.unfreeze()
        return self.fit_one_cycle(
            epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start, div=div,
            stage=f"{stage}_unfrozen", **kwargs,
        )
