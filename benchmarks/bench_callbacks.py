"""The price of kertransfer's callbacks: `learn.fit` against a plain `model.fit`.

Issue 20 item 3. Per Keras backend, this times the same model on the same
batches two ways:

- **kertransfer**: `learn.fit(lrs, 1, cycle_len=1)`, what the fast.ai
  workflow runs: fresh optimizers per fit (a `MultiOptimizer`, one SGD with
  momentum per trainable layer group), the `SGDR` callback setting each
  group's LR every batch (cosine annealing), `_FitLog` recording every
  batch's loss and each epoch's seconds, and `learn.history`;
- **plain**: `model.fit(..., epochs=1)` of the same architecture compiled
  once with one `SGD(momentum=0.9)` at a constant LR, no callbacks.

Two cases: `full`, the unfrozen EfficientNet-Lite0 classifier (3 layer
groups: `group0`, `group1`, `head`), and `head`, the head alone on
precomputed activations (1 group; the train step costs next to nothing, so
what each batch costs in Python shows most). Both learners see the same
fixed in-memory batches (random images or activations: the data pipeline is
not what is measured here; `bench_pipeline.py` measures it), validation
included on both sides. Weights are random (`weights=None`).

Each side runs one untimed fit first (tracing, compiling), then timed fits
alternate kertransfer, plain, plain, kertransfer, ... so that a slower
moment of the shared machine hits both. Printed per backend and case: the
median seconds of a fit, the overhead `(kertransfer - plain) / plain`, and
that difference per batch in milliseconds; the same from the process's CPU
time (`time.process_time`, all threads), which other jobs on a shared
machine disturb less than the wall time.

Usage:

    python benchmarks/bench_callbacks.py                  # the 3 backends, both cases
    python benchmarks/bench_callbacks.py --backends jax --cases head --repeats 3
    python benchmarks/bench_callbacks.py --size 64 --batch 16 --steps 24
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_DATA = os.path.join(
    os.environ.get("KERTRANSFER_DATA")
    or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
    "hymenoptera",
)
ARCH = "efficientnet_lite0"
BASE_LR = 1e-2


def _batches(x, y):
    """A `PyDataset` of fixed batches, the same every epoch."""
    import keras

    class Batches(keras.utils.PyDataset):
        seed = 0  # what `learn.fit` records as the data seed

        def __len__(self):
            return len(x)

        def __getitem__(self, index):
            return x[index], y[index]

    return Batches()


def _fixed_batches(shape, num_classes, batch, steps, seed):
    rng = np.random.default_rng(seed)
    scale = 255.0 if len(shape) == 3 else 1.0  # images in [0, 255]; activations ~ [0, 1]
    x = [(rng.random((batch, *shape)) * scale).astype("float32") for _ in range(steps)]
    y = [rng.integers(0, num_classes, batch) for _ in range(steps)]
    return _batches(x, y)


def _learner(data, case):
    import keras

    from kertransfer.learner import ConvLearner

    keras.utils.set_random_seed(0)
    learn = ConvLearner.pretrained(ARCH, data, precompute=case == "head", weights=None)
    if case == "full":
        learn.unfreeze()
    return learn


def bench(case, data_dir, size, batch, steps, repeats):
    """`{"kertransfer": [s, ...], "plain": [s, ...]}` seconds per fit."""
    import keras

    from kertransfer.data import ImageClassifierData
    from kertransfer.transforms import tfms_from_model

    data = ImageClassifierData.from_paths(
        data_dir, batch_size=batch, tfms=tfms_from_model(ARCH, size, aug_tfms=None)
    )
    ours, plain = _learner(data, case), _learner(data, case)
    model = ours.head_model if case == "head" else ours.model
    shape = tuple(model.input_shape[1:])
    if case == "full":
        shape = (size, size, 3)
    train = _fixed_batches(shape, data.num_classes, batch, steps, seed=1)
    valid = _fixed_batches(shape, data.num_classes, batch, max(1, steps // 8), seed=2)
    # `learn.fit` as it is, on these batches instead of the data's.
    ours._train_inputs = lambda **kwargs: (model, train, valid, len(train), {})
    n_groups = len(ours.layer_groups)
    lrs = [BASE_LR / 100, BASE_LR / 10, BASE_LR][-n_groups:]

    plain_model = plain.head_model if case == "head" else plain.model
    plain_model.compile(
        optimizer=keras.optimizers.SGD(BASE_LR, momentum=0.9),
        loss=plain._loss,
        metrics=plain._metrics(),
    )

    def run_ours():
        ours.fit(lrs, 1, cycle_len=1, verbose=0)

    def run_plain():
        plain_model.fit(train, validation_data=valid, epochs=1, verbose=0, shuffle=False)

    times = {"kertransfer": [], "plain": [], "kertransfer_cpu": [], "plain_cpu": []}
    run_ours(), run_plain()  # untimed: tracing / compiling
    order = [("kertransfer", run_ours), ("plain", run_plain)]
    for i in range(repeats):
        for name, run in order if i % 2 == 0 else order[::-1]:
            start, cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            times[f"{name}_cpu"].append(time.process_time() - cpu)
    # The schedule was followed: the last fit's LRs are SGDR's cosine.
    active = lrs[len(lrs) - ours.sched.lr_history.shape[1] :]  # the trained groups'
    want = [[lr * (1 + np.cos(np.pi * t / steps)) / 2 for lr in active] for t in range(steps)]
    np.testing.assert_allclose(ours.sched.lr_history, want, rtol=1e-6)
    return times


def _row(backend, case, times, steps):
    ours, plain = np.median(times["kertransfer"]), np.median(times["plain"])
    ours_cpu, plain_cpu = np.median(times["kertransfer_cpu"]), np.median(times["plain_cpu"])
    return {
        "backend": backend,
        "case": case,
        "kertransfer_s": ours,
        "plain_s": plain,
        "overhead_pct": 100 * (ours - plain) / plain,
        "per_batch_ms": 1e3 * (ours - plain) / steps,
        "cpu_overhead_pct": 100 * (ours_cpu - plain_cpu) / plain_cpu,
        "cpu_per_batch_ms": 1e3 * (ours_cpu - plain_cpu) / steps,
        "kertransfer_range": [min(times["kertransfer"]), max(times["kertransfer"])],
        "plain_range": [min(times["plain"]), max(times["plain"])],
    }


def _print_table(rows, args):
    print(
        f"{ARCH}, {args.size} px, batch {args.batch}, batches per fit: full {args.steps}, "
        f"head {args.head_steps} (+ 1/8 as many validation), median of {args.repeats} alternating fits "
        f"after 1 untimed each, cpus={os.cpu_count()}; wall time, and CPU time of the process "
        "(all its threads: less sensitive to other jobs on a shared machine)"
    )
    header = (
        f"{'backend':<12}{'case':<6}{'kertransfer s':>15}{'plain s':>10}"
        f"{'overhead':>10}{'per batch':>11}{'CPU overhead':>14}{'CPU per batch':>15}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:<12}{r['case']:<6}  failed: {r['error']}")
            continue
        print(
            f"{r['backend']:<12}{r['case']:<6}{r['kertransfer_s']:>15.3f}{r['plain_s']:>10.3f}"
            f"{r['overhead_pct']:>9.1f}%{r['per_batch_ms']:>8.2f} ms"
            f"{r['cpu_overhead_pct']:>13.1f}%{r['cpu_per_batch_ms']:>12.2f} ms"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--cases", nargs="+", default=["full", "head"], choices=["full", "head"])
    parser.add_argument("--data", default=DEFAULT_DATA, help="an image folder (fast.ai layout)")
    parser.add_argument("--size", type=int, default=64, help="image size, pixels")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=24, help="training batches per fit (full)")
    parser.add_argument(
        "--head-steps", type=int, default=96, help="training batches per fit (head)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed fits per side")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one backend (KERAS_BACKEND), one case: one JSON line
        import keras

        steps = args.head_steps if args.cases[0] == "head" else args.steps
        times = bench(args.cases[0], args.data, args.size, args.batch, steps, args.repeats)
        print(json.dumps(_row(keras.backend.backend(), args.cases[0], times, steps)))
        return
    rows = []
    for backend in args.backends:
        for case in args.cases:
            command = [
                sys.executable, os.path.abspath(__file__), "--child", "--cases", case,
                "--data", args.data, "--size", str(args.size), "--batch", str(args.batch),
                "--steps", str(args.steps), "--head-steps", str(args.head_steps),
                "--repeats", str(args.repeats),
            ]
            env = {**os.environ, "KERAS_BACKEND": backend}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = done.stdout.strip().splitlines()
            if done.returncode == 0 and lines:
                rows.append(json.loads(lines[-1]))
            else:
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"backend": backend, "case": case, "error": error})
            print(f"done {backend} {case}", file=sys.stderr)
    _print_table(rows, args)


if __name__ == "__main__":
    main()
