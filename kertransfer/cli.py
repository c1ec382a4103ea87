"""`kertransfer train|demo|...`: the command line."""

import argparse
import os
import sys

__all__ = ["main"]


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
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
    p.add_argument("--head-epochs", type=int, default=2, help="epochs on precomputed activations (default 2)")
    p.add_argument("--aug-epochs", type=int, default=2, help="head epochs with augmentation (default 2)")
    p.add_argument(
        "--unfrozen-cycles",
        type=_positive_int,
        default=2,
        help="SGDR cycles after unfreezing, cycle_mult=2 (default 2 = 3 epochs)",
    )
    p.add_argument("--tta", type=int, default=4, help="TTA augmented copies (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kertransfer",
        description="fast.ai-style transfer learning on Keras 3 (any backend).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run the fast.ai recipe on an image folder")
    p.add_argument("data_dir", help="folder with train/<class>/* and valid/<class>/* (or val/)")
    p.add_argument("--out", default=None, help="run folder (default runs/<data folder name>)")
    _train_args(p)
    p = sub.add_parser("demo", help="train on the sample hymenoptera data")
    p.add_argument("--dataset", default="hymenoptera", help="sample dataset (hymenoptera or dogscats)")
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="run folder (default runs/demo)")
    _train_args(p)
    p = sub.add_parser("report", help="rebuild report.html of a run folder")
    p.add_argument("run_dir", help="folder written by `kertransfer train`")
    sub.add_parser(
        "export",
        help="SavedModel (TF Serving) / LiteRT / ONNX from a run folder, validated",
        add_help=False,
    )
    return parser


def main(argv=None):
    """Entry point of the `kertransfer` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        # Its own parser (`kertransfer export --help`); TF-only code.
        from kertransfer.export import export_main

        return export_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from kertransfer.train import train

    try:
        if args.command == "report":
            from kertransfer.report import write_report

            print(write_report(args.run_dir))
            return 0
        if args.command == "demo":
            from kertransfer.datasets import untar_data

            data_dir = untar_data(args.dataset)
        else:
            data_dir = args.data_dir
        out = args.out or os.path.join("runs", os.path.basename(os.path.normpath(data_dir)))
        train(data_dir, out, _config(args), verbose=0 if args.quiet else 1)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"kertransfer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
