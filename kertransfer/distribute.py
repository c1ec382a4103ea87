"""Data parallelism through the engines Keras already has.

One switch, `distribution="data_parallel"` (`kertransfer train --distribute
data_parallel`), picks the backend's own engine; kertransfer adds no
distribution layer of its own:

- JAX: `keras.distribution.DataParallel` over every device
  (`keras.distribution.list_devices()`): variables replicated, each batch
  split along its first axis.
- TensorFlow: `tf.distribute.MirroredStrategy` over the local GPUs, or all
  logical CPU devices when there is no GPU. BatchNorm layers are switched
  to `synchronized=True`, so their batch statistics are those of the whole
  batch, as on one device.
- torch: Keras 3.15 has no `keras.distribution` for torch. Under
  `torch.distributed` (one process per device, started by `torchrun`, which
  sets `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`; the process
  group is initialised here if the launcher did not), each process trains
  its own copy of the model on its slice of every batch and the gradients
  are averaged over the processes (`all_reduce`) before each optimizer
  step, as `DistributedDataParallel` does; logged losses and metrics are
  averaged too, and BatchNorm moving statistics are broadcast from process
  0 after each batch (DDP's `broadcast_buffers`). Predictions run whole on
  every process (identical copies). As with DDP without `SyncBatchNorm`,
  BatchNorm layers that train normalise with their process's slice's
  statistics, so results differ from one device's unless none trains.
  Outside `torch.distributed` an error names the supported ways.
- Several processes (hosts), JAX: `keras.distribution.initialize()` joins
  them (`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES`,
  `KERAS_DISTRIBUTION_PROCESS_ID`; `resolve_distribution("data_parallel")`
  calls it when these are set), and `DataParallel` spans every device of
  every process. Each process feeds its own slice of every global batch
  (`Replicas.shard`; the distribution's `auto_shard_dataset` is off) and
  predictions are gathered back on every process (`predict_padded`), so
  every process holds the same weights and outputs; only process 0 writes
  files (`Replicas.is_chief`). TensorFlow's `MultiWorkerMirroredStrategy`
  is refused with a clear error for now.

Batch sizes are global: a batch of 32 on 4 devices is 8 images per device,
and the results match one device with the same batch. Every batch must
therefore divide by the device count: `predict_padded` pads the short last
batch of predictions (evaluation, precompute, TTA) and trims the outputs;
training batches are cut to a multiple of the device count
(`ImageBatches(batch_multiple=...)`), and validation runs through
`PaddedValidation` instead of Keras's own (which would weigh the padding).

Source: Keras 3 distribution guide
(https://keras.io/guides/distribution/) and `tf.distribute` guide
(https://www.tensorflow.org/guide/distributed_training).
"""

import contextlib
import math
import os
import warnings

import keras
import numpy as np

__all__ = [
    "DISTRIBUTIONS",
    "PaddedValidation",
    "Replicas",
    "portable_config",
    "predict_padded",
    "replica_count",
    "resolve_distribution",
]

DISTRIBUTIONS = ("none", "data_parallel")

_HOW = (
    "Use distribution='data_parallel' (`kertransfer train --distribute "
    "data_parallel`) with KERAS_BACKEND=jax (keras.distribution.DataParallel) "
    "or KERAS_BACKEND=tensorflow (tf.distribute.MirroredStrategy), or with "
    "KERAS_BACKEND=torch under torch.distributed (start one process per device "
    "with `torchrun --nproc-per-node N`), or distribution='none' for one device."
)


class Replicas:
    """How a learner spreads its batches over devices.

    Made by `resolve_distribution`; `ConvLearner` runs every verb (building,
    compiling, fitting, predicting) inside `scope()`.

    Args:
        engine: `"none"` (one device), `"keras.distribution"` (JAX),
            `"tf.distribute"` (TensorFlow) or `"torch.distributed"`.
        devices: devices each global batch is split over (1 for `"none"`).
        processes: processes taking part (1 on one machine); `devices`
            counts the devices of all of them.
        handle: the `keras.distribution.Distribution` or
            `tf.distribute.Strategy`, or None.
        process_index: this process's index among `processes` (0-based).

    Attributes:
        engine, devices, processes, handle, process_index: as given.
    """

    def __init__(
        self, engine="none", devices=1, processes=1, handle=None, process_index=0
    ):
        self.engine = engine
        self.devices = int(devices)
        self.processes = int(processes)
        self.handle = handle
        self.process_index = int(process_index)

    def __repr__(self):
        return f"Replicas(engine={self.engine!r}, devices={self.devices}, processes={self.processes})"

    @property
    def is_chief(self):
        """True in the process that writes files (process 0; the only one on one host)."""
        return self.process_index == 0

    def callbacks(self):
        """Callbacks a fit needs under this distribution, to put first (`TorchDataParallel` on torch)."""
        return (
            [TorchDataParallel()]
            if self.engine == "torch.distributed" and self.processes > 1
            else []
        )

    def prepare_optimizer(self, optimizer):
        """`optimizer`, made to average gradients over the processes on torch."""
        if self.engine == "torch.distributed" and self.processes > 1:
            return all_reduce_gradients(optimizer)
        return optimizer

    def shard(self, batches):
        """This process's slice of every batch of `batches` (a `PyDataset`).

        With one process, `batches` itself. With `P` processes, process `p`
        gets rows `[p * b / P, (p + 1) * b / P)` of each batch of `b` rows
        (`b` divides by the devices, hence by `P`): what
        `jax.make_array_from_process_local_data` expects, so the global
        batch the model trains on is the one-process batch.
        """
        if self.processes == 1:
            return batches
        return _ProcessSlices(batches, self.process_index, self.processes)

    def scope(self):
        """A context manager making this distribution current (no-op for one device)."""
        if self.handle is None:
            return contextlib.nullcontext()
        return self.handle.scope()

    def check_batch_size(self, batch_size, name="batch_size"):
        """Raises a clear error when `batch_size` does not divide by the devices.

        Raises:
            ValueError: if `batch_size % devices != 0`.
        """
        if int(batch_size) % self.devices:
            lower = max(self.devices, int(batch_size) // self.devices * self.devices)
            raise ValueError(
                f"{name}={batch_size} is the global batch size and must divide by "
                f"the {self.devices} devices of the {self.engine} distribution (each "
                f"device takes an equal share). Use {name}={lower} or "
                f"{lower + self.devices}."
            )

    def to_dict(self, batch_size):
        """`{"engine", "devices", "processes", "global_batch_size", "per_device_batch_size"}`."""
        return {
            "engine": self.engine,
            "devices": self.devices,
            "processes": self.processes,
            "global_batch_size": int(batch_size),
            "per_device_batch_size": int(batch_size) // self.devices,
        }


def _batch_axis_size(dist):
    mesh = dist.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(dist.batch_dim_name)])


def _from_keras_distribution(dist):
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"keras.distribution runs on JAX only in Keras {keras.__version__} (the "
            f"backend is {backend}). {_HOW}"
        )
    import jax

    if jax.process_count() > 1 and dist.auto_shard_dataset:
        # Keras would shard only tf.data datasets; kertransfer's batches are
        # PyDatasets that each process slices itself (`Replicas.shard`).
        raise ValueError(
            f"This distribution spans {jax.process_count()} processes and has "
            "auto_shard_dataset=True; kertransfer feeds each process its own slice "
            "of every batch. Create it with keras.distribution.DataParallel("
            "auto_shard_dataset=False), or pass distribution='data_parallel'."
        )
    return Replicas(
        "keras.distribution",
        _batch_axis_size(dist),
        jax.process_count(),
        dist,
        process_index=jax.process_index(),
    )


_PROCESS_ENV = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def _join_processes():
    """Calls `keras.distribution.initialize()` when its variables ask for several processes.

    Must run before JAX computes anything; a second call (already joined) is
    a no-op.
    """
    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1) <= 1:
        return
    import jax

    if jax.distributed.is_initialized():
        return
    missing = [name for name in _PROCESS_ENV if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"KERAS_DISTRIBUTION_NUM_PROCESSES={os.environ['KERAS_DISTRIBUTION_NUM_PROCESSES']} "
            f"asks for several processes, but {', '.join(missing)} is not set. Set all "
            f"of {', '.join(_PROCESS_ENV)} (the same addresses on every process, "
            "process 0's first), or unset them for one process."
        )
    keras.distribution.initialize()


def _from_strategy(strategy):
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"A tf.distribute strategy needs KERAS_BACKEND=tensorflow (the backend "
            f"is {keras.backend.backend()}). {_HOW}"
        )
    resolver = getattr(strategy, "cluster_resolver", None)
    workers = 1
    if resolver is not None:
        workers = max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))
    if workers > 1:
        raise ValueError(
            f"This strategy spans {workers} workers: kertransfer trains on several "
            "processes with JAX only so far (KERAS_BACKEND=jax, "
            "keras.distribution.initialize()). On TensorFlow use MirroredStrategy over "
            "one host's devices (distribution='data_parallel')."
        )
    return Replicas("tf.distribute", strategy.num_replicas_in_sync, workers, strategy)


def _from_torch_distributed():
    """`Replicas` over the `torch.distributed` process group (initialised from torchrun's variables)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if (
            int(os.environ.get("WORLD_SIZE", "0") or 0) < 1
            or "MASTER_ADDR" not in os.environ
        ):
            raise ValueError(
                f"distribution='data_parallel' on the torch backend needs "
                f"torch.distributed: Keras {keras.__version__} has no "
                f"keras.distribution for torch. {_HOW}"
            )
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    world = dist.get_world_size()
    return Replicas(
        "torch.distributed", world, world, None, process_index=dist.get_rank()
    )


def all_reduce_gradients(optimizer):
    """Makes `optimizer` average its gradients over the `torch.distributed` processes.

    Keras's torch train step computes each process's gradients on its slice
    of the batch and calls `optimizer.apply(gradients, variables)`; this
    wraps `apply` so that the gradients are first summed over the processes
    in one `all_reduce` (flattened together, as `DistributedDataParallel`'s
    buckets) and divided by their number: every process then takes the
    step one device would take with the whole batch. Idempotent.
    """
    if getattr(optimizer, "_kertransfer_all_reduce", False):
        return optimizer
    import torch
    import torch.distributed as dist

    inner = optimizer.apply

    def apply(grads, trainable_variables=None):
        present = [g for g in grads if g is not None]
        if present:
            flat = torch.cat([g.reshape(-1) for g in present])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            _unflatten(flat, present)
        return inner(grads, trainable_variables)

    optimizer.apply = apply
    optimizer._kertransfer_all_reduce = True
    return optimizer


class TorchDataParallel(keras.callbacks.Callback):
    """Keeps the `torch.distributed` processes of a fit in step, as `DistributedDataParallel` does.

    After each training batch:

    - the model's non-trainable variables (BatchNorm moving statistics,
      computed by each process on its slice) are broadcast from process 0,
      as DDP's `broadcast_buffers=True` does, so every process holds the
      same model and predicts alike;
    - the compiled metrics' variables (the loss tracker's and each metric's
      running `total` and `count`) get every process's increments of the
      batch (one `all_reduce` of the increments), so they hold the whole
      batch's sums, and the batch logs are refreshed from them: `loss` and
      the metrics are those of the global batch on every process, and
      `LRFinder`, `BatchLosses`, `SGDR`, `KeepBestWeights` and the progress
      bar see the same values everywhere. (Metrics whose state is not a
      sum of per-batch increments would need their own reduction; Keras's
      mean-based metrics and losses are sums.)

    Place it first in the callback list.
    """

    def __init__(self):
        super().__init__()
        self._synced = None  # the metric states after the last batch's sync

    def on_epoch_begin(self, epoch, logs=None):
        self._synced = None  # Keras resets the metrics each epoch

    def on_train_batch_end(self, batch, logs=None):
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            buffers = [v.value for v in self.model.non_trainable_variables]
            if buffers:
                flat = _flatten(buffers)
                dist.broadcast(flat, src=0)
                _unflatten(flat, buffers)
            states = [v.value for v in self.model.metrics_variables]
            if states:
                flat = _flatten(states)
                synced = (
                    torch.zeros_like(flat) if self._synced is None else self._synced
                )
                increments = flat - synced
                dist.all_reduce(increments)
                self._synced = synced + increments
                _unflatten(self._synced, states)
        if logs is not None:
            for name, value in self.model.get_metrics_result().items():
                if name in logs:
                    logs[name] = float(keras.ops.convert_to_numpy(value))


def _flatten(tensors):
    """One float64 vector of `tensors` (float64 holds float32 and 32-bit integers exactly)."""
    import torch

    return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])


def _unflatten(flat, tensors):
    """Copies consecutive pieces of `flat` into `tensors`, in place."""
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()


def _ambient():
    """The user's current `keras.distribution` (JAX) or strategy scope (TF), or None."""
    backend = keras.backend.backend()
    dist = keras.distribution.distribution()
    if dist is not None:
        return _from_keras_distribution(dist)
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy():
            return _from_strategy(tf.distribute.get_strategy())
    return None


def _is_keras_distribution(value):
    # keras.distribution exports DataParallel and ModelParallel, not their base.
    return hasattr(value, "device_mesh") and hasattr(value, "batch_dim_name")


def _is_strategy(value):
    return hasattr(value, "num_replicas_in_sync") and hasattr(value, "scope")


def resolve_distribution(distribution=None):
    """The `Replicas` for a `distribution` argument.

    Args:
        distribution: one of
            - None: the distribution the user made current, if any (JAX:
              `keras.distribution.set_distribution(...)` or its `scope()`;
              TensorFlow: inside `strategy.scope()`), else one device;
            - `"none"`: one device;
            - `"data_parallel"`: JAX `keras.distribution.DataParallel()` over
              all devices; TensorFlow `tf.distribute.MirroredStrategy` over
              the local GPUs, or all logical CPUs without a GPU;
            - a `keras.distribution.Distribution` (JAX) or a
              `tf.distribute.Strategy` (TensorFlow);
            - a `Replicas` (returned as is).

    Returns:
        `Replicas`.

    Raises:
        ValueError: on an unknown value, `"data_parallel"` on torch, a
            `keras.distribution` off JAX or over several processes (not
            supported yet), a strategy off TensorFlow, or `"none"` while a
            distribution is current.

    Example:

    ```python
    replicas = resolve_distribution("data_parallel")  # JAX_NUM_CPU_DEVICES=2
    replicas.devices  # 2
    ```
    """
    if isinstance(distribution, Replicas):
        return distribution
    if distribution is None:
        return _ambient() or Replicas()
    if _is_keras_distribution(distribution):
        return _from_keras_distribution(distribution)
    if _is_strategy(distribution):
        return _from_strategy(distribution)
    if distribution == "none":
        ambient = _ambient()
        if ambient is not None:
            raise ValueError(
                f"distribution='none' asks for one device, but a distribution is "
                f"current ({ambient}). Pass distribution=None to use it, or leave "
                "its scope."
            )
        return Replicas()
    if distribution == "data_parallel":
        backend = keras.backend.backend()
        if backend == "jax":
            _join_processes()
            import jax

            return _from_keras_distribution(
                keras.distribution.DataParallel(
                    auto_shard_dataset=jax.process_count() == 1
                )
            )
        if backend == "tensorflow":
            import tensorflow as tf

            devices = tf.config.list_logical_devices(
                "GPU"
            ) or tf.config.list_logical_devices("CPU")
            return _from_strategy(
                tf.distribute.MirroredStrategy([d.name for d in devices])
            )
        if backend == "torch":
            return _from_torch_distributed()
        raise ValueError(
            f"distribution='data_parallel' is not available on the {backend} "
            f"backend: Keras {keras.__version__} has no keras.distribution for it. "
            f"{_HOW}"
        )
    raise ValueError(
        f"distribution must be one of {DISTRIBUTIONS}, None (use the current "
        "keras.distribution or tf.distribute scope), a keras.distribution."
        "Distribution or a tf.distribute.Strategy. Received "
        f"distribution={distribution!r}."
    )


def synchronize_batch_norm(model):
    """Makes every BatchNormalization layer of `model` use the global batch's statistics.

    TensorFlow's `MirroredStrategy` otherwise normalises each device's share
    with its own mean and variance. Keras reads `layer.synchronized` at call
    time, so this works on built layers. `portable_config` undoes it in
    saved configs (JAX and torch refuse `synchronized=True`).
    """
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _layers(model):
    stack = [model]
    while stack:
        layer = stack.pop()
        yield layer
        stack.extend(getattr(layer, "layers", []))


def warn_replicated_dropout(model):
    """Warns when `model` has dropout and trains under `MirroredStrategy`.

    Keras 3 (TensorFlow backend) seeds dropout from the layer's
    `SeedGenerator`, whose state is the same on every replica, so each
    device draws the same mask for its share of the batch: training stays
    unbiased, but the masks of rows `i` and `i + batch / devices` are equal,
    and results differ from one device. JAX `DataParallel` draws one mask
    for the global batch and matches one device.
    """
    rates = [
        layer.rate
        for layer in _layers(model)
        if isinstance(layer, keras.layers.Dropout) and layer.rate > 0
    ]
    if rates:
        warnings.warn(
            f"{len(rates)} Dropout layer(s) with rate > 0 under tf.distribute: Keras "
            "draws the same dropout mask on every replica (for its share of the "
            "batch), so training is not identical to one device (it stays "
            "unbiased). For identical results use KERAS_BACKEND=jax, or ps=0.",
            stacklevel=3,
        )


def portable_config(config):
    """A copy of a model config with `synchronized=False` on every BatchNormalization.

    A `.keras` file whose BatchNorm layers say `synchronized=True` (set for
    `MirroredStrategy`) does not load on JAX or torch; the flag only changes
    how training statistics are gathered across devices, never the weights.
    """
    if isinstance(config, dict):
        out = {k: portable_config(v) for k, v in config.items()}
        if out.get("class_name") == "BatchNormalization" and isinstance(
            out.get("config"), dict
        ):
            out["config"]["synchronized"] = False
        return out
    if isinstance(config, list):
        return [portable_config(v) for v in config]
    return config


def replica_count(model=None):
    """Devices each batch is split over in the current context (1 if none).

    JAX: the batch axis of the current `keras.distribution` (every process's
    devices); TensorFlow: the replicas of `model.distribute_strategy` (the
    strategy it was built under), or of the current strategy.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        dist = keras.distribution.distribution()
        return 1 if dist is None else _batch_axis_size(dist)
    if backend == "tensorflow":
        strategy = getattr(model, "distribute_strategy", None)
        if strategy is None:
            import tensorflow as tf

            strategy = tf.distribute.get_strategy()
        return int(strategy.num_replicas_in_sync)
    return 1


def _process_share():
    """`(index, count)` of this process among those sharing the current distribution."""
    if (
        keras.backend.backend() == "jax"
        and keras.distribution.distribution() is not None
    ):
        import jax

        return jax.process_index(), jax.process_count()
    return 0, 1


def _slice(x, index, count):
    """Rows `[index * n / count, (index + 1) * n / count)` of `x` (`n` divides by `count`)."""
    share = len(x) // count
    return x[index * share : (index + 1) * share]


class _BatchesView(keras.utils.PyDataset):
    """A `PyDataset` made from the batches of another, with its worker settings."""

    def __init__(self, batches):
        super().__init__(
            workers=getattr(batches, "workers", 1),
            use_multiprocessing=False,
            max_queue_size=getattr(batches, "max_queue_size", 10),
        )
        self.batches = batches

    def __len__(self):
        return len(self.batches)


class _ProcessSlices(_BatchesView):
    """Process `index`'s slice of every batch of `batches` (see `Replicas.shard`)."""

    def __init__(self, batches, index, count):
        super().__init__(batches)
        self.index = index
        self.count = count

    def __getitem__(self, index):
        if hasattr(self.batches, "process_slice"):  # decodes only this slice's images
            return self.batches.process_slice(index, self.index, self.count)[0]
        item = self.batches[index]
        if len(item[0]) % self.count:
            raise ValueError(
                f"Batch {index} has {len(item[0])} rows, which do not divide by the "
                f"{self.count} processes; cut batches to a multiple of the device "
                "count (ImageBatches(batch_multiple=...))."
            )
        return tuple(
            None if part is None else _slice(part, self.index, self.count)
            for part in item
        )

    def on_epoch_end(self):
        self.batches.on_epoch_end()


class _PaddedBatches(_BatchesView):
    """The inputs of `batches`, each batch padded to a multiple of `multiple` rows.

    With several processes, each gets its slice of every padded batch.
    """

    def __init__(self, batches, multiple, process=(0, 1)):
        super().__init__(batches)
        self.multiple = multiple
        self.process = process
        self.sizes = {}

    def __getitem__(self, index):
        if getattr(
            self.batches, "per_image_seeds", False
        ):  # decodes only this slice's images
            item, self.sizes[index] = self.batches.process_slice(
                index, *self.process, self.multiple
            )
            return (item[0],)
        x = np.asarray(self.batches[index][0])
        self.sizes[index] = len(x)
        return (_slice(_pad(x, self.multiple), *self.process),)


class _ArrayBatches(keras.utils.PyDataset):
    """Batches of `batch_size` rows of an array, as `(x,)` items."""

    def __init__(self, x, batch_size):
        super().__init__()
        self.x = x
        self.batch_size = int(batch_size)

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        return (self.x[index * self.batch_size : (index + 1) * self.batch_size],)


def _pad(x, multiple):
    """`x` with its last row repeated up to a multiple of `multiple` rows."""
    pad = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x


@contextlib.contextmanager
def _gathered_predictions(model):
    """Makes `model.predict` return every process's rows on every process.

    Under a distribution over several processes the predictions of a batch
    are one global array whose rows live on other hosts too; NumPy cannot
    read it ("spans non-addressable devices"). The model's predict step is
    wrapped so that each batch's outputs are gathered
    (`jax.experimental.multihost_utils.process_allgather`) before Keras
    concatenates them.
    """
    from jax.experimental import multihost_utils

    model.make_predict_function()
    inner = model.predict_function

    def gathered(state, iterator):
        outputs, state = inner(state, iterator)
        outputs = keras.tree.map_structure(
            lambda out: multihost_utils.process_allgather(out, tiled=True), outputs
        )
        return outputs, state

    model.predict_function = gathered
    try:
        yield
    finally:
        model.predict_function = inner


def predict_padded(model, x, batch_size=None):
    """`model.predict` that works whatever the device count: pads, then trims.

    Under a distribution every batch must divide by the device count
    (JAX raises `IndivisibleError`). Each batch is padded with copies of its
    last row to a multiple of `replica_count(model)` and the padding's
    outputs are dropped, so the result equals one device's. With several
    processes each feeds its slice of every padded batch and gets back the
    whole: every process returns all `n` rows. Outside a distribution this
    is plain `model.predict`.

    Args:
        model: a `keras.Model`.
        x: a numpy array `(n, ...)`, or a `keras.utils.PyDataset` whose items
            start with the inputs (`(x,)` or `(x, y)`).
        batch_size: with an array, rows per batch (a multiple of the device
            count; default 32 rounded up to one).

    Returns:
        numpy array `(n, ...)`: the model's outputs, in input order.

    Raises:
        ValueError: if `batch_size` does not divide by the device count.
    """
    multiple = replica_count(model)
    if multiple == 1:
        return model.predict(x, batch_size=batch_size, verbose=0)
    process = _process_share()
    if not isinstance(x, keras.utils.PyDataset):
        if batch_size is None:
            batch_size = -(-32 // multiple) * multiple
        Replicas(devices=multiple).check_batch_size(batch_size)
        if process[1] == 1:
            x = np.asarray(x)
            return model.predict(_pad(x, multiple), batch_size=batch_size, verbose=0)[
                : len(x)
            ]
        x = _ArrayBatches(np.asarray(x), batch_size)
    padded = _PaddedBatches(x, multiple, process)
    with _gathered_predictions(model) if process[1] > 1 else contextlib.nullcontext():
        out = model.predict(padded, verbose=0)
    parts, row = [], 0
    for index in range(len(padded)):
        size = padded.sizes[index]
        parts.append(out[row : row + size])
        row += size + (-size % multiple)
    return np.concatenate(parts)


class PaddedValidation(keras.callbacks.Callback):
    """Validation at each epoch's end through `predict_padded`.

    Under a distribution Keras's own validation fails on a batch that does
    not divide by the device count, and padding it with zero-weight rows
    would still shift the loss (Keras divides by the padded batch size).
    This callback predicts the validation set (padded, then trimmed) and
    adds `val_loss` and `val_<metric>` to the epoch's logs, before
    `KeepBestWeights`, `History` and the progress bar read them. Place it
    first in the callback list.

    Args:
        batches: the validation `PyDataset` of `(x, y)`.
        labels: the validation labels, `(n,)` or `(n, num_classes)`.
        loss: a Keras loss (name or object) on `(labels, probabilities)`.
        metrics: callable returning fresh Keras metric objects (their
            `name` gives the log key `val_<name>`).
    """

    def __init__(self, batches, labels, loss, metrics):
        super().__init__()
        self.batches = batches
        self.labels = np.asarray(labels)
        self.loss = keras.losses.get(loss)
        self.metrics = metrics

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probs = predict_padded(self.model, self.batches)
        loss = self.loss(self.labels, probs)
        logs["val_loss"] = float(keras.ops.convert_to_numpy(keras.ops.mean(loss)))
        for metric in self.metrics():
            metric.update_state(self.labels, probs)
            logs[f"val_{metric.name}"] = float(
                keras.ops.convert_to_numpy(metric.result())
            )
