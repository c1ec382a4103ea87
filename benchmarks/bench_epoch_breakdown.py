"""Where an unfrozen epoch goes: kertransfer's `fit` against a plain `model.fit`, batch by batch.

Issue 20 (the fastai comparison). In one process: `ConvLearner.pretrained(arch,
weights=None, precompute=False)` on the hymenoptera photos at 224 px, batch
32, as `bench_vs_fastai.py` runs it (its constants); one frozen-body epoch, `unfreeze()`,
then `--epochs` unfrozen epochs of `learn.fit([1e-5, 1e-4, 1e-3], epochs)`;
then a plain `model.fit` of the same model on the same augmented batches
(collected once into memory: the data pipeline is taken out of that side),
compiled with one `SGD(momentum=0.9)` at a constant LR, no callbacks but the
timer. A callback records each train batch's begin and end and validation's
begin and end, so every epoch splits into train steps, waits between them
(data and callbacks), and validation.

Usage (the printed table: one row per epoch, the steps' seconds in brackets):

    KERAS_BACKEND=tensorflow python benchmarks/bench_epoch_breakdown.py --arch resnet34
"""

import argparse
import os
import time

import keras
import numpy as np
from bench_vs_fastai import BATCH_SIZE
from bench_vs_fastai import DEFAULT_DATA
from bench_vs_fastai import IMAGE_SIZE
from bench_vs_fastai import KERTRANSFER_ARCHS
from bench_vs_fastai import LR


class BatchTimer(keras.callbacks.Callback):
    """Per epoch: train step seconds, seconds between steps, validation seconds."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        now = time.perf_counter()
        self.epochs.append({"start": now, "last": now, "steps": [], "waits": 0.0, "valid": 0.0})

    def on_train_batch_begin(self, batch, logs=None):
        e = self.epochs[-1]
        e["begin"] = time.perf_counter()
        e["waits"] += e["begin"] - e["last"]

    def on_train_batch_end(self, batch, logs=None):
        e = self.epochs[-1]
        e["last"] = time.perf_counter()
        e["steps"].append(e["last"] - e["begin"])

    def on_test_begin(self, logs=None):
        self.epochs[-1]["valid_begin"] = time.perf_counter()

    def on_test_end(self, logs=None):
        e = self.epochs[-1]
        e["valid"] = time.perf_counter() - e["valid_begin"]

    def on_epoch_end(self, epoch, logs=None):
        e = self.epochs[-1]
        e["seconds"] = time.perf_counter() - e["start"]


def _rows(label, timer):
    for i, e in enumerate(timer.epochs):
        steps = " ".join(f"{s:.1f}" for s in e["steps"])
        print(
            f"{label:<28} {i + 1:>5} {e['seconds']:>8.1f} {sum(e['steps']):>8.1f} "
            f"{len(e['steps']):>5} {np.median(e['steps']):>8.2f} {e['waits']:>7.1f} "
            f"{e['valid']:>7.1f}  ({steps})",
            flush=True,
        )


def _stack(batches):
    xs, ys = zip(*(batches[i] for i in range(len(batches))))
    return (
        np.concatenate([keras.ops.convert_to_numpy(x) for x in xs]),
        np.concatenate([np.asarray(y) for y in ys]),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet34", choices=sorted(KERTRANSFER_ARCHS))
    parser.add_argument("--epochs", type=int, default=2, help="unfrozen epochs per side")
    parser.add_argument("--data", default=DEFAULT_DATA, help="hymenoptera folder (train/, val/)")
    args = parser.parse_args(argv)

    from kertransfer import ConvLearner
    from kertransfer import ImageClassifierData
    from kertransfer import tfms_from_model

    name = KERTRANSFER_ARCHS[args.arch]
    tfms = tfms_from_model(name, IMAGE_SIZE)
    data = ImageClassifierData.from_paths(args.data, batch_size=BATCH_SIZE, tfms=tfms, val_name="val")
    learn = ConvLearner.pretrained(name, data, precompute=False, weights=None)
    print(
        f"# {keras.backend.backend()}, {name}, {IMAGE_SIZE} px, batch {BATCH_SIZE}, "
        f"{len(data.train_labels)} training / {len(data.valid_labels)} validation images, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'side':<28} {'epoch':>5} {'epoch s':>8} {'steps s':>8} {'steps':>5} {'median':>8} {'waits':>7} {'valid':>7}")
    timer = BatchTimer()
    learn.fit(LR, 1, callbacks=[timer], verbose=0)
    _rows("kertransfer frozen", timer)
    learn.unfreeze()
    timer = BatchTimer()
    learn.fit([LR / 100, LR / 10, LR], args.epochs, callbacks=[timer], verbose=0)
    _rows("kertransfer unfrozen", timer)

    x, y = _stack(learn.data.train_batches(augment=True, seed=0))
    valid = _stack(learn.data.valid_batches())
    model = learn.model
    model.compile(keras.optimizers.SGD(LR / 10, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = BatchTimer()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=args.epochs, validation_data=valid, callbacks=[timer], verbose=0)
    _rows("plain model.fit, unfrozen", timer)


if __name__ == "__main__":
    main()
