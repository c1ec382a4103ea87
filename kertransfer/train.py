"""The main job: fast.ai lesson 1's eight steps, end to end, into a run folder."""

import functools
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from kertransfer.callbacks import RunProgbarLogger
from kertransfer.callbacks import TensorBoardLogger
from kertransfer.callbacks.kept_weights import KeptWeights
from kertransfer.callbacks.kept_weights import restore_kept
from kertransfer.config import TrainConfig
from kertransfer.console import epoch_table
from kertransfer.console import progress_bars
from kertransfer.console import stage_header
from kertransfer.data import ImageClassifierData
from kertransfer.data.sources import read_csv
from kertransfer.distribute import resolve_distribution
from kertransfer.files import atomic_path
from kertransfer.groups import trainable_groups
from kertransfer.learner import ConvLearner
from kertransfer.metrics import binary_cross_entropy
from kertransfer.metrics import fbeta
from kertransfer.metrics import opt_th
from kertransfer.no_tensorflow import set_seed
from kertransfer.progress import RunProgress
from kertransfer.progress import removed_on_failure
from kertransfer.recorder import FitRecord
from kertransfer.recorder import LRFindResult
from kertransfer.recorder import plot_schedules
from kertransfer.run_folder import RunFolder
from kertransfer.run_folder import check_out_dir
from kertransfer.schedules import sgdr_total_epochs
from kertransfer.transforms import tfms_from_model

__all__ = ["TrainConfig", "removed_on_failure", "train"]

logger = logging.getLogger(__name__)


def _choose_lr(result, cap, floor=0.0):
    """min/10 suggestion of an LR-finder result in [floor, cap]; None if unusable.

    After unfreezing, a trained head makes the loss lowest at the very start
    of the ramp, so min/10 can fall orders of magnitude too low: the floor
    keeps the choice within 10x of the head LR.
    """
    try:
        return float(min(max(result.suggestions().min_div10, floor), cap))
    except ValueError:
        return None


def _valid_loss(probs, targets, eps=1e-7):
    """Mean cross-entropy of `(n, num_classes)` probabilities (Keras's clip).

    Binary cross-entropy, averaged over tags and items, for multi-hot
    `targets` `(n, num_classes)` (the loss a multi-label run trains).
    """
    if np.ndim(targets) == 2:
        return float(np.mean(binary_cross_entropy(probs, targets, eps)))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(targets)), targets], eps, 1))))


def _read_data(data_dir, config, tfms):
    """The run's data: class folders, or a multi-label CSV with `config.csv`.

    Raises:
        FileNotFoundError: if the CSV, its image folder or an image it
            names is missing (the missing files listed).
        ValueError: on a CSV with one label in every row (single-label
            data), before any image is decoded.
    """
    kwargs = {"batch_size": config.batch_size, "tfms": tfms, "val_pct": config.val_pct, "cache": config.cache}
    if config.csv is None:
        return ImageClassifierData.from_paths(data_dir, max_images=config.max_images, **kwargs)
    # Read once without pixels: a wrong CSV fails before any decode.
    listing = read_csv(data_dir, config.folder, config.csv, suffix=config.suffix, val_pct=config.val_pct, multi_label=True)
    tags = np.concatenate([listing.splits["train"][1], listing.splits["valid"][1]])
    if np.all(tags.sum(axis=1) == 1):
        raise ValueError(
            f"The label CSV {config.csv!r} (--csv, in {data_dir}) has exactly one label in each of its "
            f"{len(tags)} rows: single-label data. `kertransfer train --csv` trains multi-label data "
            "(space-separated tags, Kaggle Planet's image_name,tags). For single-label images, put "
            "them in class folders (DATA_DIR/train/<class>/*, or DATA_DIR/<class>/*) and leave --csv out."
        )
    return ImageClassifierData.from_csv(
        data_dir, config.folder, config.csv, suffix=config.suffix, multi_label=True, **kwargs
    )


def _train_dir(data_dir, config):
    """The folder of the training images (a CSV's image folder holds the validation ones too)."""
    if config.csv is not None:
        return os.path.join(data_dir, config.folder)
    return os.path.join(data_dir, "train") if os.path.isdir(os.path.join(data_dir, "train")) else data_dir


def _multi_label_scores(probs, tta_probs, targets, per_tag):
    """`metrics.json`'s scores of a multi-label run.

    F2 (samples-averaged, Kaggle Planet's metric) of the plain and TTA
    validation predictions, at 0.5 and at the threshold(s) `opt_th` chooses
    on the plain predictions (those `predict` and the exports give, with
    no TTA), as fast.ai lesson 2 tunes its threshold on the validation set.
    """
    chosen = np.round(np.broadcast_to(opt_th(probs, targets, per_class=per_tag), probs.shape[1:]), 4)
    return {
        "multi_label": True,
        "valid_f2": fbeta(probs, targets, threshold=chosen),
        "tta_f2": fbeta(tta_probs, targets, threshold=chosen),
        "valid_f2_at_0.5": fbeta(probs, targets, threshold=0.5),
        "tta_f2_at_0.5": fbeta(tta_probs, targets, threshold=0.5),
        "thresholds": [float(t) for t in chosen],
        "per_tag_threshold": bool(per_tag),
    }


def _trainable_group_names(learn):
    """Names of the groups the next fit trains, in sub-optimizer order."""
    return [learn.group_names[i] for i in trainable_groups(learn.layer_groups)]


def _savefig(ax_or_fig, path):
    """Writes the figure of `ax_or_fig` (axes or figure) to `path` (atomically), then closes it."""
    fig = getattr(ax_or_fig, "figure", ax_or_fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)  # a figure made through pyplot (the report's plots) is forgotten; others: no-op


def _plot_schedules(records, path):
    _savefig(plot_schedules(records, ax=_new_axes()), path)


def _no_finder(learn):
    """The `LRFindResult` of an `lr_find` that did not run (`config.lr` given): no points."""
    return LRFindResult([], [], [], learn.data.batch_size)


def _new_axes(figsize=(8, 4)):
    """Axes of a figure that no backend or pyplot state knows of: written, never shown."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize).subplots()


def _job(run):
    """`run` deleting an unused run folder on failure, with progress bars when `verbose`."""

    @functools.wraps(run)
    def wrapper(data_dir, out_dir, config=None, verbose=1, *args, **kwargs):
        with removed_on_failure(out_dir), progress_bars(verbose):
            return run(data_dir, out_dir, config, verbose, *args, **kwargs)

    return wrapper


def _stages(config):
    """The steps of the main job, in order: `{name: epochs}` (0: not a fit)."""
    find = config.lr is None
    epochs = {
        "load_data": 0, "build": 0, "lr_find": 0 if find else None,
        "head_precomputed": config.head_epochs, "head_augmented": config.aug_epochs or None,
        "lr_find_unfrozen": 0 if find else None,
        "unfrozen": sgdr_total_epochs(config.unfrozen_cycles, config.cycle_len, config.cycle_mult),
        "evaluate": 0, "tta": 0, "write": 0,
    }
    return {name: n for name, n in epochs.items() if n is not None}


def _kept_reason(kept, history):
    """Which epoch's weights the run kept, and why, in one sentence."""
    last = history[-1]
    losses = [float(row["val_loss"]) for row in history]
    if not np.isfinite(losses).any():
        return (f"kept the weights of the last epoch, {last['epoch']}: no epoch had a finite validation "
                "loss (the training diverged; try a lower --max-lr or --lr)")
    n_stage = sum(r["stage"] == kept["stage"] for r in history)
    text = (f"kept the weights of epoch {kept['epoch']} of {len(history)} ({kept['stage']}, its epoch "
            f"{kept['stage_epoch']} of {n_stage}; * above): the lowest validation loss, {kept['val_loss']:.4f}")
    if kept["epoch"] == last["epoch"]:
        return text + ", at the last epoch"
    later = len(history) - kept["epoch"]
    return (text + f"; the {later} later epoch(s) did not beat it (the last ended at "
            f"{float(last['val_loss']):.4f}), so their weights were dropped")


@_job
def train(data_dir, out_dir, config=None, verbose=1, overwrite=False, resume=False, *, _scratch=False):
    """Runs the fast.ai lesson-1 recipe on `data_dir`, writing `out_dir`.

    Steps: (1) precompute=True; (2) `lr_find`, choose the LR (min/10,
    clipped to `[max_lr / 100, max_lr]` so one noisy curve cannot pick an
    absurd LR; after unfreezing, to `[lr / 10, lr]`), or take `config.lr`
    and skip both `lr_find`s; (3) train the head on precomputed activations;
    (4) precompute=False, train the head with augmentation, `cycle_len=1`;
    (5) unfreeze; (6) earlier groups at `group_ratio`x lower LRs; (7)
    `lr_find` again; (8) fit with `config.cycle_len`, `config.cycle_mult`
    (default 1 and 2). Then the
    run keeps the weights of the epoch with the lowest validation loss
    over every epoch of every stage (a head trained on precomputed
    activations is that head on the unchanged body), evaluates them and
    runs TTA. `metrics["kept"]` names that epoch: `stage`, `epoch` (of the
    run, as in `history.csv`), `stage_epoch` (of its stage, 1-based) and
    `val_loss` (as logged). The kept weights are chosen on the validation
    set that the accuracies and TTA are then measured on, as in fast.ai:
    those figures are slightly optimistic; hold out a test set for an
    unbiased one.

    Writes into `out_dir`: `model.keras` (the kept weights),
    `preprocessing.json` (the validation framing,
    `kertransfer.images.Framing`), `history.csv` (one row per epoch,
    `stage` column; `best` is True on the kept epoch's row only),
    `metrics.json`, `predictions.npz` (`probs`,
    `tta_probs`, `targets`, `paths`), `lr_find.png`,
    `lr_find_unfrozen.png`, `lr_schedule.png`, `loss.png`, `augmented.png`
    (`metrics.json` records the `distribution`: engine, devices, processes,
    global and per-device batch size; with several processes only process
    0 writes `out_dir`, the others a scratch folder they delete); with
    `config.tensorboard`, TensorBoard event files (`train/`, `validation/`).

    Resuming. While it runs, the job keeps `progress.json` (the steps done,
    their results) and `checkpoint/` (the model after the last step; the
    fit in progress backed up at every epoch's end: weights, optimizer
    state, SGDR position, data order, random generators, the best weights
    of the run so far); see `kertransfer.progress.RunProgress`.
    `model.keras` is rewritten at the end of each epoch that beats every
    earlier one (the best weights so far), so from the end of the first
    epoch on the folder always holds a loadable model. After a kill (even `kill -9`), `resume=True`
    (`kertransfer train DATA --out RUN --resume`) continues from the last
    complete epoch: finished steps are skipped (their results loaded), the
    interrupted fit continues at its epoch with the same LR schedule and
    data order, and `history.csv` has every epoch once. With the same seed
    the resumed run keeps the same epoch and ends with the weights of an
    uninterrupted one (up to floating-point noise). The time lost to the kill is not counted in
    `stage_seconds`; `metrics["resumed"]` counts the resumes. A finished
    run leaves `progress.json` (`"finished": true`) and no `checkpoint/`.

    Multi-label data (`config.csv`, Kaggle Planet's `image_name,tags`):
    the same steps with a sigmoid head and binary cross-entropy (the kept
    epoch is still the lowest validation loss); `metrics.json` then holds
    `multi_label: true`, `valid_f2`/`tta_f2` (F2 at the chosen thresholds),
    `valid_f2_at_0.5`/`tta_f2_at_0.5`, `thresholds` (one per tag, in
    `classes` order, chosen by `opt_th` on the plain validation
    predictions; `per_tag_threshold` says whether they may differ) instead
    of the accuracies, and `predictions.npz` multi-hot `targets`.

    Args:
        data_dir: fast.ai-layout folder (`train/<class>/*`, `valid|val/...`),
            Keras's `<class>/*`, or with `config.csv` the folder holding
            the CSV's image folder (`config.folder`).
        out_dir: run folder (created; deleted again if the run fails
            before its first epoch or step is saved). Every file is written
            under a temporary name and renamed into place
            (`kertransfer.run_folder.atomic_path`): a run killed while
            saving leaves the previous files whole.
        config: `TrainConfig`. With `resume`, None uses the run's own; a
            config given must equal it.
        verbose: 1 shows progress bars (`keras.utils.Progbar`): decoding,
            precomputing, each `lr_find`, each epoch (numbered over the
            whole run, as in `history.csv`), evaluation and TTA. What
            the job does and finds (a header as each stage starts, sizes,
            LRs, the table of epochs, the kept epoch and why, accuracies)
            goes to the `kertransfer.train` logger at INFO level, also with
            `verbose=0` (the command line shows it; in Python,
            `logging.basicConfig(level="INFO")`).
        overwrite: allow an `out_dir` that already holds a run; its files
            are replaced as the new run writes them.
        resume: continue the run in `out_dir` (see above). A finished run
            is left as it is (its metrics are returned). Not together with
            `overwrite`, which starts a new run there.

    Returns:
        The metrics dict (also in `metrics.json`).

    Raises:
        FileExistsError: if `out_dir` holds a run and neither `overwrite`
            nor `resume` is set (checked before any data is read).
        FileNotFoundError: with `resume`, if `out_dir` is not a run folder
            that can be resumed (no `progress.json`), before any work.
        ImportError: with `config.tensorboard` but no TensorFlow/TensorBoard.
        ValueError: on a bad `config.distribute`, or a `config.batch_size`
            that does not divide by its device count (before any data is
            read); with `resume`, on `overwrite` too, on a `config` or
            `data_dir` other than the run's, or images that changed since
            the run started.

    Example:

    ```python
    config = TrainConfig(image_size=224, seed=0)
    train("data/dogscats", "runs/dogscats", config)
    # killed? then:
    train("data/dogscats", "runs/dogscats", resume=True)
    ```
    """
    wall = time.time()
    say = logger.info

    # Before anything is read or built: a bad switch or batch, or a run
    # folder holding a run (or, resuming, not holding one), fails fast.
    if resume:
        if overwrite:
            raise ValueError(
                "resume=True (--resume) continues the run in out_dir and overwrite=True "
                "(--overwrite) replaces it with a new one: pass one of them."
            )
        progress = RunProgress.load(out_dir)
        if progress.finished:
            say(f"the run in {out_dir} is finished; nothing to resume")
            return RunFolder(out_dir).read_metrics()
        if config is None:
            config = TrainConfig(**progress.recorded_settings())
        progress.check_same(config, data_dir)
    config = config or TrainConfig()
    replicas = resolve_distribution(config.distribute)
    replicas.check_batch_size(config.batch_size)
    if replicas.processes > 1 and resume:
        raise ValueError(
            f"resume=True (--resume) is not supported with {replicas.processes} "
            "processes yet: restart the run without it, or resume on one process."
        )
    if not replicas.is_chief and not _scratch:
        # Only process 0 writes the run folder; the others train beside it,
        # writing into a scratch folder deleted at the end.
        scratch = tempfile.mkdtemp(prefix=f"kertransfer-process{replicas.process_index}-")
        try:
            return train(data_dir, os.path.join(scratch, "run"), config, verbose=0, _scratch=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if not resume:
        check_out_dir(out_dir, overwrite)
    stage_seconds = {}
    stages = _stages(config)

    def header(name, detail=""):
        """Names the stage starting now: `── stage 3/10: head_precomputed (...) ──`."""
        say(stage_header(list(stages).index(name) + 1, len(stages), name, detail))

    def timed(name, fn, *args, **kwargs):
        t = time.time()
        result = fn(*args, **kwargs)
        stage_seconds[name] = stage_seconds.get(name, 0.0) + round(time.time() - t, 2)
        return result

    if config.seed is not None:
        set_seed(int(config.seed))
    # Keras's progress bar, each epoch numbered in the run (as history.csv).
    progbar = RunProgbarLogger(sum(stages.values()))
    callbacks = [progbar]
    log_dir = None
    tensorboard = None
    if config.tensorboard:
        log_dir = os.path.join(out_dir, "tensorboard") if config.tensorboard is True else os.fspath(config.tensorboard)
        tensorboard = TensorBoardLogger(log_dir, group_names=lambda: _trainable_group_names(learn))
        callbacks.append(tensorboard)
    tfms = tfms_from_model(config.arch, config.image_size)
    header("load_data", f"read and decode the images of {data_dir}")
    data = timed("load_data", _read_data, data_dir, config, tfms)
    n_train = len(data.train_index)
    if n_train // config.batch_size < 2:
        # lr_find needs two full batches; say so before the model is built.
        raise ValueError(
            f"batch_size={config.batch_size} (--batch-size) needs at least "
            f"{2 * config.batch_size} training images (two batches for lr_find); "
            f"{data_dir} has {n_train}. Use --batch-size {max(1, n_train // 2)} or less, "
            "or add images."
        )
    fingerprints = {split: data.fingerprint(split) for split in ("train", "valid")}
    if resume:
        progress.check_data(fingerprints)
        progress.count_resume()
        for name, seconds in progress.meta["stage_seconds"].items():
            stage_seconds[name] = stage_seconds.get(name, 0.0) + seconds
        wall -= progress.meta["wall_seconds"]
        say(f"resuming {out_dir}: done {', '.join(progress.meta['stages']) or 'nothing yet'}")
    else:
        progress = RunProgress.start(out_dir, config, data_dir, fingerprints)
    say(f"{len(data.train_paths)} train / {len(data.valid_paths)} valid images, classes {data.classes}, skipped {len(data.skipped)}")
    # What the model sees in the augmented stages (fast.ai `plots` of aug_tfms).
    data.plot_augmented(n=6, path=os.path.join(out_dir, "augmented.png"), images=[0, len(data.train_paths) - 1])
    header("build", f"{config.arch} with a new head, weights {config.weights}")
    learn = timed(
        "build", ConvLearner.pretrained, config.arch, data, precompute=True,
        weights=config.weights, distribution=replicas,
    )
    if replicas.devices > 1:
        say(f"data parallel: {replicas.engine} over {replicas.devices} devices, "
            f"{config.batch_size // replicas.devices} images per device")
    run = RunFolder(out_dir)
    # The best weights by validation loss over every epoch of every stage.
    kept_weights = KeptWeights(learn, run.model_path)
    # Resuming: the weights, best weights so far and random generators of
    # the last step done (nothing on a new run).
    with replicas.scope():
        progress.restore(learn.model, stateful=[kept_weights])
    learn.history = [dict(row) for row in progress.meta["history"]]

    def commit(name, result):
        progress.commit(
            name, result, learn.model, learn.history, stage_seconds, time.time() - wall,
            stateful=[kept_weights],
        )

    def fit_stage(name, lrs, n_cycle, detail, **kwargs):
        """One fit, backed up every epoch, skipped when done; its FitRecord."""
        if progress.done(name):
            header(name, "done before the resume")
            return FitRecord(**progress.result(name)["record"])
        header(name, f"{stages[name]} epoch{'s' if stages[name] > 1 else ''}, {detail}")
        if tensorboard is not None:
            # The run's epoch and batch numbers go on from the fits before.
            tensorboard.epochs_logged = len(learn.history)
            tensorboard.batches_logged = sum(len(r.lr_history) for r in records)
        progbar.epochs_before, progbar.stage = len(learn.history), name
        kept_weights.stage = name
        timed(
            name, learn.fit, lrs, n_cycle, stage=name, callbacks=[*callbacks, kept_weights],
            verbose=verbose, backup_dir=progress.backup_dir(name), **kwargs,
        )
        commit(name, {"record": learn.sched.to_dict()})
        return learn.sched

    # (1)-(2): precompute, find the head LR (or take config.lr).
    if config.lr is not None:
        finder, lr = _no_finder(learn), config.lr
    elif progress.done("lr_find"):
        header("lr_find", "done before the resume")
        finder, lr = LRFindResult(**progress.result("lr_find")["finder"]), progress.result("lr_find")["lr"]
    else:
        header("lr_find", "precompute the body's activations, then the LR range test of the head")
        finder = timed("lr_find", learn.lr_find, verbose=verbose)
        lr = _choose_lr(finder, config.max_lr, floor=config.max_lr / 100) or config.max_lr
        _savefig(finder.plot(ax=_new_axes((6, 4)), mark=lr), os.path.join(out_dir, "lr_find.png"))
        commit("lr_find", {"lr": lr, "finder": finder.to_dict()})
    say(f"{'given' if config.lr is not None else 'lr_find ->'} lr={lr:.3g}")
    records = []
    lrs_used = {}

    # (3) head on precomputed activations.
    records.append(fit_stage("head_precomputed", lr, config.head_epochs, f"LR {lr:.3g}, the head on precomputed activations"))
    lrs_used["head_precomputed"] = [lr]

    # (4) head with augmentation, SGDR cycle_len=1.
    learn.precompute = False
    if config.aug_epochs:
        records.append(fit_stage(
            "head_augmented", lr, config.aug_epochs, f"LR {lr:.3g}, SGDR cycle_len=1, the head on augmented images",
            cycle_len=1,
        ))
        lrs_used["head_augmented"] = [lr]

    # (5)-(8) unfreeze, differential LRs, lr_find again, SGDR (cycle_len, cycle_mult).
    learn.bn_freeze(config.bn_freeze)
    learn.unfreeze()
    n_groups = len(learn.layer_groups)
    ratios = [config.group_ratio ** -(n_groups - 1 - i) for i in range(n_groups)]
    if config.lr is not None:
        finder2, lr2 = _no_finder(learn), config.lr
    elif progress.done("lr_find_unfrozen"):
        header("lr_find_unfrozen", "done before the resume")
        found = progress.result("lr_find_unfrozen")
        finder2, lr2 = LRFindResult(**found["finder"]), found["lr"]
    else:
        header("lr_find_unfrozen", f"the LR range test of all layers, groups at 1/{config.group_ratio:g} steps")
        finder2 = timed("lr_find_unfrozen", learn.lr_find, group_ratios=ratios, verbose=verbose)
        lr2 = _choose_lr(finder2, lr, floor=lr / 10) or lr
        _savefig(finder2.plot(ax=_new_axes((6, 4)), mark=lr2), os.path.join(out_dir, "lr_find_unfrozen.png"))
        commit("lr_find_unfrozen", {"lr": lr2, "finder": finder2.to_dict()})
    lrs = [lr2 * r for r in ratios]
    say(f"unfrozen {'' if config.lr is not None else 'lr_find -> '}lrs={[float(f'{x:.3g}') for x in lrs]}")
    records.append(fit_stage(
        "unfrozen", np.array(lrs), config.unfrozen_cycles,
        f"LRs {[float(f'{x:.3g}') for x in lrs]}, SGDR cycle_len={config.cycle_len}, cycle_mult={config.cycle_mult}",
        cycle_len=config.cycle_len, cycle_mult=config.cycle_mult,
    ))
    lrs_used["unfrozen"] = lrs

    # The best weights of the whole run: on a small dataset, fine-tuning the
    # body (or augmentation) can make things worse, or diverge; then an
    # earlier stage's weights are kept.
    kept = restore_kept(learn, kept_weights, replicas)

    # Evaluate, TTA.
    header("evaluate", f"the kept weights on the {len(data.valid_paths)} validation images")
    probs, targets = timed("evaluate", learn.predict, verbose=verbose)
    # With no augmented copies there is nothing to blend: TTA is the plain
    # prediction (not computed twice).
    if config.n_aug:
        header("tta", f"the original and {config.n_aug} augmented copies of each validation image")
        tta_probs, _ = timed("tta", learn.TTA, config.n_aug, beta=config.tta_beta, verbose=verbose)
    else:
        header("tta", "no augmented copies with --n-aug 0: the plain prediction")
        tta_probs, stage_seconds["tta"] = probs, 0.0
    valid_loss = _valid_loss(probs, targets)
    if data.is_multi:
        scores = _multi_label_scores(probs, tta_probs, targets, config.per_tag_threshold)
    else:
        scores = {
            "valid_accuracy": float((probs.argmax(1) == targets).mean()),
            "tta_accuracy": float((tta_probs.argmax(1) == targets).mean()),
        }
    metrics = {
        **scores,
        "valid_loss": valid_loss,
        "classes": data.classes,
        "data_dir": os.path.abspath(data_dir),
        # Training images, e.g. for int8 calibration by `kertransfer export`.
        "train_dir": os.path.abspath(_train_dir(data_dir, config)),
        "arch": config.arch,
        "image_size": config.image_size,
        "crop_pct": data.valid_tfms.crop_pct,
        "batch_size": config.batch_size,
        "distribution": replicas.to_dict(config.batch_size),
        "seed": config.seed,
        "lrs": lrs_used,
        "kept": kept,
        # How copies are blended, here and by `kertransfer predict --tta`.
        "tta_beta": config.tta_beta,
        "epochs": len(learn.history),
        "dataset": data.summary(),
        "stage_seconds": stage_seconds,
        "resumed": progress.meta["resumes"],
    }
    if log_dir is not None:
        metrics["tensorboard"] = os.path.abspath(log_dir)
        say(f"TensorBoard logs in {log_dir}: tensorboard --logdir {log_dir}")

    # Write the run folder.
    header("write", "model, predictions, history, plots, report")
    run.write_model(learn)
    # How a photo becomes a model input: read by predict, export, serving.
    data.valid_tfms.framing.save(out_dir)
    run.write_predictions(
        probs=probs,
        tta_probs=tta_probs,
        targets=targets,
        paths=np.asarray([os.path.abspath(p) for p in data.valid_paths]),
    )
    run.write_history(learn.history)
    with atomic_path(os.path.join(out_dir, "lr_find.json")) as tmp, open(tmp, "w") as f:
        json.dump({"head": finder.to_dict(), "unfrozen": finder2.to_dict(), "chosen": {"head": lr, "unfrozen": lr2}}, f)
    _plot_schedules(records, os.path.join(out_dir, "lr_schedule.png"))
    from kertransfer.report import plot_history
    from kertransfer.report import write_report

    # The report's loss plot, the kept epoch starred.
    _savefig(plot_history(learn.history, kept), os.path.join(out_dir, "loss.png"))
    metrics["wall_seconds"] = round(time.time() - wall, 1)
    run.write_metrics(metrics)
    report = write_report(out_dir)
    progress.finish()
    # fastai's table of the epochs (as history.csv), then the kept epoch and why.
    for line in epoch_table(learn.history, kept["epoch"]):
        say(line)
    say(_kept_reason(kept, learn.history))
    if data.is_multi:
        say(
            f"valid F2 {metrics['valid_f2']:.4f}, TTA F2 {metrics['tta_f2']:.4f} at threshold(s) "
            f"{sorted(set(metrics['thresholds']))} (at 0.5: {metrics['valid_f2_at_0.5']:.4f})"
        )
    else:
        say(f"valid accuracy {metrics['valid_accuracy']:.4f}, TTA accuracy {metrics['tta_accuracy']:.4f}")
    say(f"wrote {out_dir} in {metrics['wall_seconds']} s; report: {report}")
    return metrics
