"""Image transforms: crops and augmentation presets on Keras 3 layers.

fast.ai v0.7 builds its transforms with `tfms_from_model(arch, sz,
aug_tfms=transforms_side_on, max_zoom=1.1)`; kertransfer keeps those names.
Augmentation uses Keras 3 core preprocessing layers (the keras-cv layers
moved there), so it runs under TensorFlow, JAX and torch alike. Backbone
preprocessing is not a transform here: it is the first layer of every
backbone, so models always take raw pixels.
"""

import numpy as np

# `BatchAugmenter` lived here before `kertransfer.augment`.
from kertransfer.augment import BatchAugmenter
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

    def crops(self, images, rng, rows=None, batch_size=None):
        """Crops decoded images into one uint8 batch (what the workers hand on).

        Args:
            images: list of uint8 `(h, w, 3)` decoded images.
            rng: one `numpy.random.Generator` for the whole batch (two
                uniforms per image for the crop offsets, drawn for the
                whole batch; none for center crops), or a list with one
                generator per image (an image is cropped the same in any
                batch).
            rows: with one generator, the rows of a batch of `batch_size`
                that `images` are (a process's slice); they come out as in
                the whole batch. None: `images` is the whole batch.
            batch_size: the whole batch's size when `rows` is given.

        Returns:
            uint8 `(len(images), image_size, image_size, 3)`.
        """
        if isinstance(rng, (list, tuple)):
            return np.stack([self.crop(im, r) for im, r in zip(images, rng)])
        n = len(images) if rows is None else int(batch_size)
        rows = np.arange(n) if rows is None else np.asarray(rows)
        # Center crops draw nothing (the layers' seeds come first then).
        fractions = rng.random((n, 2)) if self.random_crop else np.zeros((n, 2))
        return np.stack([self.crop_fraction(im, fractions[r]) for im, r in zip(images, rows)])

    def crops_per_position(self, images, positions, seed, epoch=0):
        """uint8 crops, image `i` cropped with `default_rng([seed, epoch, positions[i]])`.

        An image's crop depends on its position in the epoch and the seed
        alone, not on the batch (TTA, predictions).
        """
        rngs = [np.random.default_rng([seed, epoch, int(p)]) for p in positions]
        return self.crops(images, rngs)

    def batch(self, images, rng, augmenter=None, rows=None, batch_size=None):
        """Crops (and augments) decoded images into one float32 numpy batch.

        `crops`, then, with an augmenter, its transformations drawn from
        the same generator (`BatchAugmenter.draw`) applied on the device
        and brought back. `ImageBatches` keeps the two steps apart: uint8
        crops from its workers, augmentation on the device.

        Args:
            images, rng, rows, batch_size: as `crops`; with an augmenter,
                one generator for the batch (per-image copies:
                `BatchAugmenter.per_position`).
            augmenter: a `BatchAugmenter`, or None for crops only.

        Returns:
            float32 `(len(images), image_size, image_size, 3)` in [0, 255].
        """
        x = self.crops(images, rng, rows, batch_size)
        if augmenter is None or isinstance(rng, (list, tuple)):
            return x.astype("float32")
        n = len(images) if rows is None else int(batch_size)
        return augmenter.augment_cropped(x, rng, np.arange(n) if rows is None else rows, n)


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
