"""The batch augmenter: random crops, then Keras layers seeded per batch or image."""

import keras
import numpy as np
import pytest

from kertransfer.data import ImageClassifierData
from kertransfer.layers import RandomRot90
from kertransfer.transforms import BatchAugmenter
from kertransfer.transforms import ImageTransforms
from kertransfer.transforms import transforms_top_down


@pytest.fixture(scope="module")
def photo(hymenoptera):
    tfms = (ImageTransforms(64), ImageTransforms(64))
    data = ImageClassifierData.from_paths(hymenoptera, batch_size=8, tfms=tfms)
    return data.split("valid").image(0)


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.RandomRotation((0.05, 0.05), fill_mode="reflect"),  # 18 degrees
        keras.layers.RandomZoom((-0.2, -0.2), fill_mode="reflect"),
    ],
    ids=["rotation", "zoom"],
)
def test_augmenter_runs_the_keras_layer_with_the_batch_seed(photo, layer):
    tfms = ImageTransforms(64)  # center crop: only the layer changes pixels
    center = tfms.crop(photo, None).astype("float32")[None]
    ours = BatchAugmenter(tfms, [layer])([photo], np.random.default_rng(0))[0]
    # The same seed the augmenter drew, given to the Keras layer itself.
    seed = int(np.random.default_rng(0).integers(0, 2**31 - 1))
    transformation = layer.get_random_transformation(center, training=True, seed=seed)
    keras_out = keras.ops.convert_to_numpy(layer.transform_images(center, transformation, training=True))[0]
    np.testing.assert_allclose(ours, np.clip(keras_out, 0, 255), atol=1e-3)
    inner = slice(16, 48)
    assert np.abs(center[0, inner, inner] - ours[inner, inner]).mean() > 10


def test_batches_are_the_same_in_any_order(tiny_data):
    # Each batch draws from its own (seed, epoch, index) generator: threads
    # (workers > 1) and TTA can make batches in any order.
    a = tiny_data.train_batches(seed=7)
    b = tiny_data.train_batches(seed=7)
    later = a[2][0]
    b[0], b[1]
    np.testing.assert_array_equal(b[2][0], later)
    a.on_epoch_end()
    assert np.abs(a[2][0] - later).mean() > 1  # a new epoch, new draws


def test_top_down_turns_by_quarter_turns(photo):
    tfms = ImageTransforms(64, random_crop=False, aug_tfms=lambda seed=None: transforms_top_down(seed, lighting=0.0, max_rotate=0.0))
    augmenter = tfms.build_augmenter(seed=0)
    center = tfms.crop(photo, None).astype("float32")
    dihedral = [np.rot90(f, k) for f in (center, center[:, ::-1]) for k in range(4)]
    seen = set()
    for i in range(12):
        out = augmenter([photo], np.random.default_rng(i))[0]
        # No rotation/lighting left: each output is one of the 8 symmetries.
        errors = [np.abs(out - d).mean() for d in dihedral]
        assert min(errors) < 0.5
        seen.add(int(np.argmin(errors)))
    assert len(seen) >= 4  # the seeds reach several symmetries


def test_random_rot90_turns_each_image_on_its_own():
    images = np.random.default_rng(0).uniform(0, 255, (8, 6, 6, 3)).astype("float32")
    layer = RandomRot90()
    transformation = layer.get_random_transformation(images, training=True, seed=5)
    turns = keras.ops.convert_to_numpy(transformation["quarter_turns"])
    assert turns.shape == (8,) and len(set(turns.tolist())) >= 2  # per image
    out = keras.ops.convert_to_numpy(layer.transform_images(images, transformation))
    for i in range(8):  # numpy's np.rot90 is the reference
        np.testing.assert_array_equal(out[i], np.rot90(images[i], turns[i]))
    still = layer(images, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(still), images)
    with pytest.raises(ValueError, match="square"):
        layer.transform_images(images[:, :4], transformation)
    # Registered: survives a config round trip.
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)).seed is None


def test_top_down_batch_of_8_gets_different_symmetries(photo):
    tfms = ImageTransforms(64, random_crop=False, aug_tfms=lambda seed=None: transforms_top_down(seed, lighting=0.0, max_rotate=0.0))
    center = tfms.crop(photo, None).astype("float32")
    dihedral = [np.rot90(f, k) for f in (center, center[:, ::-1]) for k in range(4)]
    out = tfms.build_augmenter(seed=0)([photo] * 8, np.random.default_rng(1))
    kinds = {int(np.argmin([np.abs(o - d).mean() for d in dihedral])) for o in out}
    assert len(kinds) >= 3  # one batch, several symmetries: drawn per image


@pytest.mark.parametrize("chunk", [32, 4])
def test_per_image_seeds_do_not_depend_on_the_batch(tiny_data, monkeypatch, chunk):
    # chunk=4: the batches of 7 straddle the blocks of positions whose
    # random transformations are drawn together.
    monkeypatch.setattr(BatchAugmenter, "CHUNK", chunk)
    whole = tiny_data.fixed_batches("valid", tfms=tiny_data.train_tfms, augment=True, seed=2, batch_size=16)
    sevens = tiny_data.fixed_batches("valid", tfms=tiny_data.train_tfms, augment=True, seed=2, batch_size=7)
    first16 = whole[0][0]
    by_seven = np.concatenate([sevens[0][0], sevens[1][0], sevens[2][0][:2]])
    np.testing.assert_allclose(by_seven, first16, atol=1e-4)


def _standard_layers():
    from kertransfer.transforms import transforms_basic

    return [
        keras.layers.RandomZoom((-0.3, 0.0), fill_mode="reflect"),
        keras.layers.RandomFlip("horizontal_and_vertical"),
        RandomRot90(),
        *transforms_basic(max_rotate=30.0, lighting=0.3),
    ]


@pytest.mark.parametrize("layer", _standard_layers(), ids=lambda layer: type(layer).__name__)
def test_rows_of_a_block_transformation_match_the_layer_on_the_whole_block(layer):
    """`per_position` takes rows of a block's transformation: for every
    standard layer, rows 2, 5 and 6 of the layer's own output on all 8
    images equal the layer run on those 3 images with their rows."""
    from kertransfer.transforms import _take_rows

    images = np.random.default_rng(0).uniform(0, 255, (8, 24, 24, 3)).astype("float32")
    whole = layer.get_random_transformation(keras.ops.zeros((8, 24, 24, 3)), training=True, seed=11)
    rows = np.array([2, 5, 6])
    # Rows taken first: Keras 3.15's torch `affine_transform` edits the
    # transform it is given in place, so a transformation serves one call.
    taken = _take_rows(whole, rows, 8)
    expected = keras.ops.convert_to_numpy(
        layer.transform_images(keras.ops.convert_to_tensor(images), whole, training=True)
    )
    part = layer.transform_images(keras.ops.convert_to_tensor(images[rows]), taken, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(part), expected[rows], atol=1e-3)
    # The layer did change pixels (the equality is not the identity's).
    assert np.abs(expected - images).max() > 1
