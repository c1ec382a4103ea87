"""Image transforms: crops and augmentation presets on Keras 3 layers.

fast.ai v0.7 builds its transforms with `tfms_from_model(arch, sz,
aug_tfms=transforms_side_on, max_zoom=1.1)`; kertransfer keeps those names.
Augmentation uses Keras 3 core preprocessing layers (the keras-cv layers
moved there), so it runs under TensorFlow, JAX and torch alike. Backbone
preprocessing is not a transform here: it is the first layer of every
backbone, so models always take raw pixels.
"""

import numpy as np

__all__ = [
    "ImageTransforms",
    "transforms_basic",
    "transforms_side_on",
    "transforms_top_down",
    "tfms_from_model",
]

DEFAULT_CROP_PCT = 0.875


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

    Any of the 8 dihedral symmetries (horizontal and vertical flips, and a
    random multiple of 90°), plus the basic rotation and lighting.

    Returns:
        list of Keras preprocessing layers.
    """
    from keras import layers

    return [
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
        _random_rot90_layer(seed),
    ] + transforms_basic(seed, max_rotate, lighting)


def _random_rot90_layer(seed):
    import keras
    from keras import ops

    class RandomRot90(keras.layers.Layer):
        """Rotates each batch by a random multiple of 90° (square images)."""

        def __init__(self, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=True):
            if not training:
                return images
            k = ops.convert_to_numpy(
                keras.random.randint((), 0, 4, seed=self.generator)
            )
            for _ in range(int(k)):
                images = ops.flip(ops.transpose(images, (0, 2, 1, 3)), axis=2)
            return images

    return RandomRot90(seed=seed)


class ImageTransforms:
    """Crop plus augmentation, applied to batches of decoded images.

    Images are decoded once with their short side resized to
    `round(image_size / crop_pct)` pixels (ImageNet's standard evaluation:
    256 for 224). Validation takes the center `image_size` square; training
    takes a random square of the same size (fast.ai `RandomCrop`), optionally
    zoomed in by up to `max_zoom`, then runs the augmentation layers.

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
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(
                f"image_size must be an integer >= 8 pixels. Received "
                f"image_size={image_size}."
            )
        if max_zoom < 1:
            raise ValueError(
                f"max_zoom must be >= 1 (1 = no zoom). Received {max_zoom}."
            )
        if not 0 < crop_pct <= 1:
            raise ValueError(
                f"crop_pct must be in (0, 1]. Received crop_pct={crop_pct}."
            )
        self.image_size = int(image_size)
        self.random_crop = random_crop
        self.aug_tfms = aug_tfms
        self.max_zoom = float(max_zoom)
        self.crop_pct = float(crop_pct)

    @property
    def decode_size(self):
        """Short side, in pixels, images are decoded to before cropping."""
        return int(round(self.image_size / self.crop_pct))

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
        """Crops one `(h, w, 3)` uint8 image to `(image_size, image_size, 3)`."""
        s = self.image_size
        h, w = image.shape[:2]
        if self.random_crop:
            top = int(rng.integers(0, h - s + 1))
            left = int(rng.integers(0, w - s + 1))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        return image[top : top + s, left : left + s]

    def build_augmenter(self, seed=None):
        """Returns a callable `batch -> batch` (float32 numpy), or None.

        Keras random layers are inert unless called with `training=True`;
        the augmenter does that.
        """
        if not self.augments:
            return None
        import keras

        layers_ = []
        if self.max_zoom > 1:
            zoom = 1.0 - 1.0 / self.max_zoom
            layers_.append(
                keras.layers.RandomZoom(
                    (-zoom, 0.0), fill_mode="reflect", seed=seed
                )
            )
        if callable(self.aug_tfms):
            layers_ += list(self.aug_tfms(seed=seed))
        elif self.aug_tfms:
            layers_ += list(self.aug_tfms)
        pipeline = keras.Sequential(layers_)

        def augment(batch):
            out = pipeline(batch, training=True)
            out = keras.ops.clip(out, 0.0, 255.0)
            return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")

        return augment


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
            is part of the model, not of the transforms).
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
