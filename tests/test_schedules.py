import math

import keras
import numpy as np
import pytest

from kertransfer import schedules
from kertransfer.callbacks import raw_batch_losses
from kertransfer.recorder import suggest_lrs

# schedules, raw_batch_losses and suggest_lrs are numpy: the TensorFlow pass
# checks them (the SGDR callback itself runs on every backend in
# test_callbacks.py).
pytestmark = pytest.mark.one_backend


@pytest.mark.parametrize(
    "n_cycle,cycle_len,cycle_mult,expected",
    [(3, 1, 2, 7), (3, 1, 1, 3), (2, 2, 1, 4), (4, 1, 3, 40), (5, None, 1, 5), (1, 3, 2, 3)],
)
def test_total_epochs_closed_form(n_cycle, cycle_len, cycle_mult, expected):
    assert schedules.sgdr_total_epochs(n_cycle, cycle_len, cycle_mult) == expected


@pytest.mark.parametrize("bad", [dict(n_cycle=0), dict(n_cycle=1, cycle_len=0), dict(n_cycle=1, cycle_len=1, cycle_mult=0)])
def test_total_epochs_rejects_bad_args(bad):
    with pytest.raises(ValueError):
        schedules.sgdr_total_epochs(**bad)


def test_sgdr_restarts_and_anneals():
    # 2 steps/epoch, cycle_len=1, cycle_mult=2: cycles of 2, 4, 8 steps.
    mults = [schedules.sgdr_multiplier(s, 2, 1, 2) for s in range(14)]
    restarts = [s for s, m in enumerate(mults) if m == 1.0]
    assert restarts == [0, 2, 6]
    assert mults[1] == pytest.approx(0.5)  # halfway through a 2-step cycle
    assert mults[4] == pytest.approx(0.5)  # halfway through the 4-step cycle
    assert mults[3] == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize("cycle_mult", [1, 2])
def test_sgdr_matches_keras_cosine_decay_restarts(cycle_mult):
    steps_per_epoch, cycle_len, base = 5, 2, 0.1
    keras_sched = keras.optimizers.schedules.CosineDecayRestarts(
        base, first_decay_steps=steps_per_epoch * cycle_len, t_mul=float(cycle_mult), m_mul=1.0, alpha=0.0
    )
    total = schedules.sgdr_total_epochs(3, cycle_len, cycle_mult) * steps_per_epoch
    ours = schedules.sgdr_lrs(base, 3, steps_per_epoch, cycle_len, cycle_mult)[:, 0]
    # One call on all the steps (the schedule is elementwise): one op per
    # step is slow under JAX.
    theirs = keras.ops.convert_to_numpy(keras_sched(np.arange(total, dtype="float32")))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_sgdr_lrs_per_group_scale_and_constant_without_cycle_len():
    lrs = schedules.sgdr_lrs([1e-4, 1e-3, 1e-2], 2, 3, cycle_len=1)
    assert lrs.shape == (6, 3)
    np.testing.assert_allclose(lrs[:, 1] / lrs[:, 0], 10)
    flat = schedules.sgdr_lrs(0.01, 3, 4)
    assert flat.shape == (12, 1) and np.all(flat == 0.01)


def test_sched_functions():
    assert schedules.sched_cos(1.0, 0.0, 0.0) == 1.0
    assert schedules.sched_cos(1.0, 0.0, 1.0) == pytest.approx(0.0)
    assert schedules.sched_exp(1e-5, 10, 0.5) == pytest.approx(1e-5 * (1e6) ** 0.5)
    with pytest.raises(ValueError, match="positive"):
        schedules.sched_exp(0, 1, 0.5)


def test_expand_lrs():
    assert schedules.expand_lrs(0.01, 3) == [0.01] * 3
    assert schedules.expand_lrs(np.array([1e-4, 1e-3, 1e-2]), 3) == [1e-4, 1e-3, 1e-2]
    np.testing.assert_allclose(schedules.expand_lrs(slice(1e-4, 1e-2), 3), [1e-4, 1e-3, 1e-2])
    assert schedules.expand_lrs(slice(1e-2), 3) == [1e-3, 1e-3, 1e-2]
    with pytest.raises(ValueError, match="3 layer groups"):
        schedules.expand_lrs([1e-3, 1e-2], 3)
    with pytest.raises(ValueError, match="positive"):
        schedules.expand_lrs(-1.0, 2)


def test_raw_batch_losses_inverts_running_mean_with_any_batch_sizes():
    raw = np.array([2.0, 1.0, 4.0, 0.5, 0.25])
    running = np.cumsum(raw) / np.arange(1, 6)
    np.testing.assert_allclose(raw_batch_losses(running), raw)
    # A short last batch: Keras's mean is weighted by batch size (hand
    # computed: the weighted running mean of `raw` over batches of 4, 4, 4, 4, 2).
    sizes = np.array([4, 4, 4, 4, 2])
    weighted = np.cumsum(raw * sizes) / np.cumsum(sizes)
    np.testing.assert_allclose(raw_batch_losses(weighted, sizes), raw)
    assert not np.allclose(raw_batch_losses(weighted)[-1], raw[-1])  # sizes matter
    with pytest.raises(ValueError, match="one batch size per running mean"):
        raw_batch_losses(weighted, sizes[:-1])


def test_suggest_lrs_on_a_known_curve():
    lrs = np.geomspace(1e-5, 10, 100)
    x = np.log10(lrs)
    # Loss falls steepest at 1e-3 (tanh centre) and is lowest near 1e-1.
    loss = 2 - np.tanh(2 * (x + 3)) + np.where(x > -1, 5 * (x + 1) ** 2, 0)
    s = suggest_lrs(lrs, loss)
    assert s.steepest == pytest.approx(1e-3, rel=0.2)
    assert 5e-3 < s.min_div10 < 2e-2
    with pytest.raises(ValueError, match="Too few"):
        suggest_lrs(lrs[:2], loss[:2])


def test_one_cycle_multiplier_end_points_and_checks():
    # fastai v2 combined_cos(pct_start, 1/div, 1, 1/div_final): cosine up, then down.
    assert schedules.one_cycle_multiplier(0.0, 0.25, 25.0, 1e5) == pytest.approx(1 / 25)
    assert schedules.one_cycle_multiplier(0.125, 0.25, 25.0, 1e5) == pytest.approx((1 / 25 + 1) / 2)
    assert schedules.one_cycle_multiplier(0.25, 0.25, 25.0, 1e5) == pytest.approx(1.0)
    assert schedules.one_cycle_multiplier(1.0, 0.25, 25.0, 1e5) == pytest.approx(1e-5)
    assert schedules.one_cycle_multiplier(0.0, 0.0) == pytest.approx(1.0)  # no warm-up
    with pytest.raises(ValueError, match=r"pct_start .* \[0, 1\)"):
        schedules.one_cycle_multiplier(0.5, pct_start=1.0)
    with pytest.raises(ValueError, match="div and div_final"):
        schedules.one_cycle_multiplier(0.5, div=0)
