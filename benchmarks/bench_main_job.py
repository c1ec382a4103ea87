"""The main job per backbone and seed: accuracy, TTA and wall time (issue 19).

Runs `kertransfer train` (`kertransfer.train.train`, the defaults of
`TrainConfig` unless `--set` changes one) on a sample dataset for each
arch and seed, each run in a fresh process, as a user's run is. After each
run the kept model (`model.keras`) predicts the original and every TTA copy
of the validation images again, with the job's own TTA seed (0), to show
what each copy is worth:

- `valid acc`: the plain prediction (center crop), as `metrics.json`;
- `TTA acc`: the mean over the original and `n_aug` copies (fast.ai v0.7,
  the job's default), as `metrics.json`;
- `TTA b=.25`: fast.ai v2's blend, `0.25 * original + 0.75 * mean of the
  augmented copies` (`ConvLearner.TTA(beta=0.25)`);
- `copy acc`: accuracy of each augmented copy alone (mean over copies);
- wall seconds of the whole job (`metrics.json` `wall_seconds`: data,
  weights, every stage, TTA, report; the Python import before it is not
  counted).

Each finished run is appended to `--log` (JSON lines); a second call with
the same log skips the runs it holds, so a long table can be built in
several sittings. Timings on a shared machine are noisy: run alone.

Usage:

    python benchmarks/bench_main_job.py                          # lite0/1/2, seeds 1-3, hymenoptera
    python benchmarks/bench_main_job.py --archs efficientnet_lite2 --set image_size=260
    python benchmarks/bench_main_job.py --dataset dogscats --seeds 1
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("KERTRANSFER_DATA") or os.path.join(REPO, "..", "shared", "data")
ARCHS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def child(data_dir, out_dir, arch, seed, settings):
    """One run in this process; prints one JSON line."""
    import keras
    import numpy as np

    from kertransfer.config import TrainConfig
    from kertransfer.data import ImageClassifierData
    from kertransfer.predict import load_run
    from kertransfer.train import train
    from kertransfer.transforms import tfms_from_model
    from kertransfer.tta import tta_probs

    config = TrainConfig(arch=arch, seed=seed, **settings)
    train(data_dir, out_dir, config, verbose=0)
    model, metrics = load_run(out_dir)  # the kept model and metrics.json
    data = ImageClassifierData.from_paths(
        data_dir, batch_size=config.batch_size, tfms=tfms_from_model(arch, config.image_size),
        max_images=config.max_images, val_pct=config.val_pct,
    )
    copies = tta_probs(model, data, config.n_aug, "valid", seed=0, return_all=True)
    targets = np.asarray(data.valid_labels)

    def accuracy(probs):
        return float((probs.argmax(-1) == targets).mean())

    print(json.dumps({
        "arch": arch, "seed": seed, "settings": settings, "backend": keras.backend.backend(),
        "wall_s": metrics["wall_seconds"], "valid_accuracy": metrics["valid_accuracy"],
        "tta_accuracy": metrics["tta_accuracy"], "valid_loss": metrics["valid_loss"],
        "kept": metrics["kept"], "stage_seconds": metrics["stage_seconds"],
        "rerun_original_accuracy": accuracy(copies[0]),
        "rerun_tta_accuracy": accuracy(copies.mean(0)),
        "tta_beta_0.25_accuracy": accuracy(0.25 * copies[0] + 0.75 * copies[1:].mean(0)),
        "copy_accuracies": [accuracy(c) for c in copies[1:]],
    }))


def parse_settings(items):
    """`["image_size=260", "n_aug=8"]` -> `{"image_size": 260, "n_aug": 8}` (JSON values)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE (a TrainConfig field), got {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def table(rows):
    """One markdown row per (arch, settings)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["arch"], json.dumps(r["settings"], sort_keys=True)), []).append(r)
    lines = [
        "| arch | settings | seeds | wall s (median) | valid acc mean (min) | TTA acc mean (min) "
        "| TTA b=.25 mean | copy acc mean | valid loss mean | kept stages |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, settings), rs in groups.items():
        valid = [r["valid_accuracy"] for r in rs]
        tta = [r["tta_accuracy"] for r in rs]
        copies = [statistics.mean(r["copy_accuracies"]) for r in rs if r["copy_accuracies"]]
        lines.append(
            f"| {arch} | {settings if settings != '{}' else 'defaults'} | "
            f"{','.join(str(r['seed']) for r in rs)} | {statistics.median(r['wall_s'] for r in rs):.0f} | "
            f"{statistics.mean(valid):.3f} ({min(valid):.3f}) | {statistics.mean(tta):.3f} ({min(tta):.3f}) | "
            f"{statistics.mean(r['tta_beta_0.25_accuracy'] for r in rs):.3f} | "
            f"{statistics.mean(copies) if copies else float('nan'):.3f} | "
            f"{statistics.mean(r['valid_loss'] for r in rs):.4f} | "
            f"{', '.join(r['kept']['stage'] for r in rs)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hymenoptera", help="a folder in $KERTRANSFER_DATA (or a path)")
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="TrainConfig settings for every run, e.g. image_size=260 n_aug=8")
    parser.add_argument("--log", default=None, help="JSON-lines file of finished runs (default: in a temp folder)")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = parse_settings(args.set)
    if args._child:
        data_dir, out_dir, arch, seed = args._child
        return child(data_dir, out_dir, arch, int(seed), settings)
    data_dir = args.dataset if os.path.isdir(args.dataset) else os.path.join(DATA, args.dataset)
    if not os.path.isdir(data_dir):
        raise SystemExit(f"--dataset {args.dataset!r}: no folder {data_dir} (set KERTRANSFER_DATA or give a path)")
    with tempfile.TemporaryDirectory(prefix="kertransfer-mainjob-") as tmp:
        log = args.log or os.path.join(tmp, "runs.jsonl")
        rows = []
        if os.path.exists(log):
            with open(log) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        for seed in args.seeds:  # seed-major: a stopped table is still balanced
            for arch in args.archs:
                if any(r["arch"] == arch and r["seed"] == seed and r["settings"] == settings
                       and r.get("dataset", "hymenoptera") == args.dataset for r in rows):
                    continue
                out_dir = os.path.join(tmp, f"{arch}-{seed}")
                result = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--_child", data_dir, out_dir, arch, str(seed),
                     "--set", *args.set],
                    env=env, capture_output=True, text=True,
                )
                if result.returncode != 0:
                    print(result.stderr[-3000:], file=sys.stderr)
                    return 1
                row = json.loads(result.stdout.strip().splitlines()[-1])
                row["dataset"] = args.dataset
                rows.append(row)
                with open(log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{arch} seed {seed}: valid {row['valid_accuracy']:.3f} TTA {row['tta_accuracy']:.3f} "
                      f"wall {row['wall_s']:.0f} s", file=sys.stderr, flush=True)
        print(table([r for r in rows if r.get("dataset", "hymenoptera") == args.dataset]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
