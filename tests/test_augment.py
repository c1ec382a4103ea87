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
    from kertransfer.augment import _take_rows

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


# ------------------------------------------- uint8 workers, device augmentation
def test_workers_hand_on_uint8_crops(tiny_data):
    from kertransfer.images import frame_image

    x = tiny_data.valid_batches()[0][0]  # no augmentation: the crops themselves
    assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == (16, 32, 32, 3)
    # The decode path's own framing (resize, center crop) is the reference.
    framing = tiny_data.valid_tfms.framing
    for row in (0, 5, 15):
        np.testing.assert_array_equal(x[row], frame_image(tiny_data.valid_paths[row], framing))
    part = tiny_data.train_batches(seed=4).worker_batch(1)
    assert part.x.dtype == np.uint8 and part.x.shape == (16, 32, 32, 3)
    assert len(part.transformations) == len(tiny_data.train_tfms.augment_layers())


def test_device_augmentation_is_the_keras_layers_on_the_batch(tiny_data):
    """A training batch equals each Keras layer's own `transform_images` run
    on the uint8 crops, with the seed the batch's (seed, epoch, index)
    generator gives it (after the two crop uniforms per image)."""
    batches = tiny_data.train_batches(seed=9)
    batches.on_epoch_end()  # epoch 1
    index = 2
    crops = batches.worker_batch(index).x
    x = keras.ops.convert_to_numpy(batches[index][0])
    assert x.dtype == np.float32 and x.shape == crops.shape
    rng = np.random.default_rng([9, 1, index])
    rng.random((len(crops), 2))  # the crops' draws
    expected = keras.ops.convert_to_tensor(crops.astype("float32"))
    for layer in tiny_data.train_tfms.augment_layers():
        seed = int(rng.integers(0, 2**31 - 1))
        transformation = layer.get_random_transformation(expected, training=True, seed=seed)
        expected = layer.transform_images(expected, transformation, training=True)
    expected = np.clip(keras.ops.convert_to_numpy(expected), 0, 255)
    np.testing.assert_allclose(x, expected, atol=1e-3)
    assert np.abs(x - crops).mean() > 1  # the layers did change pixels


@pytest.mark.parametrize("per_image_seeds", [False, True], ids=["training", "per_position"])
def test_batches_do_not_depend_on_the_workers(tiny_data, per_image_seeds):
    from kertransfer.data import ImageBatches

    def epochs(workers):
        batches = ImageBatches(
            tiny_data.split("train"), tiny_data.train_tfms, 16, shuffle=True, augment=True,
            seed=3, workers=workers, max_queue_size=3, per_image_seeds=per_image_seeds,
        )
        out = []
        for _ in range(2):
            out += [keras.ops.convert_to_numpy(batches[i][0]) for i in range(len(batches))]
            out.append(keras.ops.convert_to_numpy(batches.process_slice(1, 1, 2)[0][0]))
            batches.on_epoch_end()
        return out

    one, three = epochs(1), epochs(3)
    assert len(one) == 14
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)
    assert np.abs(one[0] - one[7]).mean() > 1  # epoch 2 is another draw


def test_model_casts_uint8_batches(tiny_data):
    from kertransfer.layers import ImagePreprocessing

    # Every backbone starts so: a functional model converts its inputs to
    # its Input's dtype (float32), then the preprocessing scales them.
    inputs = keras.Input((None, None, 3))
    pixels = ImagePreprocessing((127.5,) * 3, (127.5,) * 3)(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(pixels))
    x = tiny_data.valid_batches()[0][0]
    as_uint8 = keras.ops.convert_to_numpy(model(x, training=False))
    as_float = keras.ops.convert_to_numpy(model(x.astype("float32"), training=False))
    np.testing.assert_allclose(as_uint8, as_float, rtol=1e-6, atol=1e-7)


def test_prefetcher_runs_jobs_ahead_and_raises_their_errors():
    import threading

    from kertransfer.data.prefetch import Prefetcher

    threads = {}

    def job(key):
        def run():
            threads[key] = threading.get_ident()
            if key == 3:
                raise RuntimeError("job 3 failed")
            return key * 10

        return run

    prefetcher = Prefetcher(workers=2, ahead=2)
    assert prefetcher.get(0, job(0), [(1, job(1)), (2, job(2)), (3, job(3))]) == 0
    assert threads[0] == threading.get_ident()  # asked for now: run here
    assert prefetcher.get(1, job(1), [(2, job(2)), (3, job(3))]) == 10
    assert threads[1] != threading.get_ident()  # made ahead by a worker
    assert prefetcher.get(2, job(2), [(3, job(3))]) == 20
    with pytest.raises(RuntimeError, match="job 3 failed"):
        prefetcher.get(3, job(3))


def test_layers_without_a_seedable_transformation_run_in_order(photo):
    # Rescaling has no `get_random_transformation`: called as it is, between
    # the compiled layers, in the order given.
    flip = keras.layers.RandomFlip("horizontal")
    tfms = ImageTransforms(64)
    out = BatchAugmenter(tfms, [keras.layers.Rescaling(0.5), flip])([photo] * 4, np.random.default_rng(1))
    rng = np.random.default_rng(1)
    rng.integers(0, 2**31 - 1)  # Rescaling's seed, unused
    center = np.repeat(tfms.crop(photo, None).astype("float32")[None] * 0.5, 4, axis=0)
    transformation = flip.get_random_transformation(center, training=True, seed=int(rng.integers(0, 2**31 - 1)))
    assert keras.ops.convert_to_numpy(transformation["flips"]).any()  # the flip shows
    expected = keras.ops.convert_to_numpy(flip.transform_images(center, transformation, training=True))
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out.max() <= 128


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function tracing: TensorFlow only")
def test_one_traced_augmentation_serves_every_batch_size():
    # The stages' batch sizes, short last batches and TTA blocks must not
    # trace the augmentation again each (tf.function warned of retracing
    # in the demo): the batch size stays out of the compiled function.
    from kertransfer.augment import _COMPILED
    from kertransfer.transforms import transforms_side_on

    tfms = ImageTransforms(24, max_zoom=1.1, aug_tfms=transforms_side_on)
    augmenter = tfms.build_augmenter(0)
    _COMPILED.clear()
    for n in (32, 21, 16, 5, 7, 32):
        x = np.random.default_rng(n).integers(0, 256, (n, 24, 24, 3), dtype="uint8")
        assert tuple(augmenter.apply(x, augmenter.draw(np.random.default_rng(n), n)).shape) == (n, 24, 24, 3)
    (fn,) = _COMPILED.values()
    assert fn.experimental_get_tracing_count() <= 2


_FIRST_BATCH_UNDER_JAX = """
import json, sys
import keras
import numpy as np
from kertransfer.data import ImageClassifierData
from kertransfer.transforms import tfms_from_model
assert keras.backend.backend() == "jax"
data = ImageClassifierData.from_paths(sys.argv[1], batch_size=8, tfms=tfms_from_model("efficientnet_lite0", 32))
batches = data.train_batches(seed=0)
x = keras.ops.convert_to_numpy(batches[0][0])
crops = batches.worker_batch(0).x
print(json.dumps({"tf": "tensorflow" in sys.modules, "layers": len(data.train_tfms.augment_layers()),
                  "changed": float(np.abs(x - crops).mean())}))
"""


@pytest.mark.one_backend
def test_augmented_batches_do_not_import_tensorflow_under_jax(synthetic_folder):
    # Keras's `get_config` (the compiled augmentation's cache key) imports
    # TensorFlow under every backend: 5.7 s of the first batch under JAX.
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_BATCH_UNDER_JAX, str(synthetic_folder)],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["layers"] >= 2 and report["changed"] > 1  # the layers ran
    assert report["tf"] is False
