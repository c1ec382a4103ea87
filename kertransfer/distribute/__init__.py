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

Modules: `replicas` (`Replicas`, `resolve_distribution`: which engine,
devices and processes), `torch_engine` (gradient averaging and
`TorchDataParallel` under `torch.distributed`), `batches` (batch slices and
padding), `prediction` (`predict_padded`, `PaddedValidation`), `layers`
(synchronised BatchNorm, portable configs, the dropout warning).

Source: Keras 3 distribution guide
(https://keras.io/guides/distribution/) and `tf.distribute` guide
(https://www.tensorflow.org/guide/distributed_training).
"""

from kertransfer.distribute.layers import portable_config
from kertransfer.distribute.layers import synchronize_batch_norm
from kertransfer.distribute.layers import warn_replicated_dropout
from kertransfer.distribute.prediction import PaddedValidation
from kertransfer.distribute.prediction import predict_padded
from kertransfer.distribute.replicas import DISTRIBUTIONS
from kertransfer.distribute.replicas import Replicas
from kertransfer.distribute.replicas import replica_count
from kertransfer.distribute.replicas import resolve_distribution
from kertransfer.distribute.torch_engine import TorchDataParallel
from kertransfer.distribute.torch_engine import all_reduce_gradients

__all__ = [
    "DISTRIBUTIONS",
    "PaddedValidation",
    "Replicas",
    "TorchDataParallel",
    "all_reduce_gradients",
    "portable_config",
    "predict_padded",
    "replica_count",
    "resolve_distribution",
    "synchronize_batch_norm",
    "warn_replicated_dropout",
]
