"""ConvLearner verbs with a tiny registered backbone on small synthetic images (fast)."""

import io
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from kertransfer.data import ImageClassifierData
from kertransfer.learner import ConvLearner
from kertransfer.no_tensorflow import set_seed
from kertransfer.transforms import tfms_from_model

from conftest import synthetic_image
from conftest import write_synthetic_images


def _learner(data, precompute=True):
    return ConvLearner.pretrained("tiny_cnn", data, precompute=precompute, weights=None)


def test_head_architecture_and_frozen_body(tiny_data):
    learn = _learner(tiny_data)
    names = [l.name for l in learn.model.layers]
    assert names[-7:] == ["concat_pool", "head_bn0", "head_drop0", "head_fc0", "head_bn1", "head_drop1", "head_out"]
    assert learn.model.output_shape == (None, 2)
    assert learn.model.get_layer("head_fc0").units == 512
    assert learn.model.get_layer("head_drop0").rate == 0.25 and learn.model.get_layer("head_drop1").rate == 0.5
    # Groups hold the layers with weights: stem conv+bn / late conv+bn / head.
    assert [[l.name for l in g] for g in learn.layer_groups] == [
        ["stem_conv", "stem_bn"], ["late_conv", "late_bn"], ["head_bn0", "head_fc0", "head_bn1", "head_out"]]
    assert not any(l.trainable for g in learn.layer_groups[:-1] for l in g)
    # Frozen BatchNorm runs in inference mode: training=True changes nothing.
    x = tiny_data.valid_batches()[0][0]
    a = keras.ops.convert_to_numpy(learn.body_model(x, training=True))
    b = keras.ops.convert_to_numpy(learn.body_model(x, training=False))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_head_takes_keras_names_and_fastai_aliases(tiny_data):
    from kertransfer.heads import head_layers

    def head(learn):
        return [(l.name, getattr(l, "rate", None), getattr(l, "units", None)) for l in learn.head]

    keras_names = ConvLearner.pretrained("tiny_cnn", tiny_data, weights=None, dropout=0.2, hidden_units=(16, 8))
    aliases = ConvLearner.pretrained("tiny_cnn", tiny_data, weights=None, ps=0.2, xtra_fc=(16, 8))
    assert head(keras_names) == head(aliases)
    assert [r for _, r, _ in head(keras_names) if r is not None] == [0.1, 0.1, 0.2]
    assert [u for _, _, u in head(keras_names) if u is not None] == [16, 8, 2]
    with pytest.raises(ValueError, match="ps is fast.ai's name for dropout: pass one of them"):
        ConvLearner.pretrained("tiny_cnn", tiny_data, weights=None, dropout=0.2, ps=0.3)
    with pytest.raises(ValueError, match=r"dropout needs one rate per dense layer \(2"):
        head_layers(2, dropout=[0.1, 0.2, 0.3], hidden_units=(16,))


def test_freeze_to_and_unfreeze(tiny_data):
    learn = _learner(tiny_data)
    learn.freeze_to(1)
    flags = [all(l.trainable for l in g) for g in learn.layer_groups]
    assert flags == [False, True, True]
    with pytest.raises(ValueError, match="Call freeze"):
        learn.precompute = True
    learn.unfreeze()
    assert all(l.trainable for g in learn.layer_groups for l in g) and not learn.precompute
    with pytest.raises(ValueError, match="0 <= n <= 2"):
        learn.freeze_to(3)


def test_precompute_trains_only_the_head_and_caches(tiny_data):
    learn = _learner(tiny_data)
    body_before = [w.copy() for w in learn.backbone.get_weights()]
    head_before = learn.model.get_layer("head_out").get_weights()[0].copy()
    learn.fit(1e-2, 2, verbose=0, stage="head")
    assert [r["stage"] for r in learn.history] == ["head", "head"]
    for a, b in zip(body_before, learn.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert np.abs(learn.model.get_layer("head_out").get_weights()[0] - head_before).max() > 0
    cache = os.path.join(os.environ["KERAS_HOME"], "kertransfer", "precompute")
    assert any(f.startswith("tiny_cnn_32_train_") for f in os.listdir(cache))
    # The head trained on cached activations is the head of the full model.
    feats = learn._activations("valid")
    np.testing.assert_allclose(
        learn.head_model.predict(feats, verbose=0), learn.predict()[0], rtol=1e-4, atol=1e-5
    )


def test_changed_data_folder_never_reuses_stale_cache(tmp_path):
    write_synthetic_images(tmp_path, {f"{split}/{cls}": 6 for split in ("train", "val") for cls in ("ants", "bees")})
    tfms = tfms_from_model("tiny_cnn", 32)
    learn = _learner(ImageClassifierData.from_paths(tmp_path, batch_size=4, tfms=tfms))
    first = learn._activations("train")
    # One ant replaced by a bee image (new size and mtime): the cached
    # activations of the old folder must not be reused.
    victim = tmp_path / "train" / "ants" / "000.jpg"
    Image.fromarray(synthetic_image("bees", 10)).save(victim, quality=90)
    os.utime(victim, ns=(1, 10**18))
    learn.set_data(ImageClassifierData.from_paths(tmp_path, batch_size=4, tfms=tfms))
    second = learn._activations("train")
    assert np.abs(first - second).max() > 1e-4


def test_lr_find_restores_weights(tiny_data):
    learn = _learner(tiny_data, precompute=False)
    before = [w.copy() for w in learn.model.get_weights()]
    result = learn.lr_find(start_lr=1e-4, end_lr=1.0)
    assert len(result.lrs) >= 5 and result.batch_size <= tiny_data.batch_size
    for a, b in zip(before, learn.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    ax = result.plot()
    assert ax.get_xscale() == "log"
    # fast.ai v0.7's order: lr_find(), then sched.plot_lr() (the ramp).
    assert learn.sched is result
    (line,) = learn.sched.plot_lr(figsize=(3, 2)).get_lines()
    np.testing.assert_allclose(line.get_ydata(), result.lrs)
    assert np.all(np.diff(result.lrs) > 0)
    assert tuple(line.figure.get_size_inches()) == (3, 2)
    (line,) = learn.sched.plot_loss().get_lines()
    np.testing.assert_allclose(line.get_ydata(), result.losses)


def test_fit_sgdr_epochs_and_differential_lrs(tiny_data):
    learn = _learner(tiny_data, precompute=False)
    learn.unfreeze()
    learn.fit(np.array([1e-4, 1e-3, 1e-2]), 2, cycle_len=1, cycle_mult=2, verbose=0, stage="unfrozen")
    assert len(learn.history) == 3
    lrs = learn.sched.lr_history
    steps = learn.sched.steps_per_epoch
    assert lrs.shape == (3 * steps, 3)
    np.testing.assert_allclose(lrs[0], [1e-4, 1e-3, 1e-2])
    np.testing.assert_allclose(lrs[steps], [1e-4, 1e-3, 1e-2])  # restart
    assert learn.sched.plot_lr().get_yscale() == "log"


def test_set_random_seed_repeats_a_fit_through_the_body(tiny_data):
    # `kertransfer train --seed`: keras.utils.set_random_seed fixes the
    # shuffles, random crops and augmentation of unseeded batches (and the
    # backend's own generators), so the same seed trains the same weights.
    def run(seed):
        set_seed(seed)  # before the build: the head's initialisation too
        learn = _learner(tiny_data, precompute=False)
        learn.fit(1e-2, 1, verbose=0)
        return learn.model.get_weights(), learn.history[-1]["loss"]

    (w1, loss1), (w2, loss2) = run(7), run(7)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert loss1 == pytest.approx(loss2, rel=1e-5)

    # ...and another seed gives other batches (order, crops, augmentation).
    def first_batch(seed):
        set_seed(seed)
        return tiny_data.train_batches(augment=True)[0]

    (x7, y7), (x7b, _), (x8, y8) = first_batch(7), first_batch(7), first_batch(8)
    np.testing.assert_array_equal(x7, x7b)
    assert np.abs(x7 - x8).max() > 1 and not np.array_equal(y7, y8)


def test_seeded_precomputed_fit_does_not_depend_on_the_activation_cache(tiny_data, tmp_path, monkeypatch):
    # The first run computes the body's activations (center crops, in order:
    # nothing random), the second reads them from the disk cache; the same
    # seed must train the same head either way (before the fix, computing
    # them drew seeds from NumPy's and torch's global generators, so a
    # seeded `kertransfer train` changed with the cache).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache: the first run computes
    cached_files = lambda: sorted((tmp_path / "kertransfer" / "precompute").glob("*.npy"))  # noqa: E731

    def run():
        set_seed(5)
        learn = _learner(tiny_data)
        learn.fit(1e-2, 1, verbose=0)
        return learn.model.get_weights()

    computed = run()
    files = cached_files()
    assert len(files) == 2  # train and valid activations, written by the first run
    cached = run()
    assert cached_files() == files
    for a, b in zip(computed, cached):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    set_seed(6)
    other = _learner(tiny_data)
    other.fit(1e-2, 1, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(computed, other.model.get_weights())) > 1e-3


def test_batches_with_nothing_random_leave_numpys_generator_alone(tiny_data):
    # Center crops in order (predictions, precompute) need no seed; drawing
    # one would move NumPy's global generator by whether they were made.
    set_seed(1)
    reference = np.random.rand()
    set_seed(1)
    tiny_data.fixed_batches("valid")
    assert np.random.rand() == reference
    set_seed(1)
    tiny_data.train_batches()  # shuffled: its seed comes from NumPy's generator
    assert np.random.rand() != reference


def test_tta_is_seeded_and_really_augments(tiny_data):
    learn = _learner(tiny_data)
    plain, targets = learn.predict()
    p1, t1 = learn.TTA(n_aug=2, seed=5)
    p2, _ = learn.TTA(n_aug=2, seed=5)
    np.testing.assert_allclose(p1, p2, rtol=1e-5)
    np.testing.assert_array_equal(t1, targets)
    assert np.abs(p1 - plain).max() > 1e-4
    np.testing.assert_allclose(p1.sum(1), 1, rtol=1e-4)


def test_save_and_load_roundtrip(tiny_data, tmp_path):
    learn = _learner(tiny_data)
    learn.fit(1e-2, 1, verbose=0)
    learn.unfreeze()  # the full model, compiled with its optimizer, is saved
    learn.fit(1e-3, 1, verbose=0)
    path = learn.save(tmp_path / "m")
    assert path.endswith(".keras")
    other = _learner(tiny_data)
    other.load(tmp_path / "m")
    np.testing.assert_allclose(other.predict()[0], learn.predict()[0], rtol=1e-5, atol=1e-6)
    reloaded = keras.saving.load_model(path, compile=False)
    x = tiny_data.valid_batches()[0][0]
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), learn.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    # Lean file: weights only, no optimizer state (momentum per group).
    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f:
        with h5py.File(io.BytesIO(f.read())) as h5:
            assert "optimizer" not in h5
            assert "layers" in h5
    with pytest.raises(FileNotFoundError):
        other.load(tmp_path / "missing")


def test_fits_after_the_first_reuse_the_compiled_step_with_a_fresh_optimizer(tiny_data):
    """`lr_find` then two fits with the trainable set unchanged: the train
    step is compiled once (TensorFlow, JAX), and the result equals a learner
    that compiles anew for every fit (a fresh optimizer each time)."""

    def run(recompile):
        set_seed(3)
        learn = _learner(tiny_data, precompute=False)
        learn.unfreeze()
        learn.lr_find(min_steps=4)
        functions = []
        for _ in range(2):
            if recompile:
                learn._compiled.clear()
            learn.fit([1e-4, 1e-3, 1e-2], 1, verbose=0)
            functions.append(learn.model.train_function)
        return learn, functions

    reused, functions = run(recompile=False)
    fresh, fresh_functions = run(recompile=True)
    if keras.backend.backend() in ("tensorflow", "jax"):
        assert functions[0] is functions[1]
    assert fresh_functions[0] is not fresh_functions[1]
    assert [r["loss"] for r in reused.history] == pytest.approx([r["loss"] for r in fresh.history], rel=1e-6)
    for a, b in zip(reused.model.get_weights(), fresh.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
