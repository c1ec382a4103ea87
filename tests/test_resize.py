"""Progressive resizing (fast.ai lesson 2): train small, then switch sizes."""

import os

import numpy as np
import pytest

from kertransfer.backbones import cache_dir
from kertransfer.data import ImageClassifierData
from kertransfer.learner import ConvLearner
from kertransfer.no_tensorflow import set_seed
from kertransfer.transforms import tfms_from_model


def _valid_accuracy(learn):
    # The head on cached body activations is the full model's prediction
    # (test_learner checks it), without a second pass through the body.
    probs = learn.head_model.predict(learn._activations("valid"), verbose=0)
    return float((probs.argmax(1) == learn.data.valid_labels).mean())


@pytest.mark.slow
def test_set_data_resize_keeps_learned_weights(hymenoptera):
    tfms = tfms_from_model("efficientnet_lite0", 96)
    data = ImageClassifierData.from_paths(hymenoptera, batch_size=32, tfms=tfms)
    set_seed(0)
    learn = ConvLearner.pretrained("efficientnet_lite0", data, precompute=True)
    learn.fit(1e-2, 3, verbose=0, stage="96px")
    small_valid = learn._activations("valid")
    acc_small = _valid_accuracy(learn)
    head = [w.copy() for w in learn.head_model.get_weights()]

    learn.set_data(data.resize(160))
    assert learn.data.image_size == 160
    for a, b in zip(head, learn.head_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    big_valid = learn._activations("valid")
    assert big_valid.shape == small_valid.shape  # global pooling: any size
    assert np.abs(big_valid - small_valid).mean() > 1e-3  # a new, per-size cache
    acc_switch = _valid_accuracy(learn)
    assert acc_switch > 0.8, (acc_small, acc_switch)  # chance is ~0.54

    learn.fit(1e-3, 2, verbose=0, stage="160px")
    acc_after = _valid_accuracy(learn)
    assert acc_after >= acc_switch - 0.02, (acc_small, acc_switch, acc_after)
    cached = os.listdir(os.path.join(cache_dir(), "precompute"))
    for size in (96, 160):
        for split in ("train", "valid"):
            assert any(f.startswith(f"efficientnet_lite0_{size}_{split}_") for f in cached)
    assert [r["stage"] for r in learn.history] == ["96px"] * 3 + ["160px"] * 2
