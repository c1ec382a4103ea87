"""Input pipeline vs training step throughput on this CPU.

Is the input pipeline fast enough to keep the model busy? This measures, at
`--size` px and batch `--batch` under the current Keras backend
(`KERAS_BACKEND`):

- pipeline: images/s of `ImageBatches` alone (images already decoded and
  cached in memory, as `ImageClassifierData` keeps them; training transforms:
  random crop, fast.ai side-on augmentation, `max_zoom=1.1`), batches
  produced one after another in this process; then its two parts apart:
  the workers' (crop to uint8, draw the augmentation's parameters) and the
  device's (cast to float32, augmentation layers, compiled);
- train step: images/s of `train_on_batch` of the full EfficientNet-Lite0
  classifier with fast.ai's head, every layer group unfrozen (the slowest
  stage of the fast.ai recipe), SGD with momentum.

The ratio pipeline / train step should be >= 3, so that even with the
augmentation competing for the same cores the model, not the data, sets the
pace. Weights are random (`weights=None`): throughput does not depend on
them. Timings on a shared machine are noisy; compare ratios, not absolutes.

Usage:

    KERAS_BACKEND=jax python benchmarks/bench_pipeline.py
    KERAS_BACKEND=torch python benchmarks/bench_pipeline.py --batches 4 --steps 3
    python benchmarks/bench_pipeline.py --data ../shared/data/hymenoptera
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from kertransfer.data import ImageClassifierData  # noqa: E402
from kertransfer.learner import ConvLearner  # noqa: E402
from kertransfer.transforms import tfms_from_model  # noqa: E402
from kertransfer.transforms import transforms_side_on  # noqa: E402

DEFAULT_DATA = os.path.join(
    os.environ.get("KERTRANSFER_DATA")
    or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
    "hymenoptera",
)


def bench_pipeline(data, batch, batches, warmup):
    """Images/s of augmented training batches (decode already cached): the
    whole batch, then its two parts, the workers' (crop to uint8, draw the
    augmentation's parameters) and the device's (cast, augmentation)."""
    import keras

    stream = data.train_batches(seed=0, batch_size=batch, drop_last=True)
    if len(stream) < warmup + batches:
        raise ValueError(
            f"The data has {len(stream)} batches of {batch}; need "
            f"{warmup + batches} (--warmup + --batches)."
        )
    for i in range(warmup):
        keras.ops.convert_to_numpy(stream[i][0])
    seconds = {"whole": 0.0, "workers": 0.0, "device": 0.0}
    for i in range(warmup, warmup + batches):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(stream[i][0])  # waits for the device
        middle = time.perf_counter()
        part = stream.worker_batch(i)
        end = time.perf_counter()
        keras.ops.convert_to_numpy(stream.on_device(part)[0])
        seconds["whole"] += middle - start
        seconds["workers"] += end - middle
        seconds["device"] += time.perf_counter() - end
    return {k: batch * batches / v for k, v in seconds.items()}


def bench_train_step(data, batch, steps, warmup):
    """Images/s of the unfrozen Lite0 classifier's training step."""
    learn = ConvLearner.pretrained(
        "efficientnet_lite0", data, precompute=False, weights=None
    )
    learn.unfreeze()
    learn._compile(learn.model, [1e-3] * len(learn.layer_groups))
    x, y = data.train_batches(augment=False, seed=0, batch_size=batch)[0]
    for _ in range(warmup):
        learn.model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        learn.model.train_on_batch(x, y)
    return batch * steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="fast.ai-layout folder")
    parser.add_argument("--size", type=int, default=224, help="image size, pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="timed pipeline batches")
    parser.add_argument("--steps", type=int, default=4, help="timed train steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed of each")
    args = parser.parse_args(argv)

    tfms = tfms_from_model(
        "efficientnet_lite0", args.size, aug_tfms=transforms_side_on, max_zoom=1.1
    )
    start = time.perf_counter()
    data = ImageClassifierData.from_paths(args.data, batch_size=args.batch, tfms=tfms)
    decode = time.perf_counter() - start
    pipeline = bench_pipeline(data, args.batch, args.batches, args.warmup)
    train = bench_train_step(data, args.batch, args.steps, args.warmup)
    print(
        f"backend={keras.backend.backend()} size={args.size} batch={args.batch} "
        f"cpus={os.cpu_count()} decode once: {len(data.train_paths)} train "
        f"images in {decode:.1f} s"
    )
    header = f"{'stage':<44}{'img/s':>10}{'s/batch':>10}"
    print(header)
    print("-" * len(header))
    rows = [(f"pipeline ({args.batches} batches)", pipeline["whole"])]
    rows.append(("  workers: crop to uint8, draw parameters", pipeline["workers"]))
    rows.append(("  device: cast, augmentation layers", pipeline["device"]))
    rows.append((f"Lite0 unfrozen train step ({args.steps} steps)", train))
    for name, rate in rows:
        print(f"{name:<44}{rate:>10.1f}{args.batch / rate:>10.2f}")
    ratio = pipeline["whole"] / train
    verdict = "ok" if ratio >= 3 else "pipeline too slow (target >= 3x)"
    print(f"{'ratio pipeline / train step':<44}{ratio:>10.1f}x  {verdict}")


if __name__ == "__main__":
    main()
