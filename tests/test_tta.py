"""Test-time augmentation and the augmentation preview, on every backend."""

import numpy as np
import pytest

from kertransfer.learner import ConvLearner
from kertransfer.tta import tta_probs


def _learner(data):
    return ConvLearner.pretrained("tiny_cnn", data, precompute=True, weights=None)


def test_tta_is_seeded_and_augments_at_inference(tiny_data):
    learn = _learner(tiny_data)
    plain, targets = learn.predict()
    p1, t1 = learn.TTA(n_aug=2, seed=5)
    p2, _ = learn.TTA(n_aug=2, seed=5)
    p3, _ = learn.TTA(n_aug=2, seed=6)
    np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(t1, targets)
    # Keras augmentation layers are inert unless called with training=True:
    # if TTA forgot that, its probabilities would equal the plain ones.
    assert np.abs(p1 - plain).max() > 1e-3
    assert np.abs(p1 - p3).max() > 1e-4
    np.testing.assert_allclose(p1.sum(1), 1, rtol=1e-5)


def test_tta_beta_blends_original_with_augmented_mean(tiny_data):
    learn = _learner(tiny_data)
    plain, _ = learn.predict()
    copies = [
        learn.model.predict(
            tiny_data.fixed_batches("valid", tfms=tiny_data.train_tfms, augment=True, seed=3 + i),
            verbose=0,
        )
        for i in range(3)
    ]
    aug_mean = np.mean(copies, axis=0)
    # fast.ai v2: torch.lerp(aug_mean, orig, beta) = aug + beta * (orig - aug).
    blended, _ = learn.TTA(n_aug=3, seed=3, beta=0.25)
    np.testing.assert_allclose(blended, aug_mean + 0.25 * (plain - aug_mean), rtol=1e-5, atol=1e-6)
    # beta=None is fast.ai v0.7's plain mean over original + copies.
    mean, _ = learn.TTA(n_aug=3, seed=3)
    np.testing.assert_allclose(mean, (plain + np.sum(copies, 0)) / 4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(learn.TTA(n_aug=3, seed=3, beta=1.0)[0], plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(learn.TTA(n_aug=3, seed=3, beta=0.0)[0], aug_mean, rtol=1e-5, atol=1e-6)
    # return_all: fast.ai v0.7's stack of every copy, the original first.
    stack, _ = learn.TTA(n_aug=3, seed=3, return_all=True)
    assert stack.shape == (4, *plain.shape)
    np.testing.assert_allclose(stack, np.stack([plain, *copies]), rtol=1e-5, atol=1e-6)
    # ...whose mean over the copies is the default output (probabilities,
    # not v0.7's log-probabilities: no np.exp before the mean).
    np.testing.assert_allclose(stack.mean(0), mean, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one of beta= and return_all=True"):
        learn.TTA(n_aug=3, beta=0.25, return_all=True)


def test_tta_averages_any_probabilities(tiny_data):
    # Multi-label heads give independent sigmoids; TTA only averages them.
    import keras

    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(pooled))
    probs = tta_probs(model, tiny_data, n_aug=2, seed=1, beta=0.5)
    assert probs.shape == (len(tiny_data.valid_paths), 3)
    assert 0 <= probs.min() and probs.max() <= 1
    assert not np.allclose(probs.sum(1), 1)


@pytest.mark.one_backend
def test_tta_rejects_bad_beta(tiny_data):
    learn = _learner(tiny_data)
    with pytest.raises(ValueError, match=r"beta.*\[0, 1\]"):
        learn.TTA(n_aug=2, beta=1.5)
    with pytest.raises(ValueError, match="n_aug >= 1"):
        learn.TTA(n_aug=0, beta=0.25)


@pytest.mark.one_backend  # data, cache and plot code: the same on every backend
def test_plot_augmented_writes_png_of_distinct_copies(tiny_data, tmp_path):
    center, augmented = tiny_data.augmented_samples(n=6, seed=0, images=[0, 3])
    assert center.shape == (2, 32, 32, 3) and augmented.shape == (2, 6, 32, 32, 3)
    for k in range(2):
        copies = augmented[k]
        # Every copy differs from the center crop and from every other copy.
        assert min(np.abs(c - center[k]).mean() for c in copies) > 2
        gaps = [np.abs(copies[i] - copies[j]).mean() for i in range(6) for j in range(i)]
        assert min(gaps) > 1
    again = tiny_data.augmented_samples(n=6, seed=0, images=[0, 3])[1]
    np.testing.assert_array_equal(again, augmented)
    path = tiny_data.plot_augmented(n=6, path=tmp_path / "aug.png", images=[0, 3])
    assert path == str(tmp_path / "aug.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    fig = tiny_data.plot_augmented(n=2)
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="images must index"):
        tiny_data.augmented_samples(images=10_000)
    with pytest.raises(ValueError, match="n must be"):
        tiny_data.plot_augmented(n=0)
