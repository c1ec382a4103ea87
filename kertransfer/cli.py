"""`kertransfer train|demo|predict|report|export`: the command line."""

import argparse
import os
import sys

from kertransfer import __version__

__all__ = ["export_main", "main"]


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return value


def _train_args(p):
    p.add_argument("--arch", default="efficientnet_lite0", help="backbone (default: efficientnet_lite0)")
    p.add_argument("--image-size", type=_positive_int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default 32)")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default), 'none', or a local weights file (offline use)",
    )
    p.add_argument("--head-epochs", type=_positive_int, default=2, help="epochs on precomputed activations (default 2)")
    p.add_argument("--aug-epochs", type=_non_negative_int, default=2, help="head epochs with augmentation (default 2)")
    p.add_argument(
        "--unfrozen-cycles",
        type=_positive_int,
        default=2,
        help="SGDR cycles after unfreezing, cycle_mult=2 (default 2 = 3 epochs)",
    )
    p.add_argument("--tta", type=_non_negative_int, default=4, help="TTA augmented copies (0: plain prediction; default 4)")
    p.add_argument(
        "--bn-freeze",
        action="store_true",
        help="keep the body's BatchNorm frozen after unfreezing (fast.ai bn_freeze(True); default: they train)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed all random generators (keras.utils.set_random_seed) to repeat a run (default: unseeded)",
    )
    p.add_argument(
        "--tensorboard",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="log losses, metrics and per-group LRs per epoch for TensorBoard "
        "(default DIR: <run folder>/tensorboard; give it after data_dir; needs tensorflow "
        "and tensorboard)",
    )
    p.add_argument(
        "--val-pct",
        type=_fraction,
        default=0.2,
        help="fraction held out for validation (seeded) when DATA_DIR has no valid/ or val/ "
        "folder, e.g. Keras's DATA_DIR/<class>/* layout (default 0.2)",
    )
    p.add_argument(
        "--cache",
        choices=["auto", "memory", "disk", "none"],
        default="auto",
        help="where decoded images live: memory, a disk cache, or none (decoded for every "
        "batch); auto = memory up to 2 GB of decoded images, else none (default auto)",
    )
    p.add_argument(
        "--distribute",
        choices=["none", "data_parallel"],
        default="none",
        help="data_parallel: train on every device with the backend's own engine (JAX "
        "keras.distribution.DataParallel, also over the processes named by "
        "KERAS_DISTRIBUTION_*; TensorFlow MirroredStrategy; torch under torchrun); "
        "--batch-size is the global batch and must divide by the device count (default none)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out if there is one (default: refuse a folder holding a run)",
    )
    how.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed run in --out from its last complete epoch, with the settings "
        "it started with (other flags are not needed; one that differs is an error); the steps "
        "done are skipped. A finished run is left as it is. Not with --overwrite",
    )


# Flags that do not change what is trained: allowed with --resume.
_RUN_FLAGS = {"command", "data_dir", "out", "dataset", "quiet", "overwrite", "resume"}


def _given_flags(parser, argv):
    """Destinations of the options typed in `argv` (not their defaults)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = sub.choices[argv[0]]
    saved = {a.dest: a.default for a in train_parser._actions}
    try:
        for action in train_parser._actions:
            action.default = argparse.SUPPRESS
        given = vars(parser.parse_args(argv))
    finally:
        for action in train_parser._actions:
            action.default = saved[action.dest]
    return set(given)


def _check_resume_flags(args, given, progress):
    """Raises if a flag typed with --resume differs from the run's setting."""
    config = vars(_config(args))
    field = {"tta": "n_aug"}
    differ = []
    for dest in sorted(given - _RUN_FLAGS):
        name = field.get(dest, dest)
        if config[name] != progress.meta["config"].get(name):
            flag = "--" + dest.replace("_", "-")
            differ.append(f"{flag}: the run has {progress.meta['config'].get(name)!r}, received {config[name]!r}")
    if differ:
        raise ValueError(
            f"--resume continues the run in {args.out} with the settings it started with; "
            f"{'; '.join(differ)}. Leave these flags out, or start a new run (another --out, or --overwrite)."
        )


def _export_args(p):
    p.add_argument("run_dir", help="run folder holding model.keras")
    p.add_argument(
        "--formats",
        default="saved_model,tflite",
        help="comma-separated subset of saved_model,tflite,onnx (default: saved_model,tflite; onnx needs tf2onnx)",
    )
    p.add_argument(
        "--quantize",
        default="",
        help="comma-separated extra .tflite variants: float16,dynamic,int8 or 'all' (the fp32 .tflite is always "
        "written)",
    )
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export)")
    p.add_argument("--name", default="kertransfer", help="TF Serving model name (default: kertransfer)")
    p.add_argument("--version", type=int, default=1, help="TF Serving version folder (default: 1)")
    p.add_argument(
        "--representative-images",
        default=None,
        help="folder of training images to calibrate int8 (default: metrics.json train_dir/data_dir, else "
        "validation images)",
    )
    p.add_argument(
        "--images",
        default=None,
        help="folder of validation images, one sub-folder per class (default: predictions.npz in RUN_DIR)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing SavedModel version")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if a target is missed")


def _config(args):
    from kertransfer.train import TrainConfig

    weights = None if str(args.weights).lower() == "none" else args.weights
    return TrainConfig(
        arch=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        weights=weights,
        head_epochs=args.head_epochs,
        aug_epochs=args.aug_epochs,
        unfrozen_cycles=args.unfrozen_cycles,
        n_aug=args.tta,
        bn_freeze=args.bn_freeze,
        tensorboard=args.tensorboard,
        seed=args.seed,
        val_pct=args.val_pct,
        cache=None if args.cache == "none" else args.cache,
        distribute=args.distribute,
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kertransfer",
        description="fast.ai-style transfer learning on Keras 3 (any backend).",
    )
    parser.add_argument("--version", action="version", version=f"kertransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run the fast.ai recipe on an image folder")
    p.add_argument(
        "data_dir",
        help="folder with train/<class>/* and valid/<class>/* (or val/), or Keras's <class>/* "
        "(--val-pct held out)",
    )
    p.add_argument("--out", default=None, help="run folder (default runs/<data folder name>)")
    _train_args(p)
    p = sub.add_parser("demo", help="train on the sample hymenoptera data")
    p.add_argument("--dataset", default="hymenoptera", help="sample dataset (hymenoptera or dogscats)")
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="run folder (default runs/demo)")
    _train_args(p)
    p = sub.add_parser(
        "predict",
        help="classify images with a trained run folder",
        description="Top-k classes of images under a run folder's model.keras, with "
        "the run's validation transforms (center crop). Folders are searched for "
        "images; unreadable files are reported and skipped. Exit status 1 only if "
        "nothing could be predicted.",
    )
    p.add_argument("run_dir", help="folder written by `kertransfer train` (model.keras, metrics.json)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--tta", action="store_true", help="test-time augmentation, as ConvLearner.TTA")
    p.add_argument("--n-aug", type=_non_negative_int, default=4, help="TTA augmented copies (0: plain prediction; default 4)")
    p.add_argument("--top-k", type=_positive_int, default=None, help="classes per image (default 3, at most the number of classes)")
    p.add_argument("--csv", default=None, metavar="OUT.csv", help="also write all rows, errors included, to this CSV file")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default 32)")
    p.add_argument("--seed", type=int, default=0, help="TTA augmentation seed (default 0)")
    p = sub.add_parser("report", help="rebuild report.html of a run folder")
    p.add_argument("run_dir", help="folder written by `kertransfer train`")
    p = sub.add_parser(
        "export",
        help="SavedModel (TF Serving) / LiteRT / ONNX from a run folder, validated",
        description="Export a trained run folder as a TF Serving SavedModel and LiteRT .tflite files, and "
        "validate them against the Keras model (writes export_report.json).",
    )
    _export_args(p)
    return parser


def _table(frame):
    """Left-aligned text columns, probabilities with 4 decimals."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(frame.columns)]
    lines = [list(frame.columns)] + cells
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _predict(args):
    """`kertransfer predict`: table on stdout, bad files on stderr."""
    from kertransfer.predict import predict_images

    frame = predict_images(
        args.run_dir,
        args.images,
        tta=args.tta,
        top_k=args.top_k,
        n_aug=args.n_aug,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    ok = frame[frame["status"] == "ok"]
    for row in frame[frame["status"] != "ok"].itertuples():
        print(f"kertransfer: cannot predict {row.file}: {row.error}", file=sys.stderr)
    if len(ok):
        print(_table(ok.drop(columns=["status", "error"])))
    if args.csv:
        frame.to_csv(args.csv, index=False, float_format="%.6f")
    csv_note = f"; wrote {args.csv}" if args.csv else ""
    print(
        f"kertransfer: predicted {len(ok)} of {len(frame)} file(s)"
        f"{' with TTA' if args.tta else ''}{csv_note}",
        file=sys.stderr,
    )
    if len(ok) == 0:
        print("kertransfer: error: no image could be predicted", file=sys.stderr)
        return 1
    return 0


def _export(args):
    """`kertransfer export`: the exports, their report table, an exit status."""
    from kertransfer.export import QUANTIZATIONS, export

    quantize = [q.strip() for q in args.quantize.split(",") if q.strip()]
    if quantize == ["all"]:
        quantize = list(QUANTIZATIONS[1:])
    try:
        report = export(
            args.run_dir,
            out_dir=args.out,
            formats=args.formats,
            quantize=quantize,
            name=args.name,
            version=args.version,
            representative_images=args.representative_images,
            images=args.images,
            overwrite=args.overwrite,
            print_fn=print,
        )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"kertransfer export: error: {error}", file=sys.stderr)
        return 2
    if not report["passed"]:
        print("Some exports miss their targets (see the table above).", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


def export_main(argv=None):
    """Command line: `kertransfer export RUN_DIR [options]`.

    Args:
        argv: list of arguments after `export` (default: `sys.argv[1:]`).

    Returns:
        Exit status: 0 on success, 1 if `--strict` and a target was missed,
        2 on invalid arguments or a failed export.

    Example:

    ```
    kertransfer export runs/ants --formats saved_model,tflite \\
        --quantize int8 --representative-images data/hymenoptera/train
    ```
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    return main(["export", *argv])


def main(argv=None):
    """Entry point of the `kertransfer` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export":  # its own errors and exit status
        return _export(args)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "report":
            from kertransfer.report import write_report

            print(write_report(args.run_dir))
            return 0
        from kertransfer.run_folder import check_out_dir
        from kertransfer.train import train

        config = _config(args)
        if args.command == "train":
            args.out = args.out or os.path.join("runs", os.path.basename(os.path.normpath(args.data_dir)))
        if args.resume:
            from kertransfer.progress import RunProgress

            # Before any download or image: a folder that is not a run, a
            # finished run, or other settings.
            progress = RunProgress.load(args.out)
            if progress.finished:
                print(f"kertransfer: the run in {args.out} is finished; nothing to resume.", file=sys.stderr)
                return 0
            _check_resume_flags(args, _given_flags(parser, argv), progress)
            config = None  # the run's own
        elif args.command == "demo":
            check_out_dir(args.out, args.overwrite, flag="--overwrite")  # before any download
        if args.command == "demo":
            from kertransfer.datasets import untar_data

            data_dir = untar_data(args.dataset)
        else:
            data_dir = args.data_dir
        if not args.resume:
            check_out_dir(args.out, args.overwrite, flag="--overwrite")
        train(data_dir, args.out, config, verbose=0 if args.quiet else 1, overwrite=args.overwrite, resume=args.resume)
    except (OSError, ValueError, ImportError) as e:  # OSError: FileNotFoundError, CSV
        print(f"kertransfer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
