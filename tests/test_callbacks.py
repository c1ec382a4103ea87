"""Callbacks on plain `model.fit`, on every backend: per-group LRs really
drive each group's update, SGDR follows its closed form at any
`steps_per_execution`, batch losses are exact, LRFinder leaves no trace."""

import pathlib
import re

import keras
import numpy as np
import pytest

from kertransfer.callbacks import SGDR
from kertransfer.callbacks import BatchLosses
from kertransfer.callbacks import KeepBestWeights
from kertransfer.callbacks import LRFinder
from kertransfer.callbacks import raw_batch_losses
from kertransfer.groups import group_optimizer
from kertransfer.no_tensorflow import set_seed

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# Keras 3.15's torch trainer refuses steps_per_execution > 1.
SPE = 1 if keras.backend.backend() == "torch" else 3


def _tiny_model():
    set_seed(1)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation="tanh", name="g0")(inputs)
    x = keras.layers.Dense(5, activation="tanh", name="g1")(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, out)
    groups = [
        [model.get_layer("g0")],
        [model.get_layer("g1")],
        [model.get_layer("head")],
    ]
    return model, groups


def _keep_best_setup(seed, lr):
    """Random 3-class data (32, 6) and `_tiny_model` compiled with SGD(lr)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 3, size=32).astype("int32")
    model, _ = _tiny_model()
    model.compile(
        optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy"
    )
    return model, x, y


def _one_step_deltas(lrs, x, y, initial):
    model, groups = _tiny_model()
    model.set_weights(initial)
    opt, active = group_optimizer(
        groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.0] * 3
    )
    assert active == [0, 1, 2]
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    # The LRs are set by the SGDR callback (constant: no cycle_len) per batch.
    model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[SGDR(lrs, steps_per_epoch=1)],
    )
    return [
        model.get_layer(name).get_weights()[0] - initial[i * 2]
        for i, name in enumerate(["g0", "g1", "head"])
    ]


def test_each_group_moves_by_its_own_lr():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16).astype("int32")
    initial, _ = _tiny_model()
    initial = initial.get_weights()
    same = _one_step_deltas([0.1, 0.1, 0.1], x, y, initial)
    diff = _one_step_deltas([0.001, 0.01, 0.1], x, y, initial)
    # One plain-SGD step from the same weights and batch: delta = -lr * grad,
    # so each group's update scales exactly with its own LR.
    for g, scale in enumerate([0.01, 0.1, 1.0]):
        assert np.abs(same[g]).max() > 1e-6
        # Tolerance: float32 rounding of (w_new - w_old) on weights of order 1.
        tol = 1e-3 * np.abs(same[g] * scale).max()
        np.testing.assert_allclose(diff[g], same[g] * scale, rtol=1e-3, atol=tol)


def test_sgdr_callback_schedule_over_restarts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 3, size=8).astype("int32")
    model, groups = _tiny_model()
    opt, _ = group_optimizer(
        groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.0] * 3
    )
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if keras.backend.backend() == "jax":
                self.model.jax_state_sync()
            seen.append(
                [
                    float(keras.ops.convert_to_numpy(o.learning_rate))
                    for o in self.model.optimizer.optimizers
                ]
            )

    sgdr = SGDR([1e-3, 1e-2, 1e-1], steps_per_epoch=2, cycle_len=1, cycle_mult=2)
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[sgdr, Probe()])
    seen = np.array(seen)
    assert seen.shape == (6, 3)
    np.testing.assert_allclose(seen, np.array(sgdr.lr_history), rtol=1e-6)
    np.testing.assert_allclose(seen[[0, 2], 2], [0.1, 0.1])  # restart at step 2
    np.testing.assert_allclose(seen[3, 2], 0.1 * (1 + np.cos(np.pi / 4)) / 2, rtol=1e-5)


def test_sgdr_rejects_wrong_number_of_lrs():
    model, groups = _tiny_model()
    opt, _ = group_optimizer(
        groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.1] * 3
    )
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    x = np.zeros((4, 6), "float32")
    y = np.zeros(4, "int32")
    with pytest.raises(ValueError, match="2 learning rates for 3"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[SGDR([0.1, 0.2], 1)])


def test_lr_finder_ramps_exponentially_and_stops_on_divergence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model, _ = _tiny_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy"
    )
    finder = LRFinder(1e-4, 1e4, num_steps=50)
    model.fit(
        x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[finder]
    )
    lrs = np.array(finder.lrs)
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, (1e8) ** (1 / 49), rtol=1e-6)
    assert len(finder.losses) < 50  # a LR of 1e4 diverges: stopped early
    assert finder.smoothed_losses[-1] > 4 * min(
        finder.smoothed_losses
    ) or not np.isfinite(finder.smoothed_losses[-1])


def test_keep_best_weights_restores_best_epoch():
    model, x, y = _keep_best_setup(0, 0.5)
    best = KeepBestWeights()
    snapshots = []

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append((logs["val_loss"], self.model.get_weights()))

    model.fit(
        x, y, validation_data=(x, y), epochs=4, verbose=0, callbacks=[Snap(), best]
    )
    i = int(np.argmin([s[0] for s in snapshots]))
    assert best.best_epoch == i
    for a, b in zip(model.get_weights(), snapshots[i][1]):
        np.testing.assert_allclose(a, b)


def test_keep_best_weights_baseline_keeps_the_starting_weights():
    # A wild LR makes every epoch worse than the start: with the start's
    # loss as baseline the starting weights come back; without, they don't.
    model, x, y = _keep_best_setup(1, 50.0)
    start_weights = model.get_weights()
    start_loss = float(model.evaluate(x, y, verbose=0))
    best = KeepBestWeights(baseline=start_loss)
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[best])
    assert best.best_epoch is None and best.best == start_loss
    for a, b in zip(model.get_weights(), start_weights):
        np.testing.assert_array_equal(a, b)

    model.set_weights(start_weights)
    model.compile(
        optimizer=keras.optimizers.SGD(50.0), loss="sparse_categorical_crossentropy"
    )
    unanchored = KeepBestWeights(baseline=float("nan"))  # a NaN baseline is ignored
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[unanchored])
    assert unanchored.best_epoch is not None
    assert not np.allclose(model.get_weights()[0], start_weights[0])


def _sync(model):
    if keras.backend.backend() == "jax":
        model.jax_state_sync()


class _WeightsAtBatchBegin(keras.callbacks.Callback):
    """Copies of the weights each batch trains from."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_begin(self, batch, logs=None):
        _sync(self.model)
        self.weights.append(self.model.get_weights())


def _linear_regression(n=22):
    """A linear model `(n, 4) -> (n, 2)` under MSE, and its data."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    set_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    return model, x, y


def _mse_by_hand(weights, x, y):
    kernel, bias = (w.astype("float64") for w in weights)
    return float(np.mean((x @ kernel + bias - y) ** 2))


def _true_batch_losses(snapshots, x, y, batch_size):
    """The loss of batch k of each epoch at the weights it trained from (no shuffle)."""
    starts = list(range(0, len(x), batch_size))
    return [
        _mse_by_hand(
            w,
            x[starts[k % len(starts)] :][:batch_size],
            y[starts[k % len(starts)] :][:batch_size],
        )
        for k, w in enumerate(snapshots)
    ]


def test_batch_losses_are_each_batch_loss_with_a_short_last_batch():
    model, x, y = _linear_regression(22)  # batches of 8, 8 and 6
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    snaps, losses, means = _WeightsAtBatchBegin(), BatchLosses(), []
    running = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: means.append(logs["loss"])
    )
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[snaps, losses, running],
    )

    want = _true_batch_losses(snaps.weights, x, y, 8)
    assert losses.sizes == [8, 8, 6] * 2
    np.testing.assert_allclose(losses.losses, want, rtol=1e-5)
    assert abs(want[2] - want[1]) > 1e-3  # the batches differ: a wrong batch would show
    # The offline inversion of Keras's running mean agrees, given the sizes.
    for epoch in range(2):
        part = slice(3 * epoch, 3 * epoch + 3)
        np.testing.assert_allclose(
            raw_batch_losses(means[part], [8, 8, 6]), want[part], rtol=1e-4
        )


def test_lr_finder_records_each_batch_loss_and_writes_the_lr_to_the_logs():
    model, x, y = _linear_regression(22)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    finder = LRFinder(1e-3, 1e-1, num_steps=3, stop_factor=1e9)
    # After the finder: its LR is set, the weights are not changed yet.
    snaps = _WeightsAtBatchBegin()
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[finder, snaps],
    )

    np.testing.assert_allclose(
        finder.losses, _true_batch_losses(snaps.weights, x, y, 8), rtol=1e-5
    )
    np.testing.assert_allclose(finder.lrs, [1e-3, 1e-2, 1e-1], rtol=1e-6)
    # One optimizer: Keras's `learning_rate` key, the LR of the epoch's last batch.
    assert history.history["learning_rate"] == [pytest.approx(1e-1, rel=1e-6)]


def _optimizer_arrays(model):
    _sync(model)
    return [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]


def test_lr_finder_in_plain_fit_restores_weights_and_optimizer_state():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model, _ = _tiny_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    # Momentum and step count are not zero.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    weights, opt_state = model.get_weights(), _optimizer_arrays(model)
    assert int(opt_state[0]) == 4 and np.abs(opt_state[-1]).max() > 0

    trained = []
    probe = keras.callbacks.LambdaCallback(
        on_train_end=lambda logs: trained.append(model.get_weights())
    )
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[probe, LRFinder(1e-3, 10.0, num_steps=8)],
    )

    assert not np.allclose(trained[0][0], weights[0])  # the range test did train
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_optimizer_arrays(model), opt_state, strict=True):
        np.testing.assert_array_equal(got, want)

    # A fit that raises never gets to on_train_end: `restore_snapshot()` in a
    # `finally` (as `ConvLearner.lr_find` does) puts the start back.
    def interrupt(batch, logs):
        if batch == 2:
            raise KeyboardInterrupt

    finder = LRFinder(1e-3, 10.0, num_steps=8)
    stop = keras.callbacks.LambdaCallback(on_train_batch_end=interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[finder, stop])
    assert not np.allclose(model.get_weights()[0], weights[0])
    assert finder.restore_snapshot() and not finder.restore_snapshot()
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "callback",
    [SGDR(0.1, cycle_len=1), LRFinder(num_steps=4)],
    ids=["SGDR", "LRFinder"],
)
def test_a_learning_rate_schedule_optimizer_fails_before_the_first_batch(callback):
    model, _ = _tiny_model()
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.1, decay_steps=10, decay_rate=0.5
    )
    model.compile(
        optimizer=keras.optimizers.SGD(schedule), loss="sparse_categorical_crossentropy"
    )
    batches = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: batches.append(b)
    )
    x, y = np.zeros((8, 6), "float32"), np.zeros(8, "int32")
    with pytest.raises(TypeError, match="LearningRateSchedule.*Build it with a float"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback, probe])
    assert batches == []


def _keras_sgdr(base_lrs, first_decay_steps, t_mul, steps):
    """Keras's own SGDR, `CosineDecayRestarts`: `(len(steps), len(base_lrs))` LRs."""
    return np.stack(
        [
            keras.ops.convert_to_numpy(
                keras.optimizers.schedules.CosineDecayRestarts(
                    lr, first_decay_steps=first_decay_steps, t_mul=t_mul, alpha=0.0
                )(np.asarray(steps, "float32"))
            )
            for lr in base_lrs
        ],
        axis=-1,
    )


def test_sgdr_lrs_and_batch_losses_take_effect_with_nothing_else_touching_the_model():
    """Only `SGDR` and `BatchLosses` run (under JAX they set the LRs in, and
    read the losses from, the trainer's in-flight state, without a sync):
    the final weights and every batch's loss show the LR each step trained with.

    Three parallel `Dense(1)` branches, one per group, summed; the loss is
    the mean prediction, so each kernel's gradient is the (repeated) input
    row and each bias's is 1, whatever the weights: after `t` steps each
    group has moved by `-(sum of its first t LRs) * gradient`.
    """
    set_seed(0)
    names = ["g0", "g1", "head"]
    inputs = keras.Input((4,))
    outputs = keras.layers.Add()([keras.layers.Dense(1, name=n)(inputs) for n in names])
    model = keras.Model(inputs, outputs)
    groups = [[model.get_layer(n)] for n in names]
    opt, _ = group_optimizer(groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.0] * 3)
    model.compile(optimizer=opt, loss=lambda y_true, y_pred: keras.ops.mean(y_pred))
    row = np.array([1.0, -2.0, 0.5, 3.0], "float32")
    x, y = np.tile(row, (12, 1)), np.zeros((12, 1), "float32")  # 6 equal batches of 2
    start = {n: model.get_layer(n).get_weights() for n in names}
    base = [1e-3, 1e-2, 1e-1]
    losses = BatchLosses()
    model.fit(
        x, y, batch_size=2, epochs=3, shuffle=False, verbose=0,
        callbacks=[SGDR(base, cycle_len=1, cycle_mult=2), losses],
    )
    lrs = _keras_sgdr(base, 6, 2.0, np.arange(18)).astype("float64")  # (steps, groups)
    moved = lrs.sum(axis=0)
    for g, name in enumerate(names):
        kernel, bias = model.get_layer(name).get_weights()
        np.testing.assert_allclose(kernel[:, 0], start[name][0][:, 0] - moved[g] * row, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bias, start[name][1] - moved[g], rtol=1e-4, atol=1e-5)
    # Batch t's loss, before its step: the start's minus what the first t steps moved.
    loss0 = sum(float(row @ start[n][0][:, 0] + start[n][1][0]) for n in names)
    before = np.concatenate([[0.0], np.cumsum(lrs.sum(axis=1))[:-1]])
    np.testing.assert_allclose(losses.losses, loss0 - before * (row @ row + 1), rtol=1e-4, atol=1e-4)


def test_sgdr_follows_keras_cosine_decay_restarts_with_steps_per_execution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(14, 6)).astype("float32")  # 7 batches of 2 per epoch
    y = rng.integers(0, 3, size=14).astype("int32")
    model, groups = _tiny_model()
    opt, _ = group_optimizer(
        groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.0] * 3
    )
    model.compile(
        optimizer=opt, loss="sparse_categorical_crossentropy", steps_per_execution=SPE
    )
    seen = []

    class Probe(keras.callbacks.Callback):
        # After SGDR: the LRs this execution trains with.
        def on_train_batch_begin(self, batch, logs=None):
            _sync(self.model)
            lrs = [
                float(keras.ops.convert_to_numpy(o.learning_rate))
                for o in self.model.optimizer.optimizers
            ]
            seen.append(
                (int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)), lrs)
            )

    base = [1e-3, 1e-2, 1e-1]
    sgdr = SGDR(base, cycle_len=1, cycle_mult=2)  # steps per epoch from Keras: 7
    history = model.fit(
        x,
        y,
        batch_size=2,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[sgdr, Probe()],
    )

    def closed_form(steps):  # cycles of 7, then 14 steps
        return _keras_sgdr(base, 7, 2.0, steps)

    # Each execution's first step.
    starts = [e * 7 + b for e in range(3) for b in range(0, 7, SPE)]
    assert [step for step, _ in seen] == starts
    np.testing.assert_allclose([lrs for _, lrs in seen], closed_form(starts), rtol=1e-5)
    # One entry per step: each execution's LRs for each of its steps.
    owner = [max(s for s in starts if s <= step) for step in range(21)]
    np.testing.assert_allclose(sgdr.lr_history, closed_form(owner), rtol=1e-5)
    # Per-group LRs in History: those of each epoch's last execution, named after the groups.
    last = [max(s for s in starts if s < 7 * (e + 1)) for e in range(3)]
    for g, name in enumerate(["group0", "group1", "group2"]):
        np.testing.assert_allclose(
            history.history[f"learning_rate_{name}"], closed_form(last)[:, g], rtol=1e-5
        )


def test_readme_plain_model_fit_snippet_runs(synthetic_folder, monkeypatch, tmp_path):
    """The README's `model.fit` example, as written, with a tiny backbone on small images."""
    text = README.read_text()
    section = text[text.index("## Plain `model.fit`") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    config = 'arch, size, folder = "efficientnet_lite0", 224, "data/hymenoptera"\n'
    assert code.count(config) == 1, (
        "the README snippet's first line of settings changed"
    )
    code = code.replace(
        config, f'arch, size, folder = "tiny_cnn", 32, {str(synthetic_folder)!r}\n'
    )
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (the README's own code)

    history, model = namespace["history"].history, namespace["model"]
    assert len(history["loss"]) == 7 and np.all(np.isfinite(history["loss"]))
    spe = model.steps_per_execution
    assert spe == (1 if keras.backend.backend() == "torch" else 4)
    # Each group's LR at each epoch's end: the schedule at the step where the
    # epoch's last execution starts (cycles of 1, 2 and 4 epochs).
    steps = len(namespace["train_ds"])
    last = [e * steps + (steps - 1) // spe * spe for e in range(7)]
    want = _keras_sgdr([1e-4, 1e-3, 1e-2], steps, 2.0, last)
    for g, name in enumerate(["body0", "body1", "head"]):
        np.testing.assert_allclose(
            history[f"learning_rate_{name}"], want[:, g], rtol=1e-5
        )
