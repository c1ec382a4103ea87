"""Unbalanced classes: oversampling the rare class, or class weights."""

import os

import numpy as np
import pytest

from kertransfer.balance import balanced_accuracy
from kertransfer.balance import balanced_class_weights
from kertransfer.balance import oversample_indices
from kertransfer.balance import per_class_recall
from kertransfer.balance import resolve_class_weight
from kertransfer.data import ImageClassifierData
from kertransfer.learner import ConvLearner
from kertransfer.no_tensorflow import set_seed
from kertransfer.transforms import tfms_from_model

from conftest import write_synthetic_images


def _unbalanced(root, source, n_train, seed=0):
    """Symlinks `n_train[cls]` random training images per class (all of val)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            files = sorted(os.listdir(source / split / cls))
            if split == "train" and n_train[cls] < len(files):
                files = sorted(rng.choice(files, n_train[cls], replace=False))
            (root / split / cls).mkdir(parents=True)
            for f in files:
                os.symlink(source / split / cls / f, root / split / cls / f)
    return root


@pytest.mark.one_backend  # numpy only
def test_oversample_indices_and_balanced_weights():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    index = oversample_indices(labels)
    assert np.bincount(labels[index]).tolist() == [6, 6, 6]
    assert set(index) == set(range(9))  # every image kept, none invented
    weights = balanced_class_weights(labels, 4)  # class 3 has no images
    np.testing.assert_allclose([weights[c] for c in range(3)], [9 / (4 * 6), 9 / (4 * 2), 9 / (4 * 1)])
    assert weights[3] == 0.0
    assert resolve_class_weight({1: 3.0}, labels, 3) == {0: 1.0, 1: 3.0, 2: 1.0}
    assert resolve_class_weight(None, labels, 3) is None
    with pytest.raises(ValueError, match='"balanced"'):
        resolve_class_weight("balance", labels, 3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        resolve_class_weight({"bees": 2.0}, labels, 3)
    with pytest.raises(ValueError, match="multi-label"):
        resolve_class_weight("balanced", np.eye(3)[labels], 3)
    probs = np.eye(3)[[0, 0, 0, 0, 0, 0, 0, 0, 0]]  # always the majority class
    np.testing.assert_allclose(per_class_recall(probs, labels), [1, 0, 0])
    assert balanced_accuracy(probs, labels) == pytest.approx(1 / 3)


@pytest.mark.one_backend  # data, cache and plot code: the same on every backend
def test_oversample_repeats_rare_training_images_only(tmp_path):
    root = write_synthetic_images(
        tmp_path, {"train/ants": 12, "train/bees": 3, "val/ants": 7, "val/bees": 6})
    tfms = tfms_from_model("tiny_cnn", 32)
    data = ImageClassifierData.from_paths(root, batch_size=8, tfms=tfms, oversample=True)
    assert data.counts("train") == {"ants": 12, "bees": 3}  # the files
    assert len(data.split("train")) == 15  # indices repeat, files are not copied
    batches = data.train_batches(seed=0)
    served = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert np.bincount(served).tolist() == [12, 12]
    assert len(data.valid_batches()) == 2  # untouched: 13 images in batches of 8
    assert data.resize(40).oversample
    learn = ConvLearner.pretrained("tiny_cnn", data, precompute=True, weights=None)
    _, features, _, steps, _ = learn._train_inputs()
    # Cached activations are served by row index: 24 rows from 15 files.
    served = np.concatenate([features[i][1] for i in range(len(features))])
    assert np.bincount(served).tolist() == [12, 12] and steps == 3
    assert len(features.features) == 15
    learn.fit(1e-2, 1, verbose=0)
    assert learn.history[-1]["precompute"]


@pytest.mark.parametrize("precompute", [True, False])
def test_fit_passes_class_weights_to_keras(tiny_data, precompute):
    learn = ConvLearner.pretrained("tiny_cnn", tiny_data, precompute=precompute, weights=None)
    # All-zero weights make the training loss exactly zero: Keras used them.
    learn.fit(1e-2, 1, verbose=0, class_weight={0: 0.0, 1: 0.0})
    assert learn.history[-1]["loss"] == 0.0
    learn.fit(1e-2, 1, verbose=0, class_weight="balanced")
    assert learn.history[-1]["loss"] > 0
    with pytest.raises(ValueError, match="class_weight"):
        learn.fit(1e-2, 1, verbose=0, class_weight=[1.0, 2.0])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])  # the margins below hold for seeds 1-3 (seed 0: class_weight +0.03)
def test_balancing_helps_the_rare_class(tmp_path, hymenoptera, seed):
    """10 bees vs 124 ants: both remedies beat no balancing on balanced accuracy.

    The effect shows where the head has seen each rare image only a few
    times (one epoch of small batches): unbalanced, the bees' gradient is
    drowned by the ants'. Measured (TF, pretrained Lite0 at 128 px, seeds
    0-4, 2026-12-03): none 0.58/0.63/0.62/0.68/0.50, oversample
    0.68/0.74/0.75/0.85/0.73 (gain 0.10-0.23), class_weight
    0.61/0.73/0.73/0.75/0.55 (gain 0.03-0.10). Trained to convergence on
    these separable features, the head fits the 10 bees either way and
    balancing no longer helps
    (oversampled identical activations even over-fit them: no augmentation
    under precompute), so this is the regime to test.
    """
    root = _unbalanced(tmp_path, hymenoptera, {"ants": 124, "bees": 10}, seed=seed)
    tfms = tfms_from_model("efficientnet_lite0", 128)
    scores = {}
    for mode in ("none", "oversample", "class_weight"):
        data = ImageClassifierData.from_paths(root, batch_size=4, tfms=tfms, oversample=mode == "oversample")
        set_seed(seed)
        learn = ConvLearner.pretrained("efficientnet_lite0", data, precompute=True)
        learn.fit(1e-4, 1, verbose=0, class_weight="balanced" if mode == "class_weight" else None)
        probs = learn.head_model.predict(learn._activations("valid"), verbose=0)
        scores[mode] = balanced_accuracy(probs, data.valid_labels)
    assert scores["oversample"] > scores["none"] + 0.05, scores
    assert scores["class_weight"] > scores["none"] + 0.02, scores
