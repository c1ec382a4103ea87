"""Plain `model.fit` on one process, or on several `torch.distributed` (gloo) processes.

`tests/test_distribute.py` runs it under KERAS_BACKEND=torch:

    python tests/torch_gradient_average.py OUT.npz                  # one process
    python tests/torch_gradient_average.py OUT.npz I N 127.0.0.1:PORT  # process I of N

A small CNN without BatchNorm (whose statistics are per process under
torch.distributed, as with DDP) trains 3 epochs with two parameter groups
(`group_optimizer`, a `MultiOptimizer`) under SGDR with per-batch LRs and
`cycle_mult=2`, on a global batch of 16. With several processes each fits
its slice of every batch (`Replicas.shard`), the gradients are averaged
(`Replicas.prepare_optimizer`) and the logs too (`Replicas.callbacks`).
OUT.npz gets the final weights, the per-batch logged losses and
`BatchLosses`' per-batch losses, the process
count and the largest weight change.
"""

import os
import sys

import numpy as np


def main(argv):
    out = argv[0]
    if len(argv) > 1:
        import torch.distributed as dist

        index, count, address = int(argv[1]), int(argv[2]), argv[3]
        dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=index, world_size=count)
    import keras

    from kertransfer.callbacks import SGDR
    from kertransfer.callbacks import BatchLosses
    from kertransfer.distribute import resolve_distribution
    from kertransfer.groups import group_optimizer
    from kertransfer.no_tensorflow import set_seed

    replicas = resolve_distribution("data_parallel" if len(argv) > 1 else "none")
    set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 12, 12, 3)).astype("float32")
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype("int32")

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)]

    conv = keras.layers.Conv2D(8, 3, activation="relu")
    dense = keras.layers.Dense(2, activation="softmax")
    inputs = keras.Input((12, 12, 3))
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(conv(inputs))))
    optimizer, _ = group_optimizer(
        [[conv], [dense]], lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9), [0.05, 0.5]
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    optimizer.build(model.trainable_variables)
    replicas.prepare_optimizer(optimizer)
    start = model.get_weights()
    losses = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(logs["loss"]))
    batch_losses = BatchLosses()  # from the loss tracker, not the logs
    callbacks = [*replicas.callbacks(), SGDR([0.05, 0.5], 4, cycle_len=1, cycle_mult=2), record, batch_losses]
    model.fit(replicas.shard(Batches()), epochs=3, callbacks=callbacks, verbose=0, shuffle=False)
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    change = max(float(np.abs(w - s).max()) for w, s in zip(model.get_weights(), start))
    np.savez(out, losses=np.array(losses), batch_losses=np.array(batch_losses.losses), processes=replicas.processes, change=change, **weights)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])
