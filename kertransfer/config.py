"""`TrainConfig`: the main job's settings, and the `kertransfer train` flags made from them.

Each field carries its help text, its check and how the command line spells
it, so `TrainConfig(...)` in Python and `kertransfer train --flag` share
one default, one help text and one error. Imports neither Keras nor a
backend: `kertransfer --help` stays fast.
"""

import argparse
import dataclasses
import math
import numbers

__all__ = [
    "BUILTIN_ARCHS", "TrainConfig", "add_config_flags", "config_from_args", "non_negative_int", "positive_int",
]

# The backbones kertransfer registers (`kertransfer.backbones.list_backbones()`
# without user registrations), listed here so that `--help` needs no Keras;
# tests/test_config.py checks the two agree.
BUILTIN_ARCHS = (
    "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    "mobilenet_v2", "mobilenet_v3_small", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "resnext50_32x4d", "resnext101_32x8d", "tv_resnet50",
)


class _Rule:
    """What a number setting must be: one check for Python and the command line."""

    def __init__(self, kind, text, test=lambda value: True, optional=False):
        self.kind, self.text, self.test, self.optional = kind, text, test, optional

    def check(self, name, value):
        if value is None and self.optional:
            return
        number = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number) or not self.test(value):
            raise ValueError(f"TrainConfig {name} must be {self.text}. Received {name}={value!r}.")

    def parse(self, text):
        """argparse `type=`: the value of `text`, or an error argparse names the flag in."""
        if self.optional and _none_word(text) is None:
            return None
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.text}, got {text}") from None
        if not self.test(value):
            raise argparse.ArgumentTypeError(f"must be {self.text}, got {text}")
        return value


_AT_LEAST_1 = _Rule(int, "an integer >= 1", lambda v: v >= 1)
_AT_LEAST_0 = _Rule(int, "an integer >= 0", lambda v: v >= 0)
_POSITIVE = _Rule(float, "a number > 0", lambda v: 0 < v < math.inf)
# argparse `type=`s of the other commands' count flags.
positive_int = _AT_LEAST_1.parse
non_negative_int = _AT_LEAST_0.parse


def _setting(default, help, rule=None, cli_default=dataclasses.MISSING, from_cli=None, aliases=(), **argparse_kwargs):
    """A `TrainConfig` field with what `add_config_flags` needs to make its flag."""
    metadata = {"help": help, "rule": rule, "aliases": aliases, "argparse": argparse_kwargs, "from_cli": from_cli}
    if cli_default is not dataclasses.MISSING:
        metadata["cli_default"] = cli_default
    return dataclasses.field(default=default, metadata=metadata)


def _none_word(text):
    """`--weights none`, `--cache none`: None."""
    return None if text is not None and str(text).lower() == "none" else text


@dataclasses.dataclass
class TrainConfig:
    """Knobs of the main job (`kertransfer.train.train`); defaults follow fast.ai lesson 1.

    Every field is also a flag of `kertransfer train` / `kertransfer demo`
    (`image_size` is `--image-size`), with the same default and help;
    `kertransfer train --help` lists them. Each is checked when the config
    is made, before any image is read.

    Args:
        arch: backbone name (`kertransfer.backbones.list_backbones()`).
            Default EfficientNet-Lite2, the most accurate offline backbone
            whose main job fits 10 minutes on a 2-core CPU
            (`benchmarks/bench_main_job.py`; README: the arch table).
        image_size: model input side, pixels; None (default): the size
            the arch was trained at (its `BackboneSpec.default_image_size`:
            224 for Lite0 and the ResNets, 240 for Lite1, 260 for Lite2),
            set on the config when it is made.
        batch_size: images per batch (over all devices).
        weights: `"imagenet"`, None or a local weights file.
        head_epochs: epochs of head training on precomputed activations.
        aug_epochs: cycles (of 1 epoch) training the head with augmentation.
        unfrozen_cycles: SGDR cycles after unfreezing, the first
            `cycle_len` epochs, each next `cycle_mult` times longer (with
            1 and 2: 1 -> 1, 2 -> 3, 3 -> 7 epochs).
        group_ratio: each earlier layer group's LR is this much lower.
        max_lr: upper bound on the LR chosen from `lr_find`.
        n_aug: TTA augmented copies (0: plain prediction). Default 0:
            on the sample data TTA did not beat the plain prediction on
            every seed (hymenoptera, `benchmarks/bench_main_job.py`: equal
            on average, one photo better or worse per run; dogscats: worse),
            so the plain prediction is the default; fast.ai's `learn.TTA()`
            used 4 copies (`--n-aug 4`).
        bn_freeze: keep the body's BatchNorm frozen after unfreezing
            (fast.ai `bn_freeze(True)`, which fast.ai advises for large
            models). Default False: the BatchNorm layers train with the
            body, which gave fewer wrong TTA predictions on hymenoptera
            (the README lists the runs).
        tensorboard: None (off), True (log to `<out_dir>/tensorboard`) or a
            folder: per-epoch losses, metrics and per-group LRs of every fit,
            through `keras.callbacks.TensorBoard` (needs TensorFlow and
            TensorBoard installed, whatever the Keras backend).
        seed: None, or an int passed to `kertransfer.set_seed` (`keras.utils.set_random_seed`)
            (Python, NumPy and backend generators: head initialisation,
            shuffling, crops, augmentation) at the start of the run, so that
            a run can be repeated (fast.ai `set_seed`). Repeats match on the
            same backend and machine; other hardware may differ slightly.
        val_pct: fraction of the images held out (seeded) for validation
            when the data folder has no `valid/`/`val/` folder (Keras's
            `DATA_DIR/<class>/*` layout, or `train/` alone), or of the
            CSV's rows with `csv`.
        cache: where decoded images live: `"auto"` (memory up to 2 GB,
            else streamed), `"memory"`, `"disk"` or None (streamed); see
            `ImageClassifierData.from_paths`.
        distribute: None (one device, or the `keras.distribution` /
            `tf.distribute` scope current when `train` is called), `"none"`
            or `"data_parallel"` (every device: JAX
            `keras.distribution.DataParallel`, TensorFlow
            `MirroredStrategy`); see `ConvLearner.pretrained`.
            `batch_size` stays the global batch and must divide by the
            device count.
        cycle_len: epochs of the first unfrozen cycle.
        cycle_mult: growth of each next unfrozen cycle.
        lr: None (choose the LR with `lr_find`, as fast.ai lesson 1), or
            the head's LR, also the last group's LR after unfreezing; then
            no `lr_find` runs.
        max_images: None, or at most this many images per split (training,
            validation), drawn seeded and spread evenly over the classes: a
            quick smoke run of the whole recipe (not with `csv`).
        csv: None (class folders), or a multi-label CSV of Kaggle Planet's
            format (`image_name,tags`, tags space-separated; a file name
            inside the data folder, or a path): the images are
            `<data_dir>/<folder>/<image_name><suffix>`, `val_pct` of the rows
            are held out (seeded), and the run trains a sigmoid head with
            binary cross-entropy, scored by F2 at the threshold `opt_th`
            chooses on the validation set (fast.ai lesson 2's Planet).
        folder: with `csv`, the image folder inside the data folder.
        suffix: with `csv`, what follows each `image_name` in its file name.
        per_tag_threshold: with `csv`, choose one threshold per tag
            (`opt_th(per_class=True)`) instead of one for all tags.
        tta_beta: None, or the weight in [0, 1] of the un-augmented
            prediction in TTA against the mean of the `n_aug` augmented
            copies (fast.ai v2 `Learner.tta`, whose default 0.25 this is);
            None takes the plain mean over all `n_aug + 1` predictions
            (fast.ai v0.7). Recorded in `metrics.json`; `kertransfer
            predict --tta` blends the same way. The default follows
            `benchmarks/bench_main_job.py` (README: the arch table).

    Raises:
        ValueError: on a setting out of its range (naming it), an `arch`
            that is not registered, or `max_images` below two batches.

    Example:

    ```python
    config = TrainConfig(image_size=128, max_images=64, seed=0)
    train("data/dogscats", "runs/smoke", config)
    ```
    """

    arch: str = _setting(
        "efficientnet_lite2",
        f"backbone: {', '.join(BUILTIN_ARCHS)}, or a name registered with "
        "kertransfer.register_keras_backbone by code named in $KERTRANSFER_BACKBONES",
        metavar="ARCH",
    )
    image_size: int = _setting(
        None, "model input side in pixels (default: the arch's own, e.g. 224 for Lite0 and ResNets, "
        "260 for Lite2)", _Rule(int, "an integer >= 1", lambda v: v >= 1, optional=True),
    )
    batch_size: int = _setting(32, "images per batch (over all devices)", _AT_LEAST_1)
    weights: str = _setting(
        "imagenet", "'imagenet', 'none' (random initialisation), or a local weights file (offline use)",
        from_cli=_none_word,
    )
    head_epochs: int = _setting(2, "epochs training the head on precomputed activations", _AT_LEAST_1)
    aug_epochs: int = _setting(2, "epochs training the head with augmentation (0: none)", _AT_LEAST_0)
    unfrozen_cycles: int = _setting(
        2, "SGDR cycles after unfreezing (with --cycle-len 1 --cycle-mult 2: 2 cycles = 3 epochs)", _AT_LEAST_1
    )
    group_ratio: float = _setting(10.0, "each earlier layer group trains at an LR this many times lower", _POSITIVE)
    max_lr: float = _setting(0.01, "upper bound of the LR chosen by lr_find", _POSITIVE)
    n_aug: int = _setting(
        0, "TTA augmented copies (0: plain prediction; fast.ai used 4)", _AT_LEAST_0, aliases=("--tta",)
    )
    bn_freeze: bool = _setting(
        False, "keep the body's BatchNorm frozen after unfreezing (fast.ai bn_freeze(True); default: they train)",
        action="store_true",
    )
    tensorboard: object = _setting(
        None, "log losses, metrics and per-group LRs per epoch for TensorBoard (default DIR: "
        "<run folder>/tensorboard; give it after data_dir; needs tensorflow and tensorboard)",
        nargs="?", const=True, metavar="DIR",
    )
    seed: int = _setting(
        None, "seed all random generators (keras.utils.set_random_seed) to repeat a run (default: unseeded)",
        _Rule(int, "an integer", optional=True),
    )
    val_pct: float = _setting(
        0.2, "fraction held out for validation (seeded) when DATA_DIR has no valid/ or val/ folder, "
        "e.g. Keras's DATA_DIR/<class>/* layout, or of the rows of --csv", _Rule(float, "in (0, 1)", lambda v: 0 < v < 1),
    )
    cache: str = _setting(
        "auto", "where decoded images live: memory, a disk cache, or none (decoded for every batch); "
        "auto = memory up to 2 GB of decoded images, else none",
        from_cli=_none_word, choices=["auto", "memory", "disk", "none"],
    )
    distribute: object = _setting(
        None, "data_parallel: train on every device with the backend's own engine (JAX "
        "keras.distribution.DataParallel, also over the processes named by KERAS_DISTRIBUTION_*; "
        "TensorFlow MirroredStrategy; torch under torchrun); --batch-size is the global batch and "
        "must divide by the device count",
        cli_default="none", choices=["none", "data_parallel"],
    )
    # Newer settings last: positional calls of the old ones keep their meaning.
    cycle_len: int = _setting(1, "epochs of the first SGDR cycle after unfreezing", _AT_LEAST_1)
    cycle_mult: int = _setting(2, "each next SGDR cycle after unfreezing is this many times longer", _AT_LEAST_1)
    lr: float = _setting(
        None, "the head's LR, also the last layer group's after unfreezing; given, no lr_find runs "
        "(default: chosen by lr_find)", _Rule(float, "a number > 0", lambda v: 0 < v < math.inf, optional=True),
    )
    max_images: int = _setting(
        None, "a quick smoke run: at most N images per split, drawn seeded and spread over the classes "
        "(default: all)", _Rule(int, "an integer >= 1", lambda v: v >= 1, optional=True), metavar="N",
    )
    csv: str = _setting(
        None, "multi-label data: a CSV of Kaggle Planet's format (image_name,tags with space-separated "
        "tags), in DATA_DIR or a path; images are DATA_DIR/FOLDER/<image_name>SUFFIX; trains a sigmoid "
        "head scored by F2 (default: class folders, single-label)", metavar="LABELS.csv",
    )
    folder: str = _setting("train-jpg", "with --csv: the image folder inside DATA_DIR", metavar="FOLDER")
    suffix: str = _setting(".jpg", "with --csv: appended to each image_name to name its file", metavar="SUFFIX")
    per_tag_threshold: bool = _setting(
        False, "with --csv: choose one threshold per tag on the validation set (default: one for all tags)",
        action="store_true",
    )
    tta_beta: float = _setting(
        0.25, "TTA: weight of the un-augmented prediction against the mean of the augmented copies "
        "(fast.ai v2 Learner.tta); none: the plain mean over all copies (fast.ai v0.7)",
        _Rule(float, "a number in [0, 1], or none", lambda v: 0 <= v <= 1, optional=True), metavar="BETA",
    )

    def __post_init__(self):
        # Checked here, before any image is read (not after minutes of training).
        for field in dataclasses.fields(self):
            rule = field.metadata["rule"]
            if rule is not None:
                rule.check(field.name, getattr(self, field.name))
        # Imports Keras, so only once a config is made (not for --help).
        from kertransfer.backbones import get_backbone

        spec = get_backbone(self.arch)  # an unknown arch fails here, naming the known ones
        if self.image_size is None:
            self.image_size = int(spec.default_image_size)
        if self.cache not in ("auto", "memory", "disk", None):
            raise ValueError(
                f"TrainConfig cache must be 'auto', 'memory', 'disk' or None. Received cache={self.cache!r}."
            )
        if self.csv is None:
            given = [
                f"{name}={getattr(self, name)!r} (--{name.replace('_', '-')})"
                for name in ("folder", "suffix", "per_tag_threshold")
                if getattr(self, name) != _DEFAULTS[name]
            ]
            if given:
                raise ValueError(
                    f"TrainConfig {', '.join(given)} only applies to multi-label data read from a CSV: "
                    "pass csv='labels.csv' (--csv labels.csv) too, or leave them out."
                )
        elif self.max_images is not None:
            raise ValueError(
                f"TrainConfig max_images={self.max_images} (--max-images) is not supported with "
                f"csv={self.csv!r} (--csv) yet: leave it out, or write a CSV of fewer rows."
            )
        if self.max_images is not None and self.max_images < 2 * self.batch_size:
            raise ValueError(
                f"max_images={self.max_images} (--max-images) leaves fewer than two batches of "
                f"batch_size={self.batch_size} (--batch-size) for training: pass --max-images "
                f"{2 * self.batch_size} or more, or a smaller --batch-size."
            )


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}

# Settings whose default is not what runs did before the setting existed:
# a run recorded then (`kertransfer.progress.RunProgress`) resumes with the
# value that does what it did. (Settings absent here: their default does.)
SETTINGS_BEFORE_THEY_EXISTED = {
    "tta_beta": None,  # TTA was fast.ai v0.7's plain mean
}


def add_config_flags(parser):
    """Adds one flag per `TrainConfig` field to an `argparse` parser.

    `image_size` becomes `--image-size` (plus any aliases: `--tta` for
    `--n-aug`), with the field's default, help and check (argparse then
    names the flag in its error).
    """
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        default = meta.get("cli_default", field.default)
        shown = "" if isinstance(default, bool) or default is None else f" (default: {default})"
        kwargs = {"dest": field.name, "default": default, "help": meta["help"] + shown}
        if meta["rule"] is not None:
            kwargs["type"] = meta["rule"].parse
        kwargs.update(meta["argparse"])
        parser.add_argument("--" + field.name.replace("_", "-"), *meta["aliases"], **kwargs)


def config_from_args(args):
    """The `TrainConfig` of parsed `add_config_flags` flags (`argparse.Namespace`)."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name)
        convert = field.metadata["from_cli"]
        values[field.name] = convert(value) if convert else value
    return TrainConfig(**values)
