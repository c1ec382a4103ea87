"""Seconds per epoch of the same fine-tuning under fastai v2 and kertransfer.

The work, on both sides: a ResNet (random init, torchvision layout:
kertransfer's `resnet34` / `tv_resnet50`, fastai's torchvision `resnet34` /
`resnet50` through `vision_learner(dls, arch, pretrained=False)`) with
fast.ai's head (concat pooling, BatchNorm, dropout, 512 hidden units),
224 px, batches of 32, on hymenoptera (244 training photos, 153
validation photos), with each side's standard augmentation
(kertransfer: `tfms_from_model(arch, 224)`, flips, rotation and zoom;
fastai: `item_tfms=Resize(224)`, `batch_tfms=aug_transforms()`):

- frozen body: fastai `learn.fit_one_cycle(epochs)`; kertransfer
  `learn.fit(1e-3, epochs)` with `precompute=False`;
- unfrozen, differential LRs: fastai `learn.unfreeze();
  learn.fit_one_cycle(epochs, slice(1e-5, 1e-3))`; kertransfer
  `learn.unfreeze(); learn.fit([1e-5, 1e-4, 1e-3], epochs)`;
- kertransfer only: the head on precomputed activations
  (`precompute=True`): the body's activations are computed first (not
  timed: `precompute_s` in the JSON), then `learn.fit(1e-3, epochs)` is
  timed, and compared with fastai's frozen epoch.

What is timed: each epoch from its start to its end, validation included
(fastai: a `Callback`'s `before_epoch` to `after_epoch`; kertransfer: a
Keras callback's `on_epoch_begin` to `on_epoch_end`). Model building, data
set-up and the data loaders' start are outside; the first epoch of each fit
includes that fit's one-off costs (TensorFlow's graph tracing, XLA
compiles, fastai's first batches). With `--epochs 2` or more, the table
also gives the later epochs' median ("steady"). Data: kertransfer decodes
the photos once into memory (`cache="auto"`, its default) and augments per
batch; fastai decodes each photo every epoch (its default data loaders,
`num_workers` = CPU count).

Each measurement is one subprocess: fastai in the `.venv-bench` venv
(`make bench-deps`; this script installs nothing), kertransfer in this
checkout's `.venv` with `KERAS_BACKEND` set per backend. Runs alternate
(repeat 1: fastai, then each backend; repeat 2: again ...) so a load that
drifts on a shared machine lands on both sides. Threads: every process
gets the whole machine; `OMP_NUM_THREADS`, `MKL_NUM_THREADS`,
`TF_NUM_INTRAOP_THREADS`, `TF_NUM_INTEROP_THREADS` and `XLA_FLAGS` are
removed from the children's environment, and each worker reports the
thread counts it ran with.

Usage:

    make bench-deps
    python benchmarks/bench_vs_fastai.py --archs resnet34 --backends tensorflow --repeats 2
    python benchmarks/bench_vs_fastai.py --archs resnet34 resnet50 \
        --backends tensorflow jax torch --repeats 3 --epochs 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(
    os.environ.get("KERTRANSFER_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data")),
    "hymenoptera",
)
# The benchmark's architecture names -> kertransfer's registered backbones
# (torchvision layout); fastai takes torchvision's model function of the
# same name.
KERTRANSFER_ARCHS = {"resnet34": "resnet34", "resnet50": "tv_resnet50"}
BACKENDS = ("tensorflow", "jax", "torch")
THREAD_VARS = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "XLA_FLAGS",
)
IMAGE_SIZE = 224
BATCH_SIZE = 32
LR = 1e-3


# ------------------------------------------------------------------ workers
def import_fastai_vision():
    """Imports `fastai.vision.all` in `.venv-bench`, torchvision's C ops or not.

    PyPI's torchvision 0.28.0 for Linux is the CUDA build: its `_C.so` needs
    `libc10_cuda.so`, which the CPU torch 2.13.0 wheel lacks, so its C ops
    (`nms`, ...) do not load. torchvision then still registers fake kernels
    for `torchvision::nms` and `qnms` unguarded, and its import fails
    ("operator torchvision::nms does not exist"). Defining the two
    operators' schemas first (no kernels) lets it import; fastai's training
    uses only torchvision's Python model definitions (and PIL to decode
    photos), never these ops.

    Returns:
        The `fastai.vision.all` module.
    """
    import ctypes
    import importlib
    import importlib.util

    import torch

    c_ops = os.path.join(os.path.dirname(importlib.util.find_spec("torchvision").origin), "_C.so")
    try:
        ctypes.CDLL(c_ops)
    except OSError:
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_fastai_vision.library = lib  # kept alive: dropping it undefines the ops
    return importlib.import_module("fastai.vision.all")


def _fastai_worker(arch, data, epochs):
    import_fastai_vision()
    import torch
    import torchvision
    from fastai.vision.all import Callback
    from fastai.vision.all import ImageDataLoaders
    from fastai.vision.all import Resize
    from fastai.vision.all import accuracy
    from fastai.vision.all import aug_transforms
    from fastai.vision.all import vision_learner

    class EpochTimer(Callback):
        order = -100

        def before_fit(self):
            self.times = []

        def before_epoch(self):
            self.start = time.perf_counter()

        def after_epoch(self):
            self.times.append(time.perf_counter() - self.start)

    dls = ImageDataLoaders.from_folder(
        data, train="train", valid="val", item_tfms=Resize(IMAGE_SIZE),
        batch_tfms=aug_transforms(), bs=BATCH_SIZE, seed=0,
    )
    timer = EpochTimer()
    learn = vision_learner(dls, getattr(torchvision.models, arch), pretrained=False, metrics=accuracy, cbs=timer)
    out = {"side": "fastai", "torch_threads": torch.get_num_threads(), "num_workers": dls.train.fake_l.num_workers}
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs)
        out["frozen"] = timer.times
        learn.unfreeze()
        learn.fit_one_cycle(epochs, slice(LR / 100, LR))
        out["unfrozen"] = timer.times
    return out


def _kertransfer_worker(arch, data, epochs):
    import keras

    from kertransfer import ConvLearner
    from kertransfer import ImageClassifierData
    from kertransfer import tfms_from_model

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    backend = keras.backend.backend()
    out = {"side": f"kertransfer-{backend}"}
    if backend == "tensorflow":
        import tensorflow as tf

        out["tf_intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
        out["tf_inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    elif backend == "torch":
        import torch

        out["torch_threads"] = torch.get_num_threads()
    name = KERTRANSFER_ARCHS[arch]
    tfms = tfms_from_model(name, IMAGE_SIZE)
    data = ImageClassifierData.from_paths(data, batch_size=BATCH_SIZE, tfms=tfms, val_name="val")
    learn = ConvLearner.pretrained(name, data, precompute=False, weights=None)
    for stage, lrs in (("frozen", LR), ("unfrozen", [LR / 100, LR / 10, LR])):
        if stage == "unfrozen":
            learn.unfreeze()
        timer = EpochTimer()
        learn.fit(lrs, epochs, callbacks=[timer], verbose=0)
        out[stage] = timer.times
    learn.freeze()
    learn.precompute = True
    start = time.perf_counter()
    learn._activations("train")
    learn._activations("valid")
    out["precompute_s"] = time.perf_counter() - start
    timer = EpochTimer()
    learn.fit(LR, epochs, callbacks=[timer], verbose=0)
    out["precomputed"] = timer.times
    return out


def worker(args):
    fn = _fastai_worker if args.worker == "fastai" else _kertransfer_worker
    out = fn(args.archs[0], args.data, args.epochs)
    out.update(arch=args.archs[0], cpu_count=os.cpu_count())
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------- driver
def _run(side, arch, args):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("MPLBACKEND", "Agg")
    if side == "fastai":
        python, worker_name = args.fastai_python, "fastai"
    else:
        python, worker_name = args.kertransfer_python, "kertransfer"
        env["KERAS_BACKEND"] = side
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, os.path.abspath(__file__), "--worker", worker_name, "--archs", arch,
           "--epochs", str(args.epochs), "--data", args.data]
    with tempfile.TemporaryDirectory(prefix="bench-vs-fastai-") as tmp:
        # A fresh Keras cache (random-init activations are not reused).
        env["KERAS_HOME"] = tmp
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise RuntimeError(f"{side} {arch} failed (exit {proc.returncode})")
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_s"] = time.perf_counter() - start
    return out


def _median(values):
    return statistics.median(values) if values else float("nan")


def _summary(results, arch, side, key, which):
    runs = [r[key] for r in results if r["arch"] == arch and r["_side"] == side and key in r]
    if which == "first":
        return _median([t[0] for t in runs])
    return _median([x for t in runs for x in t[1:]])


def table(results, args):
    sides = ["fastai"] + list(args.backends)
    which_list = ["first"] + (["steady"] if args.epochs > 1 else [])
    lines = []
    head = f"{'arch':<9} {'side':<24} {'epoch':<7} {'frozen s':>9} {'unfrozen s':>11} " \
           f"{'unfrozen ratio':>15} {'precomputed s':>14} {'speed-up':>9}"
    lines += [head, "-" * len(head)]
    for arch in args.archs:
        if not any(r["arch"] == arch for r in results):
            continue
        for which in which_list:
            fa_frozen = _summary(results, arch, "fastai", "frozen", which)
            fa_unfrozen = _summary(results, arch, "fastai", "unfrozen", which)
            for side in sides:
                frozen = _summary(results, arch, side, "frozen", which)
                unfrozen = _summary(results, arch, side, "unfrozen", which)
                name = side if side == "fastai" else f"kertransfer ({side})"
                row = f"{arch:<9} {name:<24} {which:<7} {frozen:>9.1f} {unfrozen:>11.1f}"
                if side == "fastai":
                    row += f" {'':>15} {'':>14} {'':>9}"
                else:
                    pre = _summary(results, arch, side, "precomputed", which)
                    row += f" {unfrozen / fa_unfrozen:>15.2f} {pre:>14.2f} {fa_frozen / pre:>8.0f}x"
                lines.append(row)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet34", "resnet50"], choices=sorted(KERTRANSFER_ARCHS))
    parser.add_argument("--backends", nargs="+", default=["tensorflow"], choices=BACKENDS)
    parser.add_argument("--repeats", type=int, default=3, help="runs per arch and side (median reported)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per stage (frozen, unfrozen, precomputed)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="hymenoptera folder (train/, val/)")
    parser.add_argument("--fastai-python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"))
    parser.add_argument("--kertransfer-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--json", help="also write every run's measurements here (after each run)")
    parser.add_argument("--from-json", help="print the table of a `--json` file (an interrupted run's too); run nothing")
    parser.add_argument("--worker", choices=["fastai", "kertransfer"], help=argparse.SUPPRESS)
    parser.add_argument("--check-fastai", action="store_true",
                        help="only import fastai.vision.all (run with .venv-bench's python; `make bench-deps` does)")
    args = parser.parse_args(argv)
    if args.check_fastai:
        import_fastai_vision()
        print("fastai.vision.all imports")
        return 0
    if args.repeats < 1 or args.epochs < 1:
        parser.error("--repeats and --epochs must be at least 1")
    if not os.path.isdir(os.path.join(args.data, "train")) or not os.path.isdir(os.path.join(args.data, "val")):
        parser.error(f"--data {args.data!r} has no train/ and val/ folders: pass the hymenoptera folder")
    if args.worker:
        return worker(args)
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        args.backends = [b for b in BACKENDS if any(r["_side"] == b for r in results)]
        print(table(results, args))
        return 0
    if not os.path.exists(args.fastai_python):
        parser.error(f"--fastai-python {args.fastai_python!r} does not exist: run `make bench-deps` first")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}; every process gets all CPUs "
          f"({', '.join(THREAD_VARS)} unset)", flush=True)
    results = []
    for repeat in range(args.repeats):
        for arch in args.archs:
            for side in ["fastai", *args.backends]:
                out = _run(side, arch, args)
                out["_side"], out["repeat"] = side, repeat
                results.append(out)
                if args.json:  # after every run: an interrupted benchmark keeps what it measured
                    with open(args.json, "w") as f:
                        json.dump(results, f, indent=1)
                threads = {k: v for k, v in out.items() if "thread" in k or k == "num_workers"}
                print(f"repeat {repeat + 1} {arch} {side}: frozen {[round(t, 1) for t in out['frozen']]} "
                      f"unfrozen {[round(t, 1) for t in out['unfrozen']]} "
                      f"precomputed {[round(t, 2) for t in out.get('precomputed', [])]} "
                      f"process {out['process_s']:.0f} s {threads} load {os.getloadavg()[0]:.2f}", flush=True)
    print()
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
