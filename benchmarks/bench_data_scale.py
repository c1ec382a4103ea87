"""Memory and speed of the data pipeline as the data grows.

Builds fast.ai-layout folders of N images from symbolic links to the shared
dogscats photos (cats and dogs, 1,500 real photos, each linked as often as
needed; nothing is copied), then, for each N, backend and cache mode, in a
fresh process:

- time to the first batch: `ImageClassifierData.from_paths` (the scan, and
  for `cache="memory"` the decode of everything) plus the first training
  batch;
- one epoch of training batches (random crop, side-on augmentation,
  `max_zoom=1.1`, 224 px, batch 32) through `model.fit` on a one-layer
  model, so Keras's `PyDataset` worker threads prepare batches as in
  training; images/s over that epoch;
- peak RSS of the process (`resource.getrusage`).

Streaming (`cache=None`, what `"auto"` picks above 2 GB of decoded images)
should keep the peak flat as N grows, and reach at least 3x the unfrozen
EfficientNet-Lite0 train step (13.8 images/s under TensorFlow,
`bench_pipeline.py`). Timings on a shared machine are noisy: run alone.

Usage:

    python benchmarks/bench_data_scale.py                      # 1.5k, 6k, 24k; TF and JAX
    python benchmarks/bench_data_scale.py --sizes 1500 --backends tensorflow --caches memory none
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(
    os.environ.get("KERTRANSFER_DATA") or os.path.join(REPO, "..", "shared", "data"), "dogscats"
)


def build_folder(source, root, n_train, n_valid=200):
    """`root/train/<class>/*`, `root/valid/<class>/*`: symlinks, N in total."""
    photos = {}
    for split in ("train", "valid"):
        for c in sorted(os.listdir(os.path.join(source, split))):
            folder = os.path.join(source, split, c)
            photos.setdefault(c, []).extend(
                os.path.join(folder, f) for f in sorted(os.listdir(folder))
            )
    classes = sorted(photos)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c in classes:
            out = os.path.join(root, split, c)
            os.makedirs(out, exist_ok=True)
            files = photos[c]
            for i in range(n // len(classes)):
                # Validation links start at the other end of the list.
                src = files[i % len(files)] if split == "train" else files[-1 - i % len(files)]
                os.symlink(os.path.abspath(src), os.path.join(out, f"{i:06d}_{os.path.basename(src)}"))
    return root


def child(folder, cache, batch_size):
    """Runs in its own process; prints one JSON line."""
    import resource

    start = time.perf_counter()
    import keras

    from kertransfer.data import ImageClassifierData
    from kertransfer.transforms import tfms_from_model

    imported = time.perf_counter()
    data = ImageClassifierData.from_paths(
        folder, batch_size=batch_size, tfms=tfms_from_model("efficientnet_lite0", 224), cache=cache
    )
    batches = data.train_batches(seed=0)
    batches[0]
    first_batch = time.perf_counter() - imported
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(data.num_classes, activation="softmax")(x))
    model.compile("sgd", "sparse_categorical_crossentropy")
    epoch_start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0)
    epoch = time.perf_counter() - epoch_start
    print(json.dumps({
        "train_images": len(data.train_paths),
        "store": data.store.kind,
        "workers": data.batch_workers,
        "import_s": round(imported - start, 1),
        "first_batch_s": round(first_batch, 1),
        "epoch_s": round(epoch, 1),
        "images_per_s": round(batches.num_samples / epoch, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with train/ and valid/ class folders")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1500, 6000, 24000])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--caches", nargs="+", default=["none"], help="memory, disk and/or none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        folder, cache = args._child
        return child(folder, None if cache == "none" else cache, args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kertransfer-scale-") as tmp:
        env = dict(os.environ, KERAS_HOME=os.path.join(tmp, "keras"), TF_CPP_MIN_LOG_LEVEL="3")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        for n in args.sizes:
            folder = build_folder(args.data, os.path.join(tmp, f"n{n}"), n)
            for backend in args.backends:
                for cache in args.caches:
                    result = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--_child", folder, cache,
                         "--batch-size", str(args.batch_size)],
                        env=dict(env, KERAS_BACKEND=backend), capture_output=True, text=True,
                    )
                    if result.returncode != 0:
                        print(result.stderr[-3000:], file=sys.stderr)
                        return 1
                    row = json.loads(result.stdout.strip().splitlines()[-1])
                    row.update(n=n, backend=backend, cache=cache)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    header = ["images", "backend", "cache", "peak RSS MB", "first batch s", "epoch s", "images/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['train_images']} | {r['backend']} | {r['cache']} | {r['peak_rss_mb']} | "
              f"{r['first_batch_s']} | {r['epoch_s']} | {r['images_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
