"""Interpretation of real predictions on the dogscats sample (fast.ai lesson 1).

A pretrained EfficientNet-Lite0 body with a head fitted for one epoch on
precomputed activations (128 px) predicts the 500 validation photos; the
lesson-1 questions ("which cats does it take for dogs, most sure first?",
"which photos is it least sure about?") are then checked against the photo
folders and an independent numpy computation on the same probabilities.
"""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from kertransfer.data import ImageClassifierData
from kertransfer.interpret import ClassificationInterpretation
from kertransfer.learner import ConvLearner
from kertransfer.transforms import tfms_from_model


@pytest.fixture(scope="module")
def dogscats_interp(dogscats):
    data = ImageClassifierData.from_paths(
        dogscats, batch_size=64, tfms=tfms_from_model("efficientnet_lite0", 128)
    )
    learn = ConvLearner.pretrained("efficientnet_lite0", data, precompute=True)
    keras.utils.set_random_seed(0)
    learn.fit(1e-2, 1, verbose=0)
    probs, targets = learn.predict()
    interp = ClassificationInterpretation.from_learner(learn)
    return interp, probs, targets, dogscats / "valid"


def _is_photo(path):
    with Image.open(path) as image:
        image.verify()
        return image.format == "JPEG"


@pytest.mark.slow
@pytest.mark.parametrize("cls, other", [("cats", "dogs"), ("dogs", "cats")])
def test_most_incorrect_lists_real_misclassified_photos(dogscats_interp, cls, other):
    interp, probs, targets, valid = dogscats_interp
    np.testing.assert_allclose(interp.probs, probs, rtol=1e-5, atol=1e-6)
    assert len(targets) == 500 and interp.accuracy() > 0.8  # a real model
    c, o = interp.class_names.index(cls), interp.class_names.index(other)

    wrong = interp.most_incorrect(cls, k=None)
    # Independently: photos of `cls` whose probability of `other` is higher,
    # most confidently wrong (lowest probability of `cls`) first.
    expected = np.flatnonzero((targets == c) & (probs[:, o] > probs[:, c]))
    expected = expected[np.argsort(probs[expected, c], kind="stable")]
    np.testing.assert_array_equal(wrong, expected)
    assert len(wrong) >= 1, "the model got every photo right: nothing to check"
    assert np.all(np.diff(probs[wrong, c]) >= 0)
    for i in wrong:
        path = interp.image_paths[i]
        assert os.path.dirname(path) == str(valid / cls), path
        assert _is_photo(path)
        assert interp.class_names[interp.preds[i]] == other
    np.testing.assert_array_equal(interp.most_incorrect(cls), wrong[:4])


@pytest.mark.slow
def test_most_uncertain_is_closest_to_half(dogscats_interp):
    interp, probs, _, _ = dogscats_interp
    for cls in ("cats", "dogs"):
        c = interp.class_names.index(cls)
        uncertain = interp.most_uncertain(cls, k=6)
        distance = np.abs(probs[:, c] - 0.5)
        np.testing.assert_array_equal(uncertain, np.argsort(distance, kind="stable")[:6])
        others = np.setdiff1d(np.arange(len(probs)), uncertain)
        assert distance[uncertain].max() <= distance[others].min()
        assert np.all(np.diff(distance[uncertain]) >= 0)
