"""`kertransfer train|demo|predict|report|export`: the command line."""

import argparse
import contextlib
import logging
import os
import re
import sys

from kertransfer import __version__
from kertransfer.config import add_config_flags
from kertransfer.config import config_from_args
from kertransfer.config import non_negative_int
from kertransfer.config import positive_int
from kertransfer.console import heartbeat
from kertransfer.console import quiet_backend_logs

__all__ = ["export_main", "main"]


def _train_args(p):
    """The flags of `train` and `demo`: one per `TrainConfig` field, then the run's own."""
    add_config_flags(p)
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (the stage headers, the table of epochs and the results are still shown)",
    )
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
    _verbose_flag(p)


# Flags that do not change what is trained: allowed with --resume.
_RUN_FLAGS = {"command", "data_dir", "out", "dataset", "quiet", "verbose", "overwrite", "resume"}


def _verbose_flag(p):
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show the backends' start-up messages (CUDA probing on a machine without a GPU, "
        "TensorFlow's notices), hidden by default",
    )


def _given_flags(parser, argv):
    """`{destination: the flag as typed}` of the options in `argv` (not their defaults)."""
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
    typed = {a.split("=")[0] for a in argv}
    spelled = {
        a.dest: next((o for o in a.option_strings if o in typed), a.dest) for a in train_parser._actions
    }
    return {dest: spelled.get(dest, dest) for dest in given}


def _check_resume_flags(args, given, progress):
    """Raises if a flag typed with --resume differs from the run's setting.

    Args:
        given: `{destination: the flag as typed}` (`_given_flags`).
    """
    config = vars(_config(args))
    differ = []
    for name in sorted(given.keys() - _RUN_FLAGS):
        if config[name] != progress.meta["config"].get(name):
            differ.append(f"{given[name]}: the run has {progress.meta['config'].get(name)!r}, received {config[name]!r}")
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
    _verbose_flag(p)


def _config(args):
    """The `TrainConfig` of parsed `train`/`demo` flags (checks them all)."""
    return config_from_args(args)


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
        "(--val-pct held out), or with --csv the folder holding --folder",
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
        description="Top-k classes of images under a run folder's model.keras (for a "
        "multi-label run, every tag above the run's threshold), with "
        "the run's validation transforms (center crop). Folders are searched for "
        "images; unreadable files are reported and skipped. Exit status 1 only if "
        "nothing could be predicted.",
    )
    p.add_argument("run_dir", help="folder written by `kertransfer train` (model.keras, metrics.json)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--tta", action="store_true", help="test-time augmentation, as ConvLearner.TTA (--n-aug copies)")
    p.add_argument(
        "--n-aug",
        type=non_negative_int,
        default=None,
        help="TTA augmented copies; given alone, turns TTA on (0: plain prediction; default 4 with --tta)",
    )
    p.add_argument("--top-k", type=positive_int, default=None, help="classes per image (default 3, at most the number of classes; single-label runs)")
    p.add_argument("--csv", default=None, metavar="OUT.csv", help="also write all rows, errors included, to this CSV file")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    p.add_argument("--seed", type=int, default=0, help="TTA augmentation seed (default 0)")
    _verbose_flag(p)
    p = sub.add_parser("report", help="rebuild report.html of a run folder")
    p.add_argument("run_dir", help="folder written by `kertransfer train`")
    _verbose_flag(p)
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

    tta = args.tta or bool(args.n_aug)
    frame = predict_images(
        args.run_dir,
        args.images,
        tta=tta,
        top_k=args.top_k,
        n_aug=4 if args.n_aug is None else args.n_aug,
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
        f"{' with TTA' if tta else ''}{csv_note}",
        file=sys.stderr,
    )
    if len(ok) == 0:
        print("kertransfer: error: no image could be predicted", file=sys.stderr)
        return 1
    return 0


def _export(args):
    """`kertransfer export`: the exports, their report table, an exit status."""
    from kertransfer.console import progress_bars
    from kertransfer.export import QUANTIZATIONS
    from kertransfer.export import export

    quantize = [q.strip() for q in args.quantize.split(",") if q.strip()]
    if quantize == ["all"]:
        quantize = list(QUANTIZATIONS[1:])
    try:
        with progress_bars(1):  # a bar while validating each .tflite
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


class _ConsoleHandler(logging.Handler):
    """`[kertransfer] message` lines on the current `sys.stdout`.

    Attributes:
        stage: the last stage header's `stage i/n: name`, or None.
    """

    stage = None

    def emit(self, record):
        message = self.format(record)
        header = re.search(r"stage \d+/\d+: \S+", message)
        if header and message.startswith("──"):
            _ConsoleHandler.stage = header.group(0)
        print(f"[kertransfer] {message}", file=sys.stdout, flush=True)


def _still_working(seconds):
    """The heartbeat's line: where the run is, and how long since the last update."""
    where = f" ({_ConsoleHandler.stage})" if _ConsoleHandler.stage else ""
    return f"[kertransfer] ... still working{where}: {seconds:.0f} s since the last update"


@contextlib.contextmanager
def _progress_messages():
    """Shows the main job's INFO messages on stdout while the block runs.

    Only for `train` and `demo`: afterwards the logger is as it was, so a
    later `predict` in the same process keeps its table alone on stdout.
    """
    logger = logging.getLogger("kertransfer")
    level = logger.level
    handler = _ConsoleHandler()
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv=None):
    """Entry point of the `kertransfer` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before any backend is imported: its harmless start-up noise is hidden.
    # Training without --quiet: a line at least every 8 s, even while one
    # step (an import, a model's first batch) takes longer.
    talks = args.command in ("train", "demo") and not args.quiet
    _ConsoleHandler.stage = None
    with quiet_backend_logs(args.verbose), heartbeat(_still_working) if talks else contextlib.nullcontext():
        return _run(parser, argv, args)


def _run(parser, argv, args):
    """The command of parsed `args`; its exit status."""
    messages = None  # train and demo: the main job's messages on stdout
    if args.command == "export":  # its own errors and exit status
        return _export(args)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "report":
            from kertransfer.report import write_report

            print(write_report(args.run_dir))
            return 0
        if not args.quiet:  # checking --arch imports them
            print("[kertransfer] loading Keras and its backend", flush=True)
        config = _config(args)  # every setting checked before any image is read
        from kertransfer.run_folder import check_out_dir
        from kertransfer.train import removed_on_failure
        from kertransfer.train import train

        if args.command == "train":
            args.out = args.out or os.path.join("runs", os.path.basename(os.path.normpath(args.data_dir)))
        messages = contextlib.ExitStack()
        messages.enter_context(_progress_messages())
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
        # A run that fails before saving anything leaves no folder behind.
        with removed_on_failure(args.out):
            if args.command == "demo" and not args.resume:
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
    finally:
        if messages is not None:
            messages.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
