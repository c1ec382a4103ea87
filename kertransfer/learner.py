"""ConvLearner: the fast.ai v0.7 transfer-learning verbs on a Keras 3 model.

`ConvLearner.pretrained(arch, data)` puts fast.ai's head on a pretrained
backbone; `lr_find`, `fit` (SGDR with `cycle_len`/`cycle_mult`),
`freeze_to`/`unfreeze` with differential LRs, `precompute` and `TTA` work as
in the fast.ai course. Under the hood each `fit` is one `model.fit` with
fresh optimizers (Keras needs a recompile whenever `trainable` changes).
"""

import functools
import hashlib
import json
import logging
import math
import os
import time

import keras
import numpy as np

from kertransfer import schedules
from kertransfer.backbones import assign_layer_groups
from kertransfer.backbones import cache_dir
from kertransfer.backbones import get_backbone
from kertransfer.balance import resolve_class_weight
from kertransfer.callbacks import BatchLosses
from kertransfer.callbacks import LRFinder
from kertransfer.callbacks import SGDR
from kertransfer.callbacks import FitCheckpoint
from kertransfer.callbacks import KeepBestWeights
from kertransfer.data import FeatureBatches
from kertransfer.data.cache import load_checked
from kertransfer.data.cache import write_checksum
from kertransfer.distribute import PaddedValidation
from kertransfer.distribute import portable_config
from kertransfer.distribute import predict_padded
from kertransfer.distribute import resolve_distribution
from kertransfer.distribute import synchronize_batch_norm
from kertransfer.distribute import warn_replicated_dropout
from kertransfer.fbeta_score import SamplesFBetaScore
from kertransfer.groups import group_optimizer
from kertransfer.groups import trainable_groups
from kertransfer.layers import AdaptiveConcatPooling2D
from kertransfer.recorder import FitRecord
from kertransfer.recorder import LRFindResult
from kertransfer.tta import tta_probs

__all__ = ["ConvLearner", "sgd_momentum"]

# Bumped when the precompute cache's layout or meaning changes.
_PRECOMPUTE_FORMAT = 3

logger = logging.getLogger(__name__)


def sgd_momentum(learning_rate):
    """fast.ai v0.7's default optimizer: SGD with momentum 0.9."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)


def _head_layers(num_classes, ps, xtra_fc, activation="softmax"):
    """fast.ai's head after concat pooling: [BN, Dropout, Dense]* + output."""
    if np.ndim(ps) == 0:
        ps = [ps / 2] * len(xtra_fc) + [ps]
    if len(ps) != len(xtra_fc) + 1:
        raise ValueError(
            f"ps needs one dropout rate per dense layer ({len(xtra_fc) + 1}). "
            f"Received ps={ps}."
        )
    layers_ = []
    for i, units in enumerate(xtra_fc):
        layers_ += [
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"head_bn{i}"),
            keras.layers.Dropout(ps[i], name=f"head_drop{i}"),
            keras.layers.Dense(units, activation="relu", name=f"head_fc{i}"),
        ]
    n = len(xtra_fc)
    layers_ += [
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"head_bn{n}"),
        keras.layers.Dropout(ps[-1], name=f"head_drop{n}"),
        keras.layers.Dense(num_classes, activation=activation, name="head_out"),
    ]
    return layers_


def _apply(layers_, x):
    for layer in layers_:
        x = layer(x)
    return x


def _in_scope(method):
    """Runs a learner method inside its distribution's scope (`learn.distribution`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.distribution.scope():
            return method(self, *args, **kwargs)

    return wrapper


class _FitLog(BatchLosses):
    """Records each batch's training loss (`BatchLosses`) and each epoch's
    logs and seconds; `FitCheckpoint` saves its state."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        row = {k: float(v) for k, v in (logs or {}).items()}
        row["seconds"] = time.time() - self._start
        self.epochs.append(row)

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


class ConvLearner:
    """A pretrained CNN body with a new head, trained the fast.ai way.

    Build it with `ConvLearner.pretrained`. The model takes raw RGB pixels
    `(batch, height, width, 3)` in `[0, 255]` (preprocessing is its first
    layer) and returns class probabilities `(batch, num_classes)`.

    Attributes:
        model: the full `keras.Model`.
        data: the `ImageClassifierData`.
        layer_groups: list of lists of layers: the backbone's groups (earliest
            first), then the head.
        sched: `LRFindResult` after `lr_find`, `FitRecord` after `fit`.
        history: list of per-epoch dicts over all fits (with a `stage` key).
        distribution: the `kertransfer.distribute.Replicas` every verb runs
            under (engine, devices, processes).

    The backbone must have been built in `distribution`'s scope (as
    `pretrained` does).
    """

    def __init__(self, arch, data, backbone, ps=0.5, xtra_fc=(512,), opt_fn=sgd_momentum, weights="imagenet", distribution=None):
        spec = get_backbone(arch)
        self.arch = spec.name
        self.weights = weights
        self.distribution = resolve_distribution(distribution)
        self.distribution.check_batch_size(data.batch_size, "data.batch_size")
        self.data = data
        self.backbone = backbone
        self.opt_fn = opt_fn
        # Multi-label (fast.ai v0.7 `is_multi`): independent sigmoids.
        self.is_multi = bool(getattr(data, "is_multi", False))
        activation = "sigmoid" if self.is_multi else "softmax"
        with self.distribution.scope():
            inputs = keras.Input((None, None, 3), name="image")
            pooled = AdaptiveConcatPooling2D(name="concat_pool")(backbone(inputs))
            self.head = _head_layers(data.num_classes, ps, xtra_fc, activation)
            self.model = keras.Model(inputs, _apply(self.head, pooled), name=f"{self.arch}_classifier")
            self.body_model = keras.Model(inputs, pooled, name=f"{self.arch}_body")
            feats = keras.Input((pooled.shape[-1],), name="features")
            self.head_model = keras.Model(feats, _apply(self.head, feats), name="head")
        if self.distribution.engine == "tf.distribute" and self.distribution.devices > 1:
            synchronize_batch_norm(self.model)
            warn_replicated_dropout(self.model)
        self.layer_groups = assign_layer_groups(backbone, spec.layer_groups) + [
            [layer for layer in self.head if layer.weights]
        ]
        self.group_names = [f"group{i}" for i in range(len(self.layer_groups) - 1)] + ["head"]
        self._precompute = False
        # id(model) -> (trainable variable ids, optimizer, its fresh state).
        self._compiled = {}
        self._bn_freeze = False
        self._features = {}
        self.sched = None
        self.history = []
        self.freeze()

    @classmethod
    def pretrained(
        cls,
        arch,
        data,
        precompute=True,
        ps=0.5,
        xtra_fc=(512,),
        weights="imagenet",
        opt_fn=sgd_momentum,
        distribution=None,
    ):
        """A learner on a pretrained backbone with a new head (fast.ai name).

        Head (fast.ai v0.7 `ConvnetBuilder`): concat(global average pool,
        global max pool) -> [BatchNorm -> Dropout(ps/2) -> Dense(n, relu)]
        for each n in `xtra_fc` -> BatchNorm -> Dropout(ps) ->
        Dense(num_classes, softmax), or sigmoid when `data.is_multi`
        (multi-label: binary cross-entropy loss, samples-averaged F2
        metric `f2`, as fast.ai lesson 2 Planet). The body starts frozen;
        frozen BatchNorm layers run in inference mode.

        Args:
            arch: registered backbone name, e.g. `"efficientnet_lite0"`,
                `"resnet34"` (see `kertransfer.backbones.list_backbones()`).
            data: `ImageClassifierData`.
            precompute: train the head on cached body activations at first.
            ps: dropout rate of the last dense layer (earlier: `ps / 2`), or
                a list with one rate per dense layer.
            xtra_fc: hidden dense layer widths of the head.
            weights: `"imagenet"`, None, or a local weights file (passed to
                the backbone builder).
            opt_fn: `opt_fn(learning_rate=...) -> keras Optimizer`; default
                SGD with momentum 0.9, as fast.ai v0.7.
            distribution: None (one device, or the `keras.distribution` /
                `tf.distribute` strategy scope the caller made current),
                `"none"`, `"data_parallel"` (all devices: JAX
                `keras.distribution.DataParallel`, TensorFlow
                `MirroredStrategy`), or a distribution/strategy object; see
                `kertransfer.distribute.resolve_distribution`. Batch sizes
                stay global (`data.batch_size` images per step over all
                devices) and must divide by the device count; results match
                one device with the same batch.

        Returns:
            `ConvLearner`.

        Raises:
            ValueError: on a bad `distribution`, or a `data.batch_size` that
                does not divide by its device count.

        Example:

        ```python
        data = ImageClassifierData.from_paths("data/dogscats", image_size=224)
        learn = ConvLearner.pretrained("efficientnet_lite0", data)
        learn.lr_find(); learn.fit(1e-2, 2)
        # Every device, batches of 64 split over them (JAX or TensorFlow):
        learn = ConvLearner.pretrained("efficientnet_lite0", data, distribution="data_parallel")
        ```
        """
        spec = get_backbone(arch)
        replicas = resolve_distribution(distribution)
        replicas.check_batch_size(data.batch_size, "data.batch_size")
        with replicas.scope():
            backbone = spec.builder(weights=weights, input_shape=(None, None, 3), include_top=False)
        learn = cls(
            spec.name, data, backbone, ps=ps, xtra_fc=xtra_fc, opt_fn=opt_fn, weights=weights,
            distribution=replicas,
        )
        learn.precompute = precompute
        return learn

    # ----------------------------------------------------------- freezing
    def freeze_to(self, n):
        """Freezes layer groups `[0, n)` and unfreezes groups `[n, end)`.

        Frozen BatchNorm layers run in inference mode. The next `fit`
        recompiles with fresh optimizers, as Keras requires.

        Raises:
            ValueError: if `n` is not in `[0, len(layer_groups) - 1]` (the
                head always trains).
        """
        last = len(self.layer_groups) - 1
        if int(n) != n or not 0 <= n <= last:
            raise ValueError(
                f"freeze_to(n) takes 0 <= n <= {last} (there are "
                f"{last + 1} layer groups; the head always trains). Received n={n}."
            )
        body = len(self.layer_groups) - 1
        for i, group in enumerate(self.layer_groups):
            for layer in group:
                is_body_bn = i < body and isinstance(layer, keras.layers.BatchNormalization)
                layer.trainable = i >= n and not (self._bn_freeze and is_body_bn)
        self._frozen_to = n

    def bn_freeze(self, value=True):
        """Keeps the body's BatchNorm layers frozen, even after `unfreeze`.

        fast.ai v0.7 `learn.bn_freeze(True)`: with small batches, or data much
        like ImageNet, re-estimating BatchNorm statistics hurts; frozen, they
        keep ImageNet's statistics (inference mode) and their scale/offset.
        """
        self._bn_freeze = bool(value)
        self.freeze_to(self._frozen_to)

    def freeze(self):
        """Freezes the whole body; only the head trains (fast.ai `freeze`)."""
        self.freeze_to(len(self.layer_groups) - 1)

    def unfreeze(self):
        """Makes every layer group trainable and turns precompute off."""
        self.freeze_to(0)
        self.precompute = False

    # --------------------------------------------------------- precompute
    @property
    def precompute(self):
        """Train the head on cached body activations (no augmentation)."""
        return self._precompute

    @precompute.setter
    def precompute(self, value):
        if value and trainable_groups(self.layer_groups[:-1]):
            raise ValueError(
                "precompute=True needs a frozen body (the cached activations "
                "would go stale as it trains). Call freeze() first."
            )
        self._precompute = bool(value)

    def _body_fingerprint(self):
        digest = hashlib.sha1(f"{self.arch}|{self.weights}".encode())
        for w in self.backbone.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
        return digest.hexdigest()

    def _activations(self, split):
        """Body activations `(n, 2 * channels)` of `split`, cached on disk.

        Computed batch by batch into a memory-mapped `.npy` (written under a
        temporary name, then renamed) and read back memory-mapped, so no
        step holds all activations in RAM. The cache key covers a format
        version, the arch, the body's current weights, the image size, the
        decoder version and every file's path, size and mtime, taken before
        decoding; if a file changes while activations are computed, the
        result is used once but not cached.
        """
        key = self._activations_key(split)
        if key in self._features:
            return self._features[key]
        folder = os.path.join(cache_dir(), "precompute")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.arch}_{self.data.image_size}_{split}_{key}.npy")
        shape = (len(self.data._splits[split]), self.body_model.output_shape[-1])
        feats = load_checked(path, shape)  # None when missing or damaged (logged)
        if feats is None:
            logger.info("Precomputing %s activations -> %s", split, path)
            feats = self._compute_activations(split, path)
            if self._activations_key(split) != key:
                logger.warning(
                    "Files of the %s split changed while their activations were "
                    "computed; not caching them.", split)
                feats = np.array(feats)
                os.remove(path)
                os.remove(path + ".sum")
        self._features[key] = feats
        return feats

    def _activations_key(self, split):
        return hashlib.sha1(
            f"{_PRECOMPUTE_FORMAT}|{self._body_fingerprint()}|"
            f"{self.data.fingerprint(split)}".encode()
        ).hexdigest()[:20]

    @_in_scope
    def _compute_activations(self, split, path, chunk=8):
        """Writes the body's activations of `split` to `path`, a few batches at a time."""
        batches = self.data.fixed_batches(split)
        n = len(self.data._splits[split])
        dim = self.body_model.output_shape[-1]
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype="float32", shape=(n, dim))
        row = 0
        for start in range(0, len(batches), chunk):
            x = np.concatenate([batches[i][0] for i in range(start, min(start + chunk, len(batches)))])
            out[row : row + len(x)] = predict_padded(self.body_model, x, batch_size=batches.batch_size)
            row += len(x)
        out.flush()
        del out
        os.replace(tmp, path)
        write_checksum(path)
        return np.load(path, mmap_mode="r")

    # ---------------------------------------------------------- training
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

    @_in_scope
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
            `LRFindResult` (also kept as `learn.sched`); call `.plot()` and
            `.suggestions()`.
        """
        n_train = len(self.data.train_labels)
        bs = self.data.batch_size
        if n_train // bs < min_steps and not self.precompute:
            bs = min(bs, max(16, n_train // min_steps))
            devices = self.distribution.devices
            bs = max(devices, bs // devices * devices)  # global: divides by the devices
        model, train, _, steps, kwargs = self._train_inputs(batch_size=bs, drop_last=True, seed=0)
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
        self.sched = LRFindResult(finder.lrs[: len(finder.losses)], finder.losses, finder.smoothed_losses, bs)
        return self.sched

    @_in_scope
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
            The `keras.callbacks.History` of the `model.fit` call (when
            resumed, of the epochs it ran; `learn.history` has them all).

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
        weights = resolve_class_weight(
            class_weight, self.data.train_labels, self.data.num_classes
        )
        base = schedules.expand_lrs(lrs, len(self.layer_groups))
        resumed = FitCheckpoint.read(backup_dir) if backup_dir else None
        model, train, valid, steps, kwargs = self._train_inputs(
            seed=resumed["fit_args"]["data_seed"] if resumed else None
        )
        active = self._compile(model, base)
        fit_args = {
            "stage": stage, "epochs": epochs, "lrs": [float(x) for x in base],
            "cycle_len": cycle_len, "cycle_mult": cycle_mult, "active_groups": active,
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
        sgdr = SGDR([base[i] for i in active], steps, cycle_len, cycle_mult)
        log = _FitLog()
        cbs = [sgdr, log]
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
        hist = model.fit(
            self.distribution.shard(train), validation_data=valid, epochs=epochs, callbacks=cbs,
            initial_epoch=initial_epoch, verbose=verbose, class_weight=weights,
            shuffle=False,  # see lr_find
        )
        self.sched = FitRecord(sgdr.lr_history, [self.group_names[i] for i in active], log.losses, steps, stage)
        first = len(self.history)
        for e, logs in enumerate(log.epochs):
            row = {"epoch": first + e + 1, "stage": stage or "fit"}
            row.update({k: v for k, v in logs.items() if k != "seconds"})
            row["lr"] = max(base[i] for i in active)
            row["precompute"] = self.precompute
            row["best"] = bool(best and best.best_epoch == e)
            row["seconds"] = logs["seconds"]
            self.history.append(row)
        return hist

    # --------------------------------------------------------- inference
    @_in_scope
    def predict(self, split="valid"):
        """Probabilities on `split` with validation transforms (center crop).

        Returns:
            `(probs, targets)`: `(n, num_classes)` float array and int labels
            `(n,)`, or multi-hot float32 `(n, num_classes)` when
            `data.is_multi` (`None` for the unlabeled test split).
        """
        probs = predict_padded(self.model, self.data.fixed_batches(split))
        targets = None if split == "test" else self.data._splits[split].labels
        return probs, targets

    @_in_scope
    def TTA(self, n_aug=4, split="valid", seed=0, beta=None, return_all=False):
        """Test-time augmentation (fast.ai v0.7 `learn.TTA`).

        Averages the probabilities of the original (center-cropped) images
        and of `n_aug` augmented copies (training transforms: random crop and
        augmentation layers called with `training=True`), with the model in
        inference mode.

        Args:
            n_aug: number of augmented copies per image.
            split: "valid" or "test".
            seed: seed of the augmentation; equal seeds give equal results.
            beta: None (fast.ai v0.7: plain mean over the `n_aug + 1`
                predictions), or the weight in [0, 1] of the un-augmented
                prediction against the mean of the augmented ones (fast.ai v2
                `Learner.tta`, default there 0.25).
            return_all: return each copy's probabilities, `(n_aug + 1, n,
                num_classes)`, the original first, instead of their mean
                (fast.ai v0.7 returned this stack, as log-probabilities:
                its `np.mean(np.exp(log_preds), 0)` is `probs.mean(0)`
                here).

        Returns:
            `(probs, targets)` as in `predict`; with `return_all`, `probs`
            is `(n_aug + 1, n, num_classes)`.

        Raises:
            ValueError: on `n_aug < 0`, `beta` outside [0, 1], or `beta`
                with `n_aug=0`.
        """
        probs, targets = self.predict(split)
        blended = tta_probs(
            self.model, self.data, n_aug, split, seed, probs=probs, beta=beta, return_all=return_all
        )
        return blended, targets

    def set_data(self, data):
        """Swaps in `data` (e.g. `data.resize(299)`), keeping all weights.

        The body is fully convolutional and the head pools globally, so any
        image size works; precompute caches are per image size.

        Raises:
            ValueError: if the classes, or single- vs multi-label, differ.
        """
        if list(data.classes) != list(self.data.classes):
            raise ValueError(
                f"set_data needs the same classes. Have {self.data.classes}, "
                f"received {data.classes}."
            )
        if bool(getattr(data, "is_multi", False)) != self.is_multi:
            raise ValueError(
                "set_data needs data of the same kind: this learner is "
                f"{'multi' if self.is_multi else 'single'}-label (is_multi="
                f"{self.is_multi}), the new data is not."
            )
        self.distribution.check_batch_size(data.batch_size, "data.batch_size")
        self.data = data

    # ------------------------------------------------------------ saving
    def save(self, path):
        """Saves the model as a `.keras` file (architecture + weights).

        Args:
            path: file path; `.keras` is appended when missing.

        Returns:
            The path written.
        """
        path = os.fspath(path)
        if not path.endswith(".keras"):
            path += ".keras"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Without the optimizer: every fit starts fresh optimizers (fast.ai),
        # and its state would double or triple the file (one momentum per
        # group) for TF Serving / LiteRT export, which never uses it.
        # (`clone_model` would copy the compiled optimizer too.)
        # `portable_config`: a BatchNorm synchronized for MirroredStrategy
        # would not load on JAX or torch.
        clean = keras.Model.from_config(portable_config(self.model.get_config()))
        clean.set_weights(self.model.get_weights())
        clean.save(path)
        return path

    def load(self, path):
        """Loads weights saved by `save` into this learner's model.

        Raises:
            FileNotFoundError: if `path` (or `path + ".keras"`) is missing.
        """
        path = os.fspath(path)
        if not path.endswith(".keras"):
            path += ".keras"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No saved model at {path}.")
        saved = keras.saving.load_model(path, compile=False)
        with self.distribution.scope():
            self.model.set_weights(saved.get_weights())
