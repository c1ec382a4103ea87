"""Which devices and processes a learner runs on: `Replicas` and how it is resolved.

`resolve_distribution` turns the `distribution` argument (None, `"none"`,
`"data_parallel"`, a `keras.distribution.Distribution`, a
`tf.distribute.Strategy`) into a `Replicas`: the backend's own engine
(`keras.distribution` on JAX, `tf.distribute` on TensorFlow,
`torch.distributed` on torch), its device and process counts, and what a
fit needs under it (scope, batch slices, torch's gradient averaging).
`replica_count` reads the device count of the current context. See
`kertransfer.distribute` for the whole picture.
"""

import contextlib
import os

import keras

from kertransfer.distribute.batches import ProcessSlices
from kertransfer.distribute.torch_engine import TorchDataParallel
from kertransfer.distribute.torch_engine import all_reduce_gradients

__all__ = ["DISTRIBUTIONS", "Replicas", "replica_count", "resolve_distribution"]

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
        return ProcessSlices(batches, self.process_index, self.processes)

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


