"""Interpretation of real predictions on the dogscats sample (fast.ai lesson 1).

A pretrained EfficientNet-Lite0 body with a head fitted on precomputed
activations (96 px) of 200 of the 1000 training photos predicts the 500
validation photos; the
lesson-1 questions ("which cats does it take for dogs, most sure first?",
"which photos is it least sure about?") are then checked against the photo
folders and an independent numpy computation on the same probabilities.
"""

import os

import numpy as np
import pytest
from PIL import Image

from kertransfer.data import ImageClassifierData
from kertransfer.interpret import ClassificationInterpretation
from kertransfer.learner import ConvLearner
from kertransfer.no_tensorflow import set_seed
from kertransfer.transforms import tfms_from_model

TRAIN_PER_CLASS = 100


@pytest.fixture(scope="module")
def dogscats_interp(dogscats, tmp_path_factory):
    # The head needs few photos (Lite0's features separate cats from dogs);
    # precomputing all 1000 training photos took as long as the rest.
    root = tmp_path_factory.mktemp("dogscats")
    os.symlink(dogscats / "valid", root / "valid")
    for cls in ("cats", "dogs"):
        (root / "train" / cls).mkdir(parents=True)
        for f in sorted(os.listdir(dogscats / "train" / cls))[:TRAIN_PER_CLASS]:
            os.symlink(dogscats / "train" / cls / f, root / "train" / cls / f)
    data = ImageClassifierData.from_paths(
        root, batch_size=64, tfms=tfms_from_model("efficientnet_lite0", 96)
    )
    learn = ConvLearner.pretrained("efficientnet_lite0", data, precompute=True)
    set_seed(0)
    learn.fit(1e-2, 4, verbose=0)  # 16 steps, as one epoch of all 1000 photos
    interp = ClassificationInterpretation.from_learner(learn)
    # The same model's probabilities by another path: the head on the cached
    # body activations (test_learner checks the two agree), without a third
    # pass of the 500 photos through the body.
    head_probs = learn.head_model.predict(learn._activations("valid"), verbose=0)
    return interp, head_probs, data.valid_labels, root / "valid"


def _is_photo(path):
    with Image.open(path) as image:
        image.verify()
        return image.format == "JPEG"


@pytest.mark.slow
@pytest.mark.parametrize("cls, other", [("cats", "dogs"), ("dogs", "cats")])
def test_most_incorrect_lists_real_misclassified_photos(dogscats_interp, cls, other):
    interp, head_probs, targets, valid = dogscats_interp
    np.testing.assert_allclose(interp.probs, head_probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(interp.targets, targets)
    assert len(targets) == 500 and interp.accuracy() > 0.8  # a real model
    probs = interp.probs
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
    interp, _, _, _ = dogscats_interp
    probs = interp.probs
    for cls in ("cats", "dogs"):
        c = interp.class_names.index(cls)
        uncertain = interp.most_uncertain(cls, k=6)
        # Photos of `cls` only, by |p(cls) - 0.5|.
        of_class = np.flatnonzero(interp.targets == c)
        distance = np.full(len(probs), np.inf)
        distance[of_class] = np.abs(probs[of_class, c] - 0.5)
        np.testing.assert_array_equal(uncertain, np.argsort(distance, kind="stable")[:6])
        assert all(os.path.dirname(interp.image_paths[i]).endswith(cls) for i in uncertain)
        others = np.setdiff1d(of_class, uncertain)
        assert distance[uncertain].max() <= distance[others].min()
        assert np.all(np.diff(distance[uncertain]) >= 0)
