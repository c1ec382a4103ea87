"""Inference and training throughput of the registered backbones on this CPU.

For each backbone: images/s of inference (`predict_on_batch`, the body
only, `include_top=False`) and of a training step (body + a small
classifier head, SGD, `train_on_batch`) at 224 px, under the current Keras
backend (`KERAS_BACKEND`), plus the peak resident memory of the process
(`resource.getrusage().ru_maxrss`). With several backbones, each runs in its
own subprocess so the peak memory is its own.

Weights are random (`weights=None`): throughput does not depend on them,
and the benchmark never touches the network. Rates are medians over the
timed steps (min-max in the `spread` column): on a shared machine, compare
ratios from alternating runs, not single absolute figures.

`--flops` adds the physical limit as a reference: this machine's float32
GFLOP/s (`matmul_gflops`: a large `keras.ops.matmul`, median of several),
each model's forward FLOPs per image counted from its layers
(`forward_flops`: convolutions and dense layers, 2 FLOPs per
multiply-add), and the train step's images/s as a fraction of the
FLOPs-bound rate `GFLOP/s / (3 x forward FLOPs)` (a training step costs
about three forward passes: forward, and the gradients of inputs and of
weights).

`--profile` (JAX only) adds a per-op profile of one train step:
`jax.profiler` traces the compiled step, and each XLA op's time is
attributed, through the optimized HLO's metadata, to the Keras layer class
it came from, forward or backward, and to the kind of op (convolution,
grouped convolution, dot, reduce, elementwise). This is how the slow JAX
train step of EfficientNet-Lite0 was pinned down (README, "Training speed
under JAX").

Usage:

    KERAS_BACKEND=jax python benchmarks/bench_backbones.py --quick --arch resnet18
    python benchmarks/bench_backbones.py                  # every backbone
    python benchmarks/bench_backbones.py --arch resnet34 mobilenet_v2 --batch 16
    KERAS_BACKEND=jax python benchmarks/bench_backbones.py --train-only \
        --arch efficientnet_lite0 --batch 8 --steps 5 --profile
    python benchmarks/bench_backbones.py --train-only --flops --arch resnet50 efficientnet_lite0
"""

import argparse
import collections
import glob
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
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
    """`(median, slowest, fastest)` images/s over `steps` timed calls."""
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return batch / np.median(seconds), batch / max(seconds), batch / min(seconds)


def matmul_gflops(n=2048, repeats=5, warmup=2):
    """This machine's float32 GFLOP/s under the current backend.

    The median over `repeats` timed `keras.ops.matmul` of two `n x n`
    float32 matrices (`2 n**3` FLOPs each; large enough that the BLAS /
    XLA kernel, not the call, sets the time), each waited for by reading
    one element of the result back (JAX dispatches asynchronously).
    """
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((n, n), dtype="float32"))
    b = keras.ops.convert_to_tensor(rng.standard_normal((n, n), dtype="float32"))

    def product():
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[:1, :1])

    for _ in range(warmup):
        product()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / np.median(seconds) / 1e9


def _spatial(shape, data_format):
    """The product of the spatial dimensions of a `(batch, ...)` shape."""
    dims = shape[1:-1] if data_format == "channels_last" else shape[2:]
    if any(d is None for d in dims):
        raise ValueError(
            f"forward_flops needs fixed spatial dimensions; a layer's shape is {shape}. "
            "Build the model with a fixed input_shape, e.g. (224, 224, 3)."
        )
    return int(np.prod(dims))


def _layer_macs(layer, inputs, outputs):
    """Multiply-adds per image of one call of `layer`, 0 if not counted."""
    kernels = [w for w in layer.weights if w.path.rsplit("/", 1)[-1].endswith("kernel")]
    size = sum(int(np.prod(k.shape)) for k in kernels)
    if isinstance(
        layer,
        (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose),
    ):
        # Each input position is multiplied by the whole kernel.
        return _spatial(inputs[0].shape, layer.data_format) * size
    if isinstance(
        layer,
        (
            keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
            keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
            keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
        ),
    ):
        # Each output position: the whole kernel (k*k*in/groups*out weights;
        # depthwise k*k*in*multiplier; separable both kernels, the pointwise
        # one at the output's positions too).
        return _spatial(outputs[0].shape, layer.data_format) * size
    if isinstance(layer, keras.layers.Dense):
        positions = outputs[0].shape[1:-1]
        if any(d is None for d in positions):
            raise ValueError(
                f"forward_flops needs fixed dimensions; {layer.name}'s output is "
                f"{outputs[0].shape}. Build the model with a fixed input_shape."
            )
        return int(np.prod(positions)) * size
    return 0


def forward_flops(model):
    """Forward FLOPs per image of `model`: 2 x the multiply-adds (MACs) of
    its convolutions and dense layers, from their kernels and output shapes.

    A convolution makes `prod(output spatial dims) * kernel.size` MACs per
    image (its kernel holds `k*k * in/groups * out` weights); a depthwise one
    the same with its depthwise kernel; a separable one both its kernels; a
    transposed one `prod(input spatial dims) * kernel.size`; a dense layer
    `prod(output dims but the last) * kernel.size`. Biases, normalisation,
    activations, pooling and additions are left out: a few per cent of the
    FLOPs (memory-bound, not FLOPs-bound). Each call of a layer in the
    model's graph counts; a nested model counts at the shapes of its own
    graph (the shapes it was built with).

    Args:
        model: a functional or built `Sequential` `keras.Model` with fixed
            spatial input dimensions.

    Returns:
        int, FLOPs per image.

    Raises:
        ValueError: if a counted layer's output has an unknown dimension.

    Example:

    ```python
    body = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    forward_flops(body) / 2e9  # 3.86 GMACs, He et al. 2016's "3.8 x 10^9"
    ```
    """
    if isinstance(model, keras.Sequential):
        model = model._functional
    macs = 0
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            layer = node.operation
            if isinstance(layer, keras.Model):
                macs += forward_flops(layer) // 2
            elif isinstance(layer, keras.layers.Layer):
                macs += _layer_macs(layer, node.input_tensors, node.outputs)
    return 2 * macs


def bench(arch, size, batch, steps, warmup, train_only=False, profile=False):
    """Returns a dict of measurements for one backbone."""
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    labels = rng.randint(0, NUM_CLASSES, (batch,))
    body = build_backbone(arch, weights=None, input_shape=(size, size, 3))
    params = body.count_params()
    infer = (float("nan"),) * 3
    if not train_only:
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
    row = {
        "arch": arch,
        "params_m": params / 1e6,
        "infer_img_s": infer[0],
        "train_img_s": train[0],
        "train_spread": train[1:],
        "peak_rss_mib": _peak_rss_mib(),
        # The trained model: the body and the head's Dense.
        "forward_gflop": forward_flops(model) / 1e9,
    }
    if profile:
        row["profile"] = profile_train_step(model, images, labels)
    return row


# --- per-op profile of the JAX train step ---------------------------------

_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(")
_HLO_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
# When a fusion holds several ops, the first of these names it.
_OP_RANK = ("convolution", "dot", "reduce", "reduce-window", "select-and-scatter")


def _parse_hlo(text):
    """`{instruction: info}` and `{computation: [info]}` of optimized HLO."""
    instructions, computations, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        match = _HLO_COMPUTATION.match(line)
        if match:
            current = match.group(1)
            continue
        match = _HLO_INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        groups = re.search(r"(feature|batch)_group_count=(\d+)", line)
        operands = line.split("(", 1)[1].split(")", 1)[0]
        info = {
            "name": name,
            "operands": re.findall(r"%([\w.\-]+)", operands),
            "shape": shape.split("{")[0],
            "opcode": opcode,
            "calls": calls and calls.group(1),
            "op_name": op_name.group(1) if op_name else "",
            "grouped": bool(groups and int(groups.group(2)) > 1),
        }
        instructions[name] = info
        computations[current].append(info)
    return instructions, computations


def _consumers(instructions):
    users = collections.defaultdict(list)
    for info in instructions.values():
        for operand in info["operands"]:
            users[operand].append(info)
    return users


def _describe_op(info, computations, users):
    """`(layer name, "forward"|"backward", op kind)` of one executed op.

    An op without source metadata (XLA:CPU's rewrite of a grouped kernel
    gradient into a dense convolution has none) takes that of the nearest
    op that consumes its result.
    """
    inner = computations.get(info["calls"], []) if info["calls"] else []
    ranked = [i for i in inner + [info] if i["opcode"] in _OP_RANK]
    main = min(ranked, key=lambda i: _OP_RANK.index(i["opcode"])) if ranked else info
    kind = main["opcode"] if ranked else "elementwise/copy"
    if kind == "convolution" and main["grouped"]:
        kind = "grouped convolution"
    op_name = main["op_name"] or info["op_name"]
    op_name = op_name or next((i["op_name"] for i in inner if i["op_name"]), "")
    frontier = [info]
    for _ in range(3):
        if op_name:
            break
        frontier = [u for i in frontier for u in users.get(i["name"], [])]
        op_name = next((u["op_name"] for u in frontier if u["op_name"]), "")
    layers = re.findall(r"jvp\(([\w.\-]+)\)", op_name)
    direction = "backward" if "transpose(" in op_name else "forward"
    return (layers[-1] if layers else ""), direction, kind


def profile_train_step(model, images, labels):
    """Per-op times (ms) of one compiled JAX train step of `model`.

    Returns a dict: `wall_ms` (the step), `groups` (`[layer class, direction,
    op kind, ms]`, slowest first) and `top` (the slowest single ops).
    Ops on the two CPU threads overlap, so the ops' sum exceeds `wall_ms`.
    """
    import jax

    if keras.backend.backend() != "jax":
        raise ValueError(
            "--profile traces the XLA ops of the JAX train step. Received "
            f"KERAS_BACKEND={keras.backend.backend()!r}; run with KERAS_BACKEND=jax."
        )
    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
        purge_model_variables=False,
    )
    data = (images, labels, None)
    compiled = jax.jit(model.train_step).lower(state, data).compile()
    instructions, computations = _parse_hlo(compiled.as_text())
    jax.block_until_ready(compiled(state, data))
    trace_dir = tempfile.mkdtemp(prefix="bench_backbones_trace_")
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, data))
    wall_ms = (time.perf_counter() - start) * 1e3
    jax.profiler.stop_trace()
    (trace,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    op_ms = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(trace).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in instructions:
                    op_ms[event.name] += event.duration_ns / 1e6
    classes = {layer.name: type(layer).__name__ for layer in model._flatten_layers()}
    groups, top, users = collections.Counter(), [], _consumers(instructions)
    for name, ms in op_ms.items():
        layer, direction, kind = _describe_op(instructions[name], computations, users)
        groups[(classes.get(layer, "(unattributed)"), direction, kind)] += ms
        top.append([round(ms, 1), name, instructions[name]["shape"], kind, layer, direction])
    return {
        "wall_ms": wall_ms,
        "groups": [[*key, round(ms, 1)] for key, ms in groups.most_common()],
        "top": sorted(top, reverse=True)[:15],
    }


def _print_profile(arch, profile):
    total = sum(row[-1] for row in profile["groups"])
    print(
        f"\nper-op profile of one {arch} train step (JAX): wall "
        f"{profile['wall_ms']:.0f} ms, ops {total:.0f} ms (2 threads overlap)"
    )
    for cls, direction, kind, ms in profile["groups"]:
        if ms >= 0.01 * total:
            print(f"{ms:9.0f} ms {100 * ms / total:5.1f}%  {cls:<22}{direction:<10}{kind}")
    print("slowest ops:")
    for ms, name, shape, kind, layer, direction in profile["top"]:
        print(f"{ms:9.0f} ms  {name:<30} {shape:<24}{kind:<21}{layer} {direction}")


def _print_table(rows, args, gflops=None):
    print(
        f"backend={keras.backend.backend()} size={args.size} batch={args.batch} "
        f"steps={args.steps} (after {args.warmup} warm-up) cpus={os.cpu_count()}"
    )
    if gflops:
        print(
            f"float32 matmul: {gflops:.1f} GFLOP/s (keras.ops.matmul {args.matmul_n}x"
            f"{args.matmul_n}, median of 5); FLOPs-bound train img/s = GFLOP/s / "
            "(3 x forward GFLOP per image)"
        )
    header = (
        f"{'arch':<20}{'params (M)':>11}{'infer img/s':>13}"
        f"{'train img/s':>13}{'spread':>13}{'peak RSS MiB':>14}"
    )
    if gflops:
        header += f"{'fwd GFLOP/img':>15}{'bound img/s':>13}{'of bound':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['arch']:<20}  failed: {r['error']}")
            continue
        spread = "{:.2f}-{:.2f}".format(*r["train_spread"])
        line = (
            f"{r['arch']:<20}{r['params_m']:>11.2f}{r['infer_img_s']:>13.1f}"
            f"{r['train_img_s']:>13.2f}{spread:>13}{r['peak_rss_mib']:>14.0f}"
        )
        if gflops:
            bound = gflops / (3 * r["forward_gflop"])
            line += (
                f"{r['forward_gflop']:>15.3f}{bound:>13.1f}"
                f"{100 * r['train_img_s'] / bound:>9.1f}%"
            )
        print(line)
    for r in rows:
        if "profile" in r:
            _print_profile(r["arch"], r["profile"])


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
    parser.add_argument(
        "--train-only", action="store_true", help="skip the inference measurement"
    )
    parser.add_argument(
        "--profile", action="store_true", help="JAX: per-op profile of a train step"
    )
    parser.add_argument(
        "--flops", action="store_true",
        help="add forward FLOPs per image and the train step's share of the FLOPs-bound rate",
    )
    parser.add_argument(
        "--matmul-n", type=int, default=2048, help="side of the --flops matmul (default 2048)"
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 4, 3, 1
    archs = args.arch or list_backbones()
    unknown = sorted(set(archs) - set(list_backbones()))
    if unknown:
        parser.error(f"unknown arch {unknown}; available: {list_backbones()}")

    if args.profile and keras.backend.backend() != "jax":
        parser.error(
            "--profile traces the XLA ops of the JAX train step. Received "
            f"KERAS_BACKEND={keras.backend.backend()!r}; run with KERAS_BACKEND=jax."
        )
    options = dict(train_only=args.train_only, profile=args.profile)
    # The machine's rate, measured here once, before the backbones run.
    gflops = matmul_gflops(args.matmul_n) if args.flops and not args.json else None
    if args.json:  # child process: one backbone, one JSON line
        row = bench(archs[0], args.size, args.batch, args.steps, args.warmup, **options)
        print(json.dumps(row))
        return
    if len(archs) == 1:
        rows = [bench(archs[0], args.size, args.batch, args.steps, args.warmup, **options)]
    else:
        rows = []
        for arch in archs:
            command = [
                sys.executable, os.path.abspath(__file__), "--json", "--arch", arch,
                "--size", str(args.size), "--batch", str(args.batch),
                "--steps", str(args.steps), "--warmup", str(args.warmup),
            ] + ["--train-only"] * args.train_only + ["--profile"] * args.profile
            done = subprocess.run(command, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            if done.returncode == 0 and lines:
                rows.append(json.loads(lines[-1]))
            else:
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"arch": arch, "error": error})
            print(f"done {arch}", file=sys.stderr)
    _print_table(rows, args, gflops)


if __name__ == "__main__":
    main()
