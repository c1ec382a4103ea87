"""fastai v2's drivers (`fit_sgdr`, `fit_one_cycle`, `fine_tune`) and `learn.lr_finder`, on tiny data."""

import math

import keras
import numpy as np
import pytest

from kertransfer.learner import ConvLearner


def _learner(data, precompute=True):
    return ConvLearner.pretrained("tiny_cnn", data, precompute=precompute, weights=None)


def _fastai_one_cycle(lr_max, pct, pct_start, div, div_final):
    """fastai v2 `combined_cos(pct_start, lr_max/div, lr_max, lr_max/div_final)`, written out.

    `SchedCos(start, end)(pos) = start + (1 + cos(pi * (1 - pos))) * (end - start) / 2`.
    """
    def sched_cos(start, end, pos):
        return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2

    if pct < pct_start:
        return sched_cos(lr_max / div, lr_max, pct / pct_start)
    return sched_cos(lr_max, lr_max / div_final, (pct - pct_start) / (1 - pct_start))


def test_fit_one_cycle_follows_fastai_closed_form_per_group(tiny_data):
    learn = _learner(tiny_data, precompute=False)
    learn.unfreeze()
    learn.fit_one_cycle(2, lr_max=slice(1e-4, 1e-2), pct_start=0.3, div=10.0, div_final=1e4, verbose=0)
    record = learn.sched
    steps = record.steps_per_epoch
    total = 2 * steps
    assert record.lr_history.shape == (total, 3) and len(learn.history) == 2
    for group, lr_max in enumerate([1e-4, 1e-3, 1e-2]):
        want = [_fastai_one_cycle(lr_max, s / total, 0.3, 10.0, 1e4) for s in range(total)]
        np.testing.assert_allclose(record.lr_history[:, group], want, rtol=1e-9)
    # The LRs reach Keras's logs (History) as SGDR's do: the last batch's.
    np.testing.assert_allclose(
        learn.history[-1]["learning_rate_head"], record.lr_history[-1, 2], rtol=1e-6
    )


def test_fit_sgdr_matches_keras_cosine_decay_restarts(tiny_data):
    learn = _learner(tiny_data)
    hist = learn.fit_sgdr(2, 1, lr_max=0.05, verbose=0)  # cycle_mult=2: 1 + 2 epochs
    # The return value: Keras's History, whose text (a notebook cell's
    # value) is the last epoch's numbers, as `learn.history` recorded them.
    assert isinstance(hist, keras.callbacks.History) and hist.epoch == [0, 1, 2]
    last = learn.history[-1]
    np.testing.assert_allclose(hist.history["val_loss"][-1], last["val_loss"], rtol=1e-6)
    assert repr(hist).startswith("FitHistory(epochs=3, ") and "learning_rate" not in repr(hist)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert f"{key}={last[key]:.4f}" in repr(hist)
    record = learn.sched
    steps = record.steps_per_epoch
    assert len(learn.history) == 3 and record.lr_history.shape == (3 * steps, 1)
    keras_sched = keras.optimizers.schedules.CosineDecayRestarts(
        0.05, first_decay_steps=steps, t_mul=2.0, m_mul=1.0, alpha=0.0
    )
    theirs = keras.ops.convert_to_numpy(keras_sched(np.arange(3 * steps, dtype="float32")))
    np.testing.assert_allclose(record.lr_history[:, 0], theirs, rtol=1e-5, atol=1e-8)


def test_fine_tune_trains_the_head_then_everything_at_discriminative_lrs(tiny_data):
    learn = _learner(tiny_data)
    body = [w.copy() for w in learn.backbone.get_weights()]
    records = []
    real_fit = learn._fit

    def spy(*args, **kwargs):
        body_at_start = [w.copy() for w in learn.backbone.get_weights()]
        hist = real_fit(*args, **kwargs)
        records.append((learn.sched, body_at_start))
        return hist

    learn._fit = spy
    learn.fine_tune(1, base_lr=0.02, freeze_epochs=1, lr_mult=100, verbose=0)
    assert [r["stage"] for r in learn.history] == ["fine_tune_frozen", "fine_tune_unfrozen"]
    (frozen, body_before_unfrozen), (unfrozen, _) = records
    # Stage 1: the head alone (on precomputed activations: the body is
    # untouched), 1cycle at base_lr with pct_start=0.99 and fastai's divs.
    assert frozen.group_names == ["head"]
    for a, b in zip(body, body_before_unfrozen, strict=True):
        np.testing.assert_array_equal(a, b)
    n = len(frozen.lr_history)
    want = [_fastai_one_cycle(0.02, s / n, 0.99, 25.0, 1e5) for s in range(n)]
    np.testing.assert_allclose(frozen.lr_history[:, 0], want, rtol=1e-9)
    # Stage 2: every group, slice(base_lr / 2 / lr_mult, base_lr / 2):
    # geometric 1e-4, 1e-3, 1e-2, 1cycle with pct_start=0.3, div=5.
    assert unfrozen.group_names == ["group0", "group1", "head"] and not learn.precompute
    n = len(unfrozen.lr_history)
    for group, lr_max in enumerate([1e-4, 1e-3, 1e-2]):
        want = [_fastai_one_cycle(lr_max, s / n, 0.3, 5.0, 1e5) for s in range(n)]
        np.testing.assert_allclose(unfrozen.lr_history[:, group], want, rtol=1e-6)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(body, learn.backbone.get_weights()))


@pytest.mark.one_backend
def test_drivers_reject_bad_arguments(tiny_data):
    learn = _learner(tiny_data)
    with pytest.raises(ValueError, match="pct_start .* must be in \\[0, 1\\)"):
        learn.fit_one_cycle(1, pct_start=1.0)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        learn.fit_one_cycle(0)
    with pytest.raises(ValueError, match="freeze_epochs must be an integer >= 0"):
        learn.fine_tune(1, freeze_epochs=-1)
    with pytest.raises(ValueError, match="cycle_len must be a positive whole number"):
        learn.fit_sgdr(1, 0)


def test_lr_find_keeps_its_result_apart_from_the_fits(tiny_data):
    learn = _learner(tiny_data)
    assert learn.lr_finder is None
    learn.fit(1e-2, 1, verbose=0)
    fit_record = learn.sched
    finder = learn.lr_find(min_steps=8)
    # fast.ai v0.7's order: lr_find(), then sched.plot_lr() draws the ramp
    # the finder ran (exponential from start_lr), and sched.plot() its curve.
    assert learn.lr_finder is finder and learn.sched is finder
    (line,) = learn.sched.plot_lr().get_lines()
    lrs = np.asarray(line.get_ydata())
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], lrs[1] / lrs[0], rtol=1e-6)
    assert learn.sched.plot().get_xscale() == "log"
    # A fit after it: sched is that fit's schedule, the finder stays.
    learn.fit(1e-2, 1, verbose=0)
    assert learn.sched is not fit_record and learn.sched.lr_history.shape[1] == 1
    assert learn.lr_finder is finder


def test_history_rows_hold_each_epochs_lrs_and_seconds(tiny_data, monkeypatch):
    """`learn.history` (history.csv): the LRs the epoch trained at and its own seconds.

    The seconds come from a fake clock that moves only when `Ticks` says so
    (fixed amounts at known moments of the fit), so each epoch's seconds are
    known exactly: no sleeps, no wall-clock tolerance.
    """
    import types

    from kertransfer import fitting

    clock = [1000.0]
    monkeypatch.setattr(fitting, "time", types.SimpleNamespace(time=lambda: clock[0]))

    class Ticks(keras.callbacks.Callback):  # after the fit's own callbacks
        def on_train_begin(self, logs=None):
            clock[0] += 8.0  # before the first epoch: counts in it

        def on_train_batch_end(self, batch, logs=None):
            clock[0] += 1.0

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                clock[0] += 32.0  # a slow save at the end of epoch 2: counts in it

        def on_train_end(self, logs=None):
            clock[0] += 4.0  # Keras's end of the fit: counts in the last epoch

    learn = _learner(tiny_data)
    learn.fit_sgdr(2, 1, lr_max=0.05, callbacks=[Ticks()], verbose=0)  # cycle_mult=2: 1 + 2 epochs
    steps = learn.sched.steps_per_epoch
    # SGDR written out: a cosine from 0.05 to 0 over each cycle (1, then 2 epochs).
    cycles = [steps, 2 * steps]
    want = np.array([0.05 * (1 + math.cos(math.pi * t / n)) / 2 for n in cycles for t in range(n)])
    rows = learn.history
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for e, row in enumerate(rows):
        epoch = want[e * steps : (e + 1) * steps]
        assert row["learning_rate_head"] == pytest.approx(epoch[-1], rel=1e-5)  # its last batch's (Keras)
        assert row["lr"] == pytest.approx(epoch.max(), rel=1e-6)  # the largest it trained at
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, want[2 * steps]])
    # Each epoch's own seconds, adding up to all the fit's clock ticks.
    assert [r["seconds"] for r in rows] == [8.0 + steps, steps + 32.0, steps + 4.0]
    assert sum(r["seconds"] for r in rows) == clock[0] - 1000.0
