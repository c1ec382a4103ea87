"""Per-group learning rates really drive each group's update, on every backend."""

import keras
import numpy as np
import pytest

from kertransfer.callbacks import SGDR
from kertransfer.callbacks import KeepBestWeights
from kertransfer.callbacks import LRFinder
from kertransfer.groups import group_optimizer


def _tiny_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation="tanh", name="g0")(inputs)
    x = keras.layers.Dense(5, activation="tanh", name="g1")(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, out)
    groups = [[model.get_layer("g0")], [model.get_layer("g1")], [model.get_layer("head")]]
    return model, groups


def _keep_best_setup(seed, lr):
    """Random 3-class data (32, 6) and `_tiny_model` compiled with SGD(lr)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 3, size=32).astype("int32")
    model, _ = _tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy")
    return model, x, y


def _one_step_deltas(lrs, x, y, initial):
    model, groups = _tiny_model()
    model.set_weights(initial)
    opt, active = group_optimizer(groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.0] * 3)
    assert active == [0, 1, 2]
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    # The LRs are set by the SGDR callback (constant: no cycle_len) per batch.
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False, callbacks=[SGDR(lrs, steps_per_epoch=1)])
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
    opt, _ = group_optimizer(groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.0] * 3)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if keras.backend.backend() == "jax":
                self.model.jax_state_sync()
            seen.append([float(keras.ops.convert_to_numpy(o.learning_rate)) for o in self.model.optimizer.optimizers])

    sgdr = SGDR([1e-3, 1e-2, 1e-1], steps_per_epoch=2, cycle_len=1, cycle_mult=2)
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[sgdr, Probe()])
    seen = np.array(seen)
    assert seen.shape == (6, 3)
    np.testing.assert_allclose(seen, np.array(sgdr.lr_history), rtol=1e-6)
    np.testing.assert_allclose(seen[[0, 2], 2], [0.1, 0.1])  # restart at step 2
    np.testing.assert_allclose(seen[3, 2], 0.1 * (1 + np.cos(np.pi / 4)) / 2, rtol=1e-5)


def test_sgdr_rejects_wrong_number_of_lrs():
    model, groups = _tiny_model()
    opt, _ = group_optimizer(groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.1] * 3)
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
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    finder = LRFinder(1e-4, 1e4, num_steps=50)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[finder])
    lrs = np.array(finder.lrs)
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, (1e8) ** (1 / 49), rtol=1e-6)
    assert len(finder.losses) < 50  # a LR of 1e4 diverges: stopped early
    assert finder.smoothed_losses[-1] > 4 * min(finder.smoothed_losses) or not np.isfinite(finder.smoothed_losses[-1])


def test_keep_best_weights_restores_best_epoch():
    model, x, y = _keep_best_setup(0, 0.5)
    best = KeepBestWeights()
    snapshots = []

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append((logs["val_loss"], self.model.get_weights()))

    model.fit(x, y, validation_data=(x, y), epochs=4, verbose=0, callbacks=[Snap(), best])
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
    model.compile(optimizer=keras.optimizers.SGD(50.0), loss="sparse_categorical_crossentropy")
    unanchored = KeepBestWeights(baseline=float("nan"))  # a NaN baseline is ignored
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[unanchored])
    assert unanchored.best_epoch is not None
    assert not np.allclose(model.get_weights()[0], start_weights[0])
