"""What `lr_find` and `fit` record, with fast.ai's plots (`learn.sched`).

The plots draw on the axes given, or on a new `kertransfer.figures` figure
(shown once in a notebook), and return the axes.
"""

import collections

import numpy as np

__all__ = ["FitRecord", "LRFindResult", "SuggestedLRs", "plot_schedules", "suggest_lrs"]

SuggestedLRs = collections.namedtuple("SuggestedLRs", ["min_div10", "steepest"])


def suggest_lrs(lrs, smoothed_losses, skip_start=None, skip_end=None):
    """LR suggestions from an LR range test (fastai `valley`/`steep`/`minimum`).

    - `min_div10`: the LR at the lowest smoothed loss, divided by 10
      (fast.ai lesson 1: "an order of magnitude before the minimum").
    - `steepest`: the LR where the smoothed loss falls fastest, by the
      gradient of loss against log10(LR).

    Args:
        lrs, smoothed_losses: the test's per-batch values.
        skip_start, skip_end: points left out at each end (defaults: 10 %
            and 5 % of the points, fastai's `skip_start=10, skip_end=5` on
            100 points).

    Returns:
        `SuggestedLRs(min_div10, steepest)`, floats.

    Raises:
        ValueError: with fewer than 3 usable points.
    """
    lrs = np.asarray(lrs, dtype="float64")
    losses = np.asarray(smoothed_losses, dtype="float64")
    n = min(len(lrs), len(losses))
    lrs, losses = lrs[:n], losses[:n]
    start = int(n * 0.1) if skip_start is None else skip_start
    end = int(n * 0.05) if skip_end is None else skip_end
    lrs, losses = lrs[start : n - end], losses[start : n - end]
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]
    if len(lrs) < 3:
        raise ValueError(
            f"Too few LR-finder points ({len(lrs)}) to suggest an LR. Use a "
            "smaller batch size or more training images."
        )
    min_div10 = float(lrs[np.argmin(losses)] / 10)
    grads = np.gradient(losses, np.log10(lrs))
    steepest = float(lrs[np.argmin(grads)])
    return SuggestedLRs(min_div10, steepest)


def _axes(ax, figsize=None):
    from kertransfer.figures import axes_or_new

    return axes_or_new(ax, figsize or (6, 4))


def _plot_per_batch(values, ax, figsize, ylabel, log=False):
    """One value per batch (an LR or a loss), on `ax` or a new figure."""
    ax = _axes(ax, figsize)
    ax.plot(values)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel(ylabel)
    return ax


class LRFindResult:
    """Result of `ConvLearner.lr_find`: `learn.sched` after it.

    Attributes:
        lrs: LR of the last layer group at each batch.
        losses: raw per-batch training losses.
        smoothed_losses: EMA-smoothed (beta 0.98), bias-corrected.
        batch_size: batch size the test ran at.
    """

    def __init__(self, lrs, losses, smoothed_losses, batch_size):
        self.lrs = list(lrs)
        self.losses = list(losses)
        self.smoothed_losses = list(smoothed_losses)
        self.batch_size = batch_size

    def suggestions(self):
        """`SuggestedLRs(min_div10, steepest)`; see `suggest_lrs`."""
        return suggest_lrs(self.lrs, self.smoothed_losses)

    def __repr__(self):
        """What `learn.lr_find()` shows as a notebook cell's value.

        `LRFindResult(40 batches of 16, lr 1e-05 to 0.631, suggestions:
        min/10 0.0126, steepest 0.0398)`
        """
        if not self.lrs:
            return f"LRFindResult(no batches, batch_size={self.batch_size})"
        text = f"LRFindResult({len(self.lrs)} batches of {self.batch_size}, lr {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}"
        try:
            s = self.suggestions()
        except ValueError:
            return text + ")"
        return text + f", suggestions: min/10 {s.min_div10:.3g}, steepest {s.steepest:.3g})"

    def plot(self, ax=None, mark=None, figsize=None):
        """Smoothed loss against LR (log x axis), with suggestions marked.

        Args:
            ax: matplotlib axes, or None for a new figure.
            mark: optional LR to mark as "chosen".
            figsize: `(width, height)` in inches of a new figure.

        Returns:
            The axes.
        """
        ax = _axes(ax, figsize)
        ax.plot(self.lrs, self.smoothed_losses, label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        try:
            s = self.suggestions()
            ax.axvline(s.min_div10, color="tab:green", ls="--", label=f"min/10 = {s.min_div10:.2g}")
            ax.axvline(s.steepest, color="tab:orange", ls=":", label=f"steepest = {s.steepest:.2g}")
        except ValueError:
            pass
        if mark is not None:
            ax.axvline(mark, color="tab:red", label=f"chosen = {mark:.2g}")
        ax.legend()
        return ax

    def plot_lr(self, ax=None, figsize=None):
        """The LR of each batch of the test, rising exponentially.

        fast.ai v0.7's `learn.sched.plot_lr()` right after `lr_find()`.

        Returns:
            The axes.
        """
        return _plot_per_batch(self.lrs, ax, figsize, "learning rate (log scale)", log=True)

    def plot_loss(self, ax=None, figsize=None):
        """The raw training loss of each batch of the test. Returns the axes."""
        return _plot_per_batch(self.losses, ax, figsize, "training loss")

    def to_dict(self):
        return {
            "lrs": self.lrs,
            "losses": self.losses,
            "smoothed_losses": self.smoothed_losses,
            "batch_size": self.batch_size,
        }


class FitRecord:
    """Per-batch LRs and losses of one `fit`: `learn.sched` after it.

    Attributes:
        lr_history: array `(steps, num_active_groups)` of LRs set.
        group_names: names of those groups.
        batch_losses: raw per-batch training losses.
        steps_per_epoch: batches per epoch.
        stage: name of the training stage, if any.
    """

    def __init__(self, lr_history, group_names, batch_losses, steps_per_epoch, stage=None):
        self.lr_history = np.asarray(lr_history, dtype="float64")
        self.group_names = list(group_names)
        self.batch_losses = list(batch_losses)
        self.steps_per_epoch = steps_per_epoch
        self.stage = stage

    def __repr__(self):
        """`FitRecord(stage='fit', 30 batches (10 per epoch), groups head)`."""
        return (
            f"FitRecord(stage={self.stage!r}, {len(self.lr_history)} batches "
            f"({self.steps_per_epoch} per epoch), groups {', '.join(self.group_names)})"
        )

    def to_dict(self):
        """JSON-able fields; `FitRecord(**record.to_dict())` rebuilds it."""
        return {
            "lr_history": self.lr_history.tolist(),
            "group_names": self.group_names,
            "batch_losses": [float(x) for x in self.batch_losses],
            "steps_per_epoch": self.steps_per_epoch,
            "stage": self.stage,
        }

    def plot_lr(self, ax=None, figsize=None):
        """LR of each group per batch (restarts show as jumps). Returns axes."""
        ax = _axes(ax, figsize)
        for g, name in enumerate(self.group_names):
            ax.plot(self.lr_history[:, g], label=name)
        ax.set_xlabel("batch")
        ax.set_ylabel("learning rate")
        ax.set_yscale("log")
        ax.legend()
        return ax

    def plot_loss(self, ax=None, figsize=None):
        """Raw training loss per batch. Returns the axes."""
        return _plot_per_batch(self.batch_losses, ax, figsize, "training loss")


def plot_schedules(records, ax=None, figsize=(8, 4)):
    """The LR of each layer group over several fits, stage boundaries marked.

    Args:
        records: `FitRecord`s in the order they ran (the main job's stages).
        ax: matplotlib axes, or None for a new figure.
        figsize: `(width, height)` in inches of a new figure.

    Returns:
        The axes.
    """
    ax = _axes(ax, figsize)
    offset = 0
    colors = {"group0": "tab:blue", "group1": "tab:orange", "head": "tab:green"}
    seen = set()
    for rec in records:
        steps = np.arange(len(rec.lr_history)) + offset
        for g, name in enumerate(rec.group_names):
            label = name if name not in seen else None
            seen.add(name)
            ax.plot(steps, rec.lr_history[:, g], color=colors.get(name), label=label)
        ax.axvline(offset, color="grey", lw=0.5)
        # x in batches, y in axes fraction: the label sits at the top
        # whatever the (log) LR range.
        ax.text(offset, 0.98, f" {rec.stage}", fontsize=7, va="top", rotation=90, transform=ax.get_xaxis_transform())
        offset += len(rec.lr_history)
    ax.set_yscale("log")
    ax.set_xlabel("batch (all stages)")
    ax.set_ylabel("learning rate")
    ax.set_title("LR schedule per layer group (SGDR restarts)")
    ax.legend()
    return ax

