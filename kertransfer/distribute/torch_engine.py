"""Data parallelism on torch: `torch.distributed`, as `DistributedDataParallel` does it.

Keras 3.15 has no `keras.distribution` for torch; under `torch.distributed`
each process trains its own copy of the model on its slice of every batch.
`all_reduce_gradients` averages the gradients over the processes before
each optimizer step; `TorchDataParallel` keeps the processes' BatchNorm
statistics and logged metrics in step. `Replicas.prepare_optimizer` and
`Replicas.callbacks` put them in place.
"""

import keras

__all__ = ["TorchDataParallel", "all_reduce_gradients"]


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
