"""Inference and training throughput of the registered backbones on this CPU.

For each backbone: images/s of inference (`predict_on_batch`, the body
only, `include_top=False`) and of a training step (body + a small
classifier head, SGD, `train_on_batch`) at 224 px, under the current Keras
backend (`KERAS_BACKEND`), plus the peak resident memory of the process
(`resource.getrusage().ru_maxrss`). With several backbones, each runs in its
own subprocess so the peak memory is its own.

Weights are random (`weights=None`): throughput does not depend on them,
and the benchmark never touches the network.

Usage:

    KERAS_BACKEND=jax python benchmarks/bench_backbones.py --quick --arch resnet18
    python benchmarks/bench_backbones.py                  # every backbone
    python benchmarks/bench_backbones.py --arch resnet34 mobilenet_v2 --batch 16
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from kertransfer.backbones import keras_apps  # noqa: E402,F401 (registers)
from kertransfer.backbones import resnet  # noqa: E402,F401 (registers)
from kertransfer.backbones.registry import build_backbone  # noqa: E402
from kertransfer.backbones.registry import list_backbones  # noqa: E402

NUM_CLASSES = 10


def _peak_rss_mib():
    # Linux reports kilobytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _images_per_second(step, batch, steps, warmup):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def bench(arch, size, batch, steps, warmup):
    """Returns a dict of measurements for one backbone."""
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    labels = rng.randint(0, NUM_CLASSES, (batch,))
    body = build_backbone(arch, weights=None, input_shape=(size, size, 3))
    params = body.count_params()
    infer = _images_per_second(
        lambda: body.predict_on_batch(images), batch, steps, warmup
    )
    x = keras.layers.GlobalAveragePooling2D()(body.output)
    outputs = keras.layers.Dense(NUM_CLASSES)(x)
    model = keras.Model(body.input, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train = _images_per_second(
        lambda: model.train_on_batch(images, labels), batch, steps, warmup
    )
    return {
        "arch": arch,
        "params_m": params / 1e6,
        "infer_img_s": infer,
        "train_img_s": train,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _print_table(rows, args):
    print(
        f"backend={keras.backend.backend()} size={args.size} batch={args.batch} "
        f"steps={args.steps} (after {args.warmup} warm-up) cpus={os.cpu_count()}"
    )
    header = (
        f"{'arch':<20}{'params (M)':>11}{'infer img/s':>13}"
        f"{'train img/s':>13}{'peak RSS MiB':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['arch']:<20}  failed: {r['error']}")
            continue
        print(
            f"{r['arch']:<20}{r['params_m']:>11.2f}{r['infer_img_s']:>13.1f}"
            f"{r['train_img_s']:>13.1f}{r['peak_rss_mib']:>14.0f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--arch", nargs="+", default=None, help="backbones (default: all registered)"
    )
    parser.add_argument("--size", type=int, default=224, help="image size, pixels")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps")
    parser.add_argument(
        "--quick", action="store_true", help="batch 4, 3 timed steps, 1 warm-up"
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 4, 3, 1
    archs = args.arch or list_backbones()
    unknown = sorted(set(archs) - set(list_backbones()))
    if unknown:
        parser.error(f"unknown arch {unknown}; available: {list_backbones()}")

    if args.json:  # child process: one backbone, one JSON line
        row = bench(archs[0], args.size, args.batch, args.steps, args.warmup)
        print(json.dumps(row))
        return
    if len(archs) == 1:
        rows = [bench(archs[0], args.size, args.batch, args.steps, args.warmup)]
    else:
        rows = []
        for arch in archs:
            command = [
                sys.executable, os.path.abspath(__file__), "--json", "--arch", arch,
                "--size", str(args.size), "--batch", str(args.batch),
                "--steps", str(args.steps), "--warmup", str(args.warmup),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            if done.returncode == 0 and lines:
                rows.append(json.loads(lines[-1]))
            else:
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"arch": arch, "error": error})
            print(f"done {arch}", file=sys.stderr)
    _print_table(rows, args)


if __name__ == "__main__":
    main()
