"""Learning-rate schedules as pure functions of progress.

Everything here is plain Python/numpy: no Keras, no backend. Callbacks in
`kertransfer.callbacks` turn these into per-batch learning rates.

Sources:
- SGDR: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
  Restarts" (ICLR 2017), as used by fast.ai v0.7 `CosAnneal` (`cycle_len`,
  `cycle_mult`).
- LR range test: Smith, "Cyclical Learning Rates for Training Neural
  Networks" (WACV 2017), fast.ai v0.7 `LR_Finder`.
- 1cycle: Smith, "Super-Convergence" (2018), as fastai v2
  `fit_one_cycle` (`combined_cos`).
"""

import math

import numpy as np

# Moved to `kertransfer.groups` (the home of layer groups); kept here for
# code written against kertransfer 0.1.
from kertransfer.groups import expand_lrs

__all__ = [
    "sched_cos",
    "sched_exp",
    "sgdr_total_epochs",
    "sgdr_cycle_position",
    "sgdr_multiplier",
    "one_cycle_multiplier",
    "sgdr_lrs",
    "expand_lrs",
]


def sched_cos(start, end, pct):
    """Cosine annealing from `start` to `end` as `pct` goes from 0 to 1.

    `end + (start - end) / 2 * (1 + cos(pi * pct))` (fastai's `sched_cos`).
    """
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * pct))


def sched_exp(start, end, pct):
    """Exponential ramp `start * (end / start) ** pct` (fastai's `sched_exp`).

    Raises:
        ValueError: if `start` or `end` is not positive.
    """
    if start <= 0 or end <= 0:
        raise ValueError(
            "An exponential schedule needs positive start and end values. "
            f"Received start={start}, end={end}."
        )
    return start * (end / start) ** pct


def _check_cycle_args(n_cycle, cycle_len, cycle_mult):
    if int(n_cycle) != n_cycle or n_cycle < 1:
        raise ValueError(
            f"n_cycle must be a positive integer. Received n_cycle={n_cycle}."
        )
    if cycle_len is not None and (
        int(cycle_len) != cycle_len or cycle_len < 1
    ):
        raise ValueError(
            "cycle_len must be a positive whole number of epochs or None. "
            f"Received cycle_len={cycle_len}."
        )
    if int(cycle_mult) != cycle_mult or cycle_mult < 1:
        raise ValueError(
            "cycle_mult must be a positive integer (1 keeps cycles equal). "
            f"Received cycle_mult={cycle_mult}."
        )


def sgdr_total_epochs(n_cycle, cycle_len=None, cycle_mult=1):
    """Number of epochs `fit(lrs, n_cycle, cycle_len, cycle_mult)` runs.

    `cycle_len * (1 + m + ... + m**(n_cycle - 1))`, with the `cycle_mult == 1`
    case explicit (the closed form `(m**n - 1) / (m - 1)` divides by zero
    there). Without `cycle_len` there is no annealing and `fit` runs
    `n_cycle` epochs, as in fast.ai v0.7.

    Args:
        n_cycle: number of cycles (positive int).
        cycle_len: epochs in the first cycle, or None.
        cycle_mult: each cycle is `cycle_mult` times longer than the last.

    Returns:
        int, epochs.

    Raises:
        ValueError: on a non-positive or non-integer argument.

    Example:

    >>> sgdr_total_epochs(3, cycle_len=1, cycle_mult=2)
    7
    """
    _check_cycle_args(n_cycle, cycle_len, cycle_mult)
    if cycle_len is None:
        return int(n_cycle)
    if cycle_mult == 1:
        return int(cycle_len * n_cycle)
    return int(cycle_len * (cycle_mult**n_cycle - 1) // (cycle_mult - 1))


def sgdr_cycle_position(step, steps_per_epoch, cycle_len, cycle_mult=1):
    """Where batch `step` falls in an SGDR run.

    Args:
        step: 0-based batch index since the start of `fit`.
        steps_per_epoch: batches per epoch.
        cycle_len: epochs in the first cycle.
        cycle_mult: growth factor of cycle length.

    Returns:
        `(cycle_index, pct)`: the 0-based cycle and the fraction of it done
        before this batch, in `[0, 1)`.
    """
    first = steps_per_epoch * cycle_len
    if cycle_mult == 1:
        return step // first, (step % first) / first
    cycle, start, length = 0, 0, first
    while step >= start + length:
        start += length
        length *= cycle_mult
        cycle += 1
    return cycle, (step - start) / length


def sgdr_multiplier(step, steps_per_epoch, cycle_len=None, cycle_mult=1):
    """Fraction of the base LR to use at batch `step` under SGDR.

    Within each cycle the LR follows `sched_cos(1, 0, pct)`: it starts at the
    base LR and anneals towards 0 (fast.ai v0.7 `CosAnneal`), restarting at
    the base LR when a cycle ends. Without `cycle_len` the LR is constant.

    Returns:
        float in `(0, 1]`.
    """
    if cycle_len is None:
        return 1.0
    _, pct = sgdr_cycle_position(step, steps_per_epoch, cycle_len, cycle_mult)
    return sched_cos(1.0, 0.0, pct)


def one_cycle_multiplier(pct, pct_start=0.25, div=25.0, div_final=1e5):
    """Fraction of the maximum LR at progress `pct` of a 1cycle fit.

    fastai v2 `fit_one_cycle`'s `combined_cos(pct_start, lr_max / div,
    lr_max, lr_max / div_final)` over `lr_max = 1`: a cosine warm-up from
    `1 / div` to 1 over the first `pct_start` of the fit, then a cosine
    annealing from 1 to `1 / div_final`.

    Args:
        pct: progress in `[0, 1]`: steps done over the fit's total steps.
        pct_start: fraction of the fit spent warming up, in `[0, 1)`.
        div: the LR starts at `lr_max / div` (> 0).
        div_final: the LR ends at `lr_max / div_final` (> 0).

    Returns:
        float in `(0, 1]`.

    Raises:
        ValueError: on `pct_start` outside `[0, 1)` or a `div` that is not
            positive.

    Example:

    >>> one_cycle_multiplier(0.25)
    1.0
    >>> one_cycle_multiplier(0.0)
    0.04
    """
    if not 0 <= pct_start < 1:
        raise ValueError(
            "pct_start is the fraction of the fit spent warming up and must be in [0, 1). "
            f"Received pct_start={pct_start}."
        )
    if not (div > 0 and div_final > 0):
        raise ValueError(
            f"div and div_final divide the maximum LR and must be > 0. Received div={div}, "
            f"div_final={div_final}."
        )
    if pct < pct_start:
        return sched_cos(1.0 / div, 1.0, pct / pct_start)
    return sched_cos(1.0, 1.0 / div_final, (pct - pct_start) / (1.0 - pct_start))


def sgdr_lrs(base_lrs, n_cycle, steps_per_epoch, cycle_len=None, cycle_mult=1):
    """The whole per-batch SGDR schedule, one column per layer group.

    Args:
        base_lrs: float or sequence of per-group base LRs.
        n_cycle, cycle_len, cycle_mult: as in `ConvLearner.fit`.
        steps_per_epoch: batches per epoch.

    Returns:
        numpy array `(total_steps, num_groups)`.
    """
    base = np.atleast_1d(np.asarray(base_lrs, dtype="float64"))
    total = sgdr_total_epochs(n_cycle, cycle_len, cycle_mult) * steps_per_epoch
    mult = np.array(
        [
            sgdr_multiplier(s, steps_per_epoch, cycle_len, cycle_mult)
            for s in range(total)
        ]
    )
    return mult[:, None] * base[None, :]
