"""Image transforms: crops and augmentation presets on Keras 3 layers.

fast.ai v0.7 builds its transforms with `tfms_from_model(arch, sz,
aug_tfms=transforms_side_on, max_zoom=1.1)`; kertransfer keeps those names.
Augmentation uses Keras 3 core preprocessing layers (the keras-cv layers
moved there), so it runs under TensorFlow, JAX and torch alike. Backbone
preprocessing is not a transform here: it is the first layer of every
backbone, so models always take raw pixels.
"""

import numpy as np

from kertransfer.images import DEFAULT_CROP_PCT
from kertransfer.images import Framing
from kertransfer.images import center_crop

__all__ = [
    "ImageTransforms",
    "BatchAugmenter",
    "transforms_basic",
    "transforms_side_on",
    "transforms_top_down",
    "tfms_from_model",
]


def transforms_basic(seed=None, max_rotate=10.0, lighting=0.05):
    """Rotation up to `max_rotate` degrees and lighting (no flips).

    Args:
        seed: int seed for the Keras random layers, or None.
        max_rotate: maximum rotation, degrees either way.
        lighting: maximum relative change of brightness and of contrast.

    Returns:
        list of Keras preprocessing layers.
    """
    from keras import layers

    return [
        layers.RandomRotation(
            max_rotate / 360.0, fill_mode="reflect", seed=seed
        ),
        layers.RandomBrightness(lighting, value_range=(0, 255), seed=seed),
        layers.RandomContrast(lighting, value_range=(0, 255), seed=seed),
    ]


def transforms_side_on(seed=None, max_rotate=10.0, lighting=0.05):
    """fast.ai's `transforms_side_on`: photos taken from the side.

    Random horizontal flip (never vertical: dogs don't stand on their heads),
    rotation up to ±10°, brightness and contrast ±5 %.

    Returns:
        list of Keras preprocessing layers.
    """
    from keras import layers

    return [layers.RandomFlip("horizontal", seed=seed)] + transforms_basic(
        seed, max_rotate, lighting
    )


def transforms_top_down(seed=None, max_rotate=10.0, lighting=0.05):
    """fast.ai's `transforms_top_down`: satellite and microscope images.

    Any of the 8 dihedral symmetries, drawn per image (horizontal and
    vertical flips, and a random multiple of 90°: `RandomRot90`), plus the
    basic rotation and lighting.

    Returns:
        list of Keras preprocessing layers.
    """
    from keras import layers

    from kertransfer.layers import RandomRot90

    return [
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
        RandomRot90(seed=seed),
    ] + transforms_basic(seed, max_rotate, lighting)


class ImageTransforms:
    """Crop plus augmentation, applied to batches of decoded images.

    Images are decoded once with their short side resized to
    `round(image_size / crop_pct)` pixels (ImageNet's standard evaluation:
    256 for 224). Validation takes the center `image_size` square; training
    takes a random square of the same size (fast.ai `RandomCrop`), optionally
    zoomed in by up to `max_zoom`, then runs the augmentation layers (see
    `BatchAugmenter`).

    Args:
        image_size: side of the square model input, pixels.
        random_crop: random (training) or center (validation) crop.
        aug_tfms: a preset function such as `transforms_side_on`
            (called as `aug_tfms(seed=...)`), a list of Keras layers, or None.
        max_zoom: largest random zoom-in factor (>= 1; 1 disables zoom).
        crop_pct: fraction of the resized short side kept by the crop.

    Raises:
        ValueError: on a non-positive `image_size`, `max_zoom < 1` or
            `crop_pct` outside `(0, 1]`.
    """

    def __init__(
        self,
        image_size,
        random_crop=False,
        aug_tfms=None,
        max_zoom=1.0,
        crop_pct=DEFAULT_CROP_PCT,
    ):
        self.framing = Framing(image_size, crop_pct)
        if max_zoom < 1:
            raise ValueError(
                f"max_zoom must be >= 1 (1 = no zoom). Received {max_zoom}."
            )
        self.image_size = self.framing.image_size
        self.random_crop = random_crop
        self.aug_tfms = aug_tfms
        self.max_zoom = float(max_zoom)
        self.crop_pct = self.framing.crop_pct

    @property
    def decode_size(self):
        """Short side, in pixels, images are decoded to before cropping."""
        return self.framing.decode_size

    @property
    def augments(self):
        """True when the transforms change pixels randomly."""
        return bool(self.aug_tfms) or self.max_zoom > 1

    def resized(self, image_size):
        """The same transforms at another `image_size`."""
        return ImageTransforms(
            image_size,
            self.random_crop,
            self.aug_tfms,
            self.max_zoom,
            self.crop_pct,
        )

    def with_random_crop(self, random_crop):
        """The same transforms with random or center crops."""
        return ImageTransforms(
            self.image_size,
            random_crop,
            self.aug_tfms,
            self.max_zoom,
            self.crop_pct,
        )

    def crop(self, image, rng):
        """Crops one `(h, w, 3)` uint8 image to `(image_size, image_size, 3)`.

        A random square (offsets from `rng`) when `random_crop`, else the
        center square of `kertransfer.images.center_crop`.
        """
        s = self.image_size
        if not self.random_crop:
            return center_crop(image, s)
        h, w = image.shape[:2]
        top = int(rng.integers(0, h - s + 1))
        left = int(rng.integers(0, w - s + 1))
        return image[top : top + s, left : left + s]

    def augment_layers(self, seed=None):
        """The Keras layers of the augmentation, zoom first, or `[]`.

        `max_zoom > 1` becomes `keras.layers.RandomZoom((1 / max_zoom - 1,
        0))` (zoom in only, reflected borders), then the `aug_tfms` layers.
        """
        if not self.augments:
            return []
        import keras

        layers_ = []
        if self.max_zoom > 1:
            zoom = 1.0 - 1.0 / self.max_zoom
            layers_.append(
                keras.layers.RandomZoom((-zoom, 0.0), fill_mode="reflect", seed=seed)
            )
        if callable(self.aug_tfms):
            layers_ += list(self.aug_tfms(seed=seed))
        elif self.aug_tfms:
            layers_ += list(self.aug_tfms)
        return layers_

    def build_augmenter(self, seed=None):
        """Returns a `BatchAugmenter` for these transforms, or None.

        Keras random layers are inert unless called with `training=True`;
        the augmenter applies them as in training.
        """
        if not self.augments:
            return None
        return BatchAugmenter(self, self.augment_layers(seed))

    def crop_fraction(self, image, fraction):
        """Crops one image at offsets given as fractions of their range.

        `fraction` is `(u, v)` in `[0, 1)`: the crop's top is `int(u * (h -
        s + 1))`, its left `int(v * (w - s + 1))` (uniform over the possible
        offsets, like `crop` with a generator); the center crop when
        `random_crop` is off. Drawing a fixed two numbers per image makes a
        batch's crops independent of the other images' sizes, so a process
        can crop its slice of a batch alone (`ImageBatches.process_slice`).
        """
        s = self.image_size
        if not self.random_crop:
            return center_crop(image, s)
        h, w = image.shape[:2]
        top = int(fraction[0] * (h - s + 1))
        left = int(fraction[1] * (w - s + 1))
        return image[top : top + s, left : left + s]

    def batch(self, images, rng, augmenter=None, rows=None, batch_size=None):
        """Crops (and augments) decoded images into one model batch.

        Args:
            images: list of uint8 `(h, w, 3)` decoded images.
            rng: the randomness: one `numpy.random.Generator` for the whole
                batch (crop offsets, two uniforms per image, then
                augmentation parameters drawn from it in turn: training),
                or, for crops only, a list with one generator per image (an
                image is cropped the same in any batch; augmented copies
                that do not depend on the batch come from
                `BatchAugmenter.per_position`).
            augmenter: a `BatchAugmenter`, or None for crops only.
            rows: with one generator, the rows of a batch of `batch_size`
                that `images` are (a process's slice); they come out as in
                the whole batch. None: `images` is the whole batch.
            batch_size: the whole batch's size when `rows` is given.

        Returns:
            float32 `(len(images), image_size, image_size, 3)` in [0, 255].
        """
        if isinstance(rng, (list, tuple)):
            return np.stack([self.crop(im, r) for im, r in zip(images, rng)]).astype("float32")
        n = len(images) if rows is None else int(batch_size)
        rows = np.arange(n) if rows is None else np.asarray(rows)
        # Center crops draw nothing (the layers' seeds come first then).
        fractions = rng.random((n, 2)) if self.random_crop else np.zeros((n, 2))
        x = np.stack([self.crop_fraction(im, fractions[r]) for im, r in zip(images, rows)])
        x = x.astype("float32")
        if augmenter is None:
            return x
        return augmenter.augment_cropped(x, rng, rows, n)


class BatchAugmenter:
    """Crops and augments decoded images, seeded per batch or per image.

    Each image gets its random crop from a numpy generator, then the Keras
    augmentation layers run with `training=True` (Keras random layers are
    inert otherwise). Layers with Keras's `get_random_transformation` /
    `transform_images` (all Keras 3 image augmentation layers, and
    kertransfer's `RandomRot90`) get an explicit seed drawn from the same
    generator, so a batch is the same whichever thread makes it and in
    whatever order (workers > 1). Other user layers are called as they are
    (their own seed generator: deterministic only when batches are made in
    order).

    Called with one generator for the batch (training), the layers run
    once on the whole batch. TTA and predictions use `per_position`, where
    an image's augmented copy depends on its position in the epoch, not on
    the batch size or its neighbours, and the layers still run vectorised.

    Args:
        tfms: the `ImageTransforms` (crop size, random or center crop).
        layers: Keras augmentation layers, e.g. `tfms.augment_layers()`.
    """

    def __init__(self, tfms, layers):
        self.tfms = tfms
        self.layers = list(layers)

    def __call__(self, images, rng):
        """Augments a list of decoded uint8 images into a float32 batch.

        Args:
            images: list of uint8 `(h, w, 3)` arrays.
            rng: a `numpy.random.Generator` for the batch.

        Returns:
            float32 `(len(images), image_size, image_size, 3)` in [0, 255].

        Raises:
            TypeError: for a list of generators (per image: `per_position`).
        """
        if isinstance(rng, (list, tuple)):
            raise TypeError(
                "BatchAugmenter takes one generator for the batch; for copies that do "
                "not depend on the batch, use per_position(images, positions, seed)."
            )
        return self.tfms.batch(images, rng, self)

    CHUNK = 32

    def per_position(self, images, positions, seed, epoch=0):
        """Augments images by their position in the epoch, not their batch.

        Image `i` is cropped with `numpy.random.default_rng([seed, epoch,
        positions[i]])`; each layer's random transformation (Keras's
        `get_random_transformation`) is drawn for the whole block of `CHUNK`
        positions `positions[i] // CHUNK`, seeded from `(seed, epoch,
        block)`, and image `i` gets row `positions[i] % CHUNK` of it. So an
        image's augmented copy depends on its position and the seed alone:
        any batch size, any worker order gives the same pixels, while the
        layers run once per block present in the batch (the per-image
        loop, `__call__` with a list of generators, draws and runs each
        layer once per image). Layers without `get_random_transformation`
        run on the block with their own seed generator.

        Args:
            images: list of uint8 `(h, w, 3)` arrays.
            positions: int position of each image in the epoch (0-based).
            seed: int, the batches' seed.
            epoch: int, the epoch (TTA copies differ by epoch).

        Returns:
            float32 `(len(images), image_size, image_size, 3)` in [0, 255].
        """
        import keras

        positions = np.asarray(positions, dtype="int64")
        blocks = positions // self.CHUNK
        outputs = []
        for block in dict.fromkeys(blocks.tolist()):  # in order of appearance
            members = np.flatnonzero(blocks == block)
            rows = positions[members] % self.CHUNK
            crops = [
                self.tfms.crop(images[i], np.random.default_rng([seed, epoch, int(positions[i])]))
                for i in members
            ]
            out = keras.ops.convert_to_tensor(np.stack(crops).astype("float32"))
            # A 4-number key: a stream apart from the per-image crop streams.
            rng = np.random.default_rng([seed, epoch, block, self.CHUNK])
            # Only its shape matters to the draws: the whole block's.
            block_shape = keras.ops.zeros((self.CHUNK, *tuple(out.shape[1:])))
            for layer in self.layers:
                layer_seed = int(rng.integers(0, 2**31 - 1))
                if hasattr(layer, "get_random_transformation") and hasattr(layer, "transform_images"):
                    whole = layer.get_random_transformation(
                        block_shape, training=True, seed=layer_seed
                    )
                    transformation = _take_rows(whole, rows, self.CHUNK)
                    out = layer.transform_images(out, transformation, training=True)
                else:
                    out = layer(out, training=True)
            outputs.append(keras.ops.convert_to_numpy(keras.ops.clip(out, 0.0, 255.0)))
        return np.concatenate(outputs).astype("float32")

    def augment_cropped(self, x, rng, rows, batch_size):
        """Runs the augmentation layers on cropped rows `rows` of a batch of `batch_size`.

        Each layer's seed is drawn from `rng` in turn; a layer with Keras's
        `get_random_transformation` draws it for the whole batch's shape
        and these rows take theirs (`_take_rows`), so a slice of a batch
        comes out as in the whole batch. Layers without it run on the rows
        with their own seed generator (exact for the whole batch only).

        Args:
            x: float32 `(len(rows), s, s, 3)` crops.
            rng: the batch's `numpy.random.Generator` (after the crops).
            rows: int rows of the batch that `x` holds.
            batch_size: the whole batch's size.

        Returns:
            float32 `(len(rows), s, s, 3)` in [0, 255].
        """
        import keras

        rows = np.asarray(rows)
        whole = len(rows) == batch_size and np.array_equal(rows, np.arange(batch_size))
        out = keras.ops.convert_to_tensor(x)
        shape = None if whole else keras.ops.zeros((batch_size, *tuple(out.shape[1:])))
        for layer in self.layers:
            seed = int(rng.integers(0, 2**31 - 1))
            if hasattr(layer, "get_random_transformation") and hasattr(layer, "transform_images"):
                if whole:
                    transformation = layer.get_random_transformation(out, training=True, seed=seed)
                else:
                    transformation = _take_rows(
                        layer.get_random_transformation(shape, training=True, seed=seed),
                        rows, batch_size,
                    )
                out = layer.transform_images(out, transformation, training=True)
            else:
                out = layer(out, training=True)
        out = keras.ops.clip(out, 0.0, 255.0)
        return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")


def _take_rows(transformation, rows, batch_size):
    """Rows `rows` of a Keras layer's random transformation for `batch_size`.

    A transformation (`get_random_transformation`) is a tensor or a dict of
    them: per-image entries have `batch_size` rows (`flips`, `angle`,
    `rotation_matrix`, `height_zoom`, ...); `input_shape` and `batch_size`
    describe the batch; anything else (image height, width) is kept.
    """
    import keras

    if isinstance(transformation, dict):
        taken = {}
        for key, value in transformation.items():
            if key == "input_shape" and isinstance(value, (tuple, list)):
                taken[key] = (len(rows), *tuple(value[1:]))
            elif key == "batch_size" and isinstance(value, int):
                taken[key] = len(rows)
            else:
                taken[key] = _take_rows(value, rows, batch_size)
        return taken
    shape = getattr(transformation, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] == batch_size:
        return keras.ops.take(transformation, keras.ops.convert_to_tensor(rows), axis=0)
    return transformation


def tfms_from_model(
    arch,
    image_size,
    aug_tfms=transforms_side_on,
    max_zoom=1.1,
    crop_pct=DEFAULT_CROP_PCT,
):
    """Training and validation transforms for a backbone (fast.ai name).

    Args:
        arch: registered backbone name (checked to exist; its preprocessing
            is part of the model, not of the transforms), or None (the
            model is already built, e.g. loaded from a run folder).
        image_size: model input side, pixels.
        aug_tfms: augmentation preset (`transforms_side_on`,
            `transforms_top_down`, `transforms_basic`), a list of Keras
            layers, or None.
        max_zoom: random zoom-in up to this factor during training.
        crop_pct: center-crop fraction (0.875: 256 -> 224).

    Returns:
        `(train_tfms, valid_tfms)`, two `ImageTransforms`.

    Example:

    >>> train_tfms, valid_tfms = tfms_from_model("efficientnet_lite0", 224)
    >>> valid_tfms.decode_size
    256
    """
    from kertransfer.backbones import get_backbone

    if arch is not None:
        get_backbone(arch)
    train = ImageTransforms(
        image_size,
        random_crop=True,
        aug_tfms=aug_tfms,
        max_zoom=max_zoom,
        crop_pct=crop_pct,
    )
    valid = ImageTransforms(image_size, random_crop=False, crop_pct=crop_pct)
    return train, valid
