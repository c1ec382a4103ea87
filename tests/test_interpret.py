"""Tests for kertransfer.interpret, with small synthetic cat and dog images.

Probabilities are written by hand so every expected answer below (confusion
matrix, orderings, precision/recall, F2) is worked out independently of the
code under test. kertransfer.interpret is numpy, pandas and matplotlib:
these tests run in the TensorFlow pass only.
"""

import math
import types
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from kertransfer.images import load_thumbnail  # noqa: E402
from kertransfer.interpret import ClassificationInterpretation  # noqa: E402
from kertransfer.interpret import MultiLabelInterpretation  # noqa: E402
from kertransfer.no_tensorflow import set_seed

from conftest import write_synthetic_images  # noqa: E402

pytestmark = pytest.mark.one_backend

CLASSES = ["cats", "dogs"]

# Items 0-19 are cats, 20-39 dogs. Misclassified: cats 3, 7, 11 and dogs
# 25, 33 (probability 0: the loss must be clipped, not inf). Near 0.5:
# 5 (0.51), 28 (0.53), 11 (0.45).
P_CAT_OVERRIDES = {3: 0.20, 5: 0.51, 7: 0.05, 11: 0.45}
P_DOG_OVERRIDES = {25: 0.30, 28: 0.53, 33: 0.0}


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory):
    """20 JPEGs (80-112 px a side) per class, dogscats' valid/ layout."""
    return write_synthetic_images(
        tmp_path_factory.mktemp("valid"), {name: 20 for name in CLASSES},
        size=96, formats=("jpg",))


def _valid_paths(valid_dir, per_class=20):
    paths = []
    for name in CLASSES:
        files = sorted((valid_dir / name).glob("*.jpg"))[:per_class]
        assert len(files) == per_class, f"expected images in {valid_dir / name}"
        paths += [str(p) for p in files]
    return paths


def _dogscats_probs():
    p_dog = np.empty(40)
    for i in range(20):
        p_dog[i] = 1 - P_CAT_OVERRIDES.get(i, 0.60 + 0.02 * i)
    for i in range(20, 40):
        p_dog[i] = P_DOG_OVERRIDES.get(i, 0.60 + 0.02 * (i - 20))
    return np.stack([1 - p_dog, p_dog], axis=1)


@pytest.fixture
def interp(valid_dir):
    targets = np.array([0] * 20 + [1] * 20)
    return ClassificationInterpretation(
        _dogscats_probs(), targets, CLASSES, image_paths=_valid_paths(valid_dir)
    )


def _png_pixels(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path, format="png", dpi=60)
    plt.close(fig)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [
        fig._suptitle.get_text() if fig._suptitle else ""
    ]


# ------------------------------------------------------------------ compute


def test_confusion_matrix(interp):
    cm = interp.confusion_matrix()
    np.testing.assert_array_equal(cm, [[17, 3], [2, 18]])
    assert cm.sum() == 40
    assert np.issubdtype(cm.dtype, np.integer)
    assert interp.accuracy() == pytest.approx(35 / 40)


def test_most_confused(interp):
    frame = interp.most_confused()
    assert list(frame.columns) == ["actual", "predicted", "count"]
    assert frame.values.tolist() == [["cats", "dogs", 3], ["dogs", "cats", 2]]
    assert interp.most_confused(min_val=3).values.tolist() == [
        ["cats", "dogs", 3]
    ]
    assert len(interp.most_confused(min_val=4)) == 0


def test_most_incorrect_is_most_confidently_wrong_first(interp):
    np.testing.assert_array_equal(interp.most_incorrect("cats"), [7, 3, 11])
    np.testing.assert_array_equal(interp.most_incorrect(0, k=2), [7, 3])
    np.testing.assert_array_equal(interp.most_incorrect("dogs"), [33, 25])
    np.testing.assert_array_equal(interp.most_incorrect(1, k=None), [33, 25])


def test_most_correct_is_most_confident_first(interp):
    np.testing.assert_array_equal(interp.most_correct("cats", 3), [19, 18, 17])
    np.testing.assert_array_equal(interp.most_correct("dogs", 2), [39, 38])
    correct_cats = interp.most_correct("cats", None)
    assert sorted(correct_cats) == sorted(set(range(20)) - {3, 7, 11})


def test_most_uncertain_is_per_class_closest_to_half(interp):
    # Cats only (items 0-19), by |p_cat - 0.5|: 5 (0.01), 11 (0.05), 0 (0.10).
    np.testing.assert_array_equal(interp.most_uncertain("cats", 3), [5, 11, 0])
    # Dogs only (items 20-39), by |p_dog - 0.5|: 28 (0.03), 20 (0.10), 21 (0.12).
    np.testing.assert_array_equal(interp.most_uncertain("dogs", 3), [28, 20, 21])
    assert sorted(interp.most_uncertain("dogs", None)) == list(range(20, 40))


def test_top_losses_are_clipped_cross_entropy(interp):
    top = interp.top_losses(3)
    np.testing.assert_array_equal(top.indices, [33, 7, 3])
    np.testing.assert_allclose(
        top.losses, [-math.log(1e-7), -math.log(0.05), -math.log(0.2)],
        rtol=1e-6,
    )
    assert np.all(np.isfinite(interp.losses))
    smallest = interp.top_losses(1, largest=False)
    assert smallest.indices[0] in (19, 39)  # p = 0.98, the most confident


def test_per_class_report_matches_hand_computation(interp):
    report = interp.per_class_report()
    assert list(report.columns) == ["precision", "recall", "f1", "support"]
    expected = {
        # precision = tp / predicted, recall = tp / actual
        "cats": (17 / 19, 17 / 20, 34 / 39, 20),
        "dogs": (18 / 21, 18 / 20, 36 / 41, 20),
    }
    for name, values in expected.items():
        np.testing.assert_allclose(report.loc[name].to_numpy(dtype=float),
                                   values)
    np.testing.assert_allclose(report.loc["accuracy", "f1"], 35 / 40)
    np.testing.assert_allclose(report.loc["macro avg", "recall"],
                               (17 / 20 + 18 / 20) / 2)
    assert report.loc["weighted avg", "support"] == 40


def test_three_classes():
    names = ["ants", "bees", "wasps"]
    probs = np.array([
        [0.70, 0.20, 0.10],  # ants -> ants
        [0.30, 0.40, 0.30],  # ants -> bees
        [0.20, 0.50, 0.30],  # ants -> bees
        [0.10, 0.80, 0.10],  # bees -> bees
        [0.34, 0.33, 0.33],  # bees -> ants
        [0.05, 0.15, 0.80],  # wasps -> wasps
    ])
    interp = ClassificationInterpretation(probs, [0, 0, 0, 1, 1, 2], names)
    np.testing.assert_array_equal(
        interp.confusion_matrix(), [[1, 2, 0], [1, 1, 0], [0, 0, 1]]
    )
    assert interp.most_confused().values.tolist() == [
        ["ants", "bees", 2], ["bees", "ants", 1]
    ]
    # Ants (items 0-2), by |p_ants - the best other|: 0.5, 0.1, 0.3.
    np.testing.assert_array_equal(interp.most_uncertain("ants", 3), [1, 2, 0])
    # Bees (items 3-4): 0.7, |0.33 - 0.34| = 0.01.
    np.testing.assert_array_equal(interp.most_uncertain("bees"), [4, 3])
    np.testing.assert_array_equal(interp.most_incorrect("ants"), [2, 1])
    np.testing.assert_array_equal(interp.most_incorrect("wasps"), [])
    report = interp.per_class_report()
    np.testing.assert_allclose(report.loc["bees", "precision"], 1 / 3)
    np.testing.assert_allclose(report.loc["weighted avg", "recall"],
                               (3 * 1 / 3 + 2 * 1 / 2 + 1 * 1) / 6)


def test_normalized_confusion_matrix_rows_sum_to_one(interp):
    np.testing.assert_allclose(interp.confusion_matrix(normalize=True),
                               [[17 / 20, 3 / 20], [2 / 20, 18 / 20]])
    # A class without items keeps a row of zeros (no division by zero).
    names = ["ants", "bees", "wasps"]
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1]])
    cm = ClassificationInterpretation(probs, [0, 0, 1], names).confusion_matrix(normalize=True)
    np.testing.assert_allclose(cm, [[0.5, 0, 0.5], [0, 1, 0], [0, 0, 0]])


def test_one_hot_targets_and_class_indices():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    interp = ClassificationInterpretation(probs, [[1, 0], [1, 0]], CLASSES)
    np.testing.assert_array_equal(interp.targets, [0, 0])
    assert interp.class_index("dogs") == interp.class_index(1) == 1
    with pytest.raises(ValueError, match="Unknown class 'birds'"):
        interp.most_correct("birds")
    with pytest.raises(ValueError, match="Unknown class 2"):
        interp.most_correct(2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"probs": [[2.0, -1.0]]}, "logits"),
        ({"probs": [0.5, 0.5]}, "shape"),
        ({"targets": [0, 1]}, "targets of shape"),
        ({"targets": [3]}, "integer class indices"),
        ({"class_names": ["a"]}, "class_names"),
        ({"image_paths": ["a.jpg", "b.jpg"]}, "aligned"),
        ({"losses": [1.0, 2.0]}, "losses of shape"),
    ],
)
def test_invalid_input_raises_clear_errors(kwargs, message):
    args = {"probs": [[0.5, 0.5]], "targets": [0], "class_names": CLASSES}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ClassificationInterpretation(**args)


def test_invalid_k_raises():
    interp = ClassificationInterpretation([[0.5, 0.5]], [0], CLASSES)
    with pytest.raises(ValueError, match="positive int"):
        interp.top_losses(0)


def test_from_learner_uses_tta_on_request(valid_dir):
    paths = _valid_paths(valid_dir, per_class=1)
    plain = (np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
    tta = (np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 1]))
    learn = types.SimpleNamespace(
        predict=lambda: plain,
        TTA=lambda: tta,
        data=types.SimpleNamespace(classes=CLASSES, valid_paths=paths),
    )
    plain_interp = ClassificationInterpretation.from_learner(learn)
    tta_interp = ClassificationInterpretation.from_learner(learn, tta=True)
    assert plain_interp.accuracy() == 0.5
    assert tta_interp.accuracy() == 1.0
    assert tta_interp.class_names == CLASSES
    assert tta_interp.image_paths == paths


# -------------------------------------------------------------- multi-label


MULTI_PROBS = np.array([
    [0.9, 0.1, 0.6],
    [0.8, 0.7, 0.2],
    [0.3, 0.4, 0.9],
    [0.6, 0.2, 0.1],
    [0.1, 0.9, 0.5],  # 0.5 is not > 0.5: tag 2 not predicted
])
MULTI_TARGETS = np.array([
    [1, 0, 1],
    [1, 1, 0],
    [0, 1, 1],
    [0, 0, 0],
    [0, 1, 1],
])
TAGS = ["clear", "water", "road"]


def test_multilabel_counts_and_f2():
    interp = MultiLabelInterpretation(MULTI_PROBS, MULTI_TARGETS, TAGS)
    counts = interp.counts()
    assert counts.loc["clear"].tolist() == [2, 1, 0, 2]  # tp, fp, fn, tn
    assert counts.loc["water"].tolist() == [2, 0, 1, 2]
    assert counts.loc["road"].tolist() == [2, 0, 1, 2]
    report = interp.per_class_report()
    # F2 = 5 tp / (5 tp + 4 fn + fp)
    np.testing.assert_allclose(report["f2"], [10 / 11, 10 / 14, 10 / 14])
    np.testing.assert_allclose(report["precision"], [2 / 3, 1, 1])
    np.testing.assert_allclose(report["recall"], [1, 2 / 3, 2 / 3])
    assert report["support"].tolist() == [2, 3, 3]
    # Per item: 1, 1, 5/9, 0, 5/9.
    assert interp.fbeta(2) == pytest.approx(28 / 45)
    assert interp.fbeta(2, average="macro") == pytest.approx(
        (10 / 11 + 2 * 10 / 14) / 3)
    assert interp.fbeta(2, average="micro") == pytest.approx(30 / 39)
    assert interp.fbeta(1, average="micro") == pytest.approx(12 / 15)
    with pytest.raises(ValueError, match="average"):
        interp.fbeta(average="weighted")


def test_multilabel_per_tag_thresholds():
    interp = MultiLabelInterpretation(
        MULTI_PROBS, MULTI_TARGETS, TAGS, thresholds=[0.5, 0.5, 0.45]
    )
    assert interp.counts().loc["road"].tolist() == [3, 0, 0, 2]
    assert interp.per_class_report().loc["road", "f2"] == pytest.approx(1.0)
    assert interp.per_class_report()["threshold"].tolist() == [0.5, 0.5, 0.45]
    with pytest.raises(ValueError, match="thresholds"):
        MultiLabelInterpretation(MULTI_PROBS, MULTI_TARGETS, TAGS,
                                 thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="0s and 1s"):
        MultiLabelInterpretation(MULTI_PROBS, MULTI_TARGETS * 2, TAGS)


# -------------------------------------------------------------------- plots


def test_plot_confusion_matrix_writes_counts(interp, tmp_path):
    ax = interp.plot_confusion_matrix()
    assert isinstance(ax, matplotlib.axes.Axes)
    assert sorted(t.get_text() for t in ax.texts) == ["17", "18", "2", "3"]
    assert ax.get_xlabel() == "Predicted" and ax.get_ylabel() == "Actual"
    pixels = _png_pixels(ax.figure, tmp_path, "cm.png")
    assert pixels.std() > 10

    fig, given = plt.subplots()
    ax = interp.plot_confusion_matrix(normalize=True, ax=given)
    assert ax is given
    assert sorted(t.get_text() for t in ax.texts) == [
        "0.10", "0.15", "0.85", "0.90"
    ]
    plt.close(fig)


@pytest.mark.parametrize(
    "method, args",
    [
        ("plot_top_losses", (4,)),
        ("plot_most_correct", ("dogs", 4)),
        ("plot_most_incorrect", ("cats", 3)),
        ("plot_most_uncertain", ("cats", 4)),
    ],
)
def test_image_plots_are_not_blank(interp, tmp_path, method, args):
    fig = getattr(interp, method)(*args, figsize=(9, 4))  # fastai's keyword
    assert isinstance(fig, matplotlib.figure.Figure)
    assert tuple(fig.get_size_inches()) == (9, 4)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == (3 if method == "plot_most_incorrect" else 4)
    titles = [ax.get_title() for ax in images]
    assert all("actual:" in t and "pred:" in t and "loss:" in t
               for t in titles)
    pixels = _png_pixels(fig, tmp_path, f"{method}.png")
    assert pixels.std() > 20


@pytest.mark.parametrize("cls", CLASSES)
def test_most_uncertain_grid_shows_only_its_class(interp, cls):
    fig = interp.plot_most_uncertain(cls, 4)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 4
    assert all(t.startswith(f"actual: {cls}\n") for t in titles), titles
    plt.close(fig)


def test_plot_grad_cam_overlays_the_heatmaps_of_the_predicted_class(interp, tmp_path):
    import keras

    from kertransfer.gradcam import grad_cam
    from kertransfer.images import Framing
    from kertransfer.images import frame_images

    set_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    framing = Framing(32)
    fig = interp.plot_grad_cam(model, framing, k=3)
    tiles = [ax for ax in fig.axes if ax.images]
    top = interp.top_losses(3).indices
    titles = [ax.get_title() for ax in tiles]
    assert [t.splitlines()[-1] for t in titles] == [f"loss: {interp.losses[i]:.2f}" for i in top]
    expected = grad_cam(model, frame_images([interp.image_paths[i] for i in top], framing), interp.preds[top])
    for ax, heatmap in zip(tiles, expected):
        photo, overlay = ax.images
        assert photo.get_array().shape == (32, 32, 3)
        np.testing.assert_allclose(np.asarray(overlay.get_array()), heatmap, rtol=1e-6)
    assert _png_pixels(fig, tmp_path, "gradcam.png").std() > 20


def test_plot_images_titles_show_actual_predicted_prob_loss(interp):
    fig = interp.plot_images([33])
    (ax,) = [ax for ax in fig.axes if ax.images]
    assert ax.get_title() == "actual: dogs\npred: cats (1.00)\nloss: 16.12"
    plt.close(fig)


def test_empty_selection_gives_placeholder(tmp_path, valid_dir):
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    interp = ClassificationInterpretation(probs, [0, 1], CLASSES,
                                          image_paths=_valid_paths(valid_dir, 1))
    assert interp.most_incorrect("cats").size == 0
    fig = interp.plot_most_incorrect("cats")
    assert isinstance(fig, matplotlib.figure.Figure)
    assert any("no images to show" in t for t in _texts(fig))
    assert "Most incorrect cats" in " ".join(_texts(fig))
    assert _png_pixels(fig, tmp_path, "empty.png").std() > 1


def test_unreadable_image_is_a_labelled_tile(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    interp = ClassificationInterpretation([[0.9, 0.1]], [0], CLASSES,
                                          image_paths=[broken])
    with pytest.warns(UserWarning, match="Could not open image"):
        fig = interp.plot_images([0])
    assert any("cannot open" in t for t in _texts(fig))
    plt.close(fig)


def test_plot_images_needs_paths():
    interp = ClassificationInterpretation([[0.9, 0.1]], [0], CLASSES)
    with pytest.raises(ValueError, match="image_paths"):
        interp.plot_images([0])


def test_thumbnail_applies_exif_orientation(tmp_path, valid_dir):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("L", (80, 40), 128).save(path, exif=exif.tobytes())
    array = load_thumbnail(str(path), size=224)
    assert array.shape == (80, 40, 3)  # portrait after transpose, RGB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = load_thumbnail(_valid_paths(valid_dir, 1)[0], size=64)
    assert max(plain.shape[:2]) == 64 and plain.dtype == np.uint8
