"""Small serializable layers shared by the backbones and the head.

They live in the training model; the `.keras` file `ConvLearner.save`
writes holds Keras's own equivalents instead (`kertransfer.portable`), so it
loads without kertransfer.
"""

import keras
from keras import ops

__all__ = [
    "ImagePreprocessing",
    "AdaptiveConcatPooling2D",
    "RandomRot90",
    "DepthwiseConv2D",
    "Conv2D",
]


@keras.saving.register_keras_serializable(package="kertransfer")
class ImagePreprocessing(keras.layers.Layer):
    """Maps raw pixels in `[0, 255]` to the input a backbone was trained on.

    Computes `(x[..., order] - mean) / std` per channel, where `order` is RGB
    or BGR. Living inside the model, the preprocessing travels with it into
    `.keras` files, SavedModel and LiteRT exports, so callers always feed raw
    pixels.

    Args:
        mean: three floats, per-channel mean in pixel units (0-255), given
            in the model's channel order.
        std: three floats, per-channel standard deviation in pixel units.
        channel_order: `"rgb"` (default) or `"bgr"` (caffe-style
            `keras.applications.ResNet50`).

    Input shape:
        `(batch, height, width, 3)`, float pixels in `[0, 255]`, RGB.

    Output shape:
        Same as the input.

    Raises:
        ValueError: if `mean`/`std` do not have three entries, a std is not
            positive, or `channel_order` is not `"rgb"`/`"bgr"`.

    Example:

    >>> layer = ImagePreprocessing(mean=(127.0,) * 3, std=(128.0,) * 3)
    >>> layer(np.full((1, 2, 2, 3), 255.0)).shape
    (1, 2, 2, 3)
    """

    def __init__(self, mean, std, channel_order="rgb", **kwargs):
        super().__init__(**kwargs)
        mean = [float(m) for m in mean]
        std = [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(
                "ImagePreprocessing needs three per-channel values for mean "
                f"and std. Received mean={mean}, std={std}."
            )
        if min(std) <= 0:
            raise ValueError(f"std must be positive. Received std={std}.")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(
                "channel_order must be 'rgb' or 'bgr'. "
                f"Received channel_order={channel_order!r}."
            )
        self.mean = mean
        self.std = std
        self.channel_order = channel_order

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.channel_order == "bgr":
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            mean=self.mean, std=self.std, channel_order=self.channel_order
        )
        return config


@keras.saving.register_keras_serializable(package="kertransfer")
class AdaptiveConcatPooling2D(keras.layers.Layer):
    """Concatenates global average and global max pooling (fast.ai).

    fast.ai's `AdaptiveConcatPool2d`: keeping both the mean and the peak
    activation of each channel gives the head more to work with than either
    alone. Output channel order is `[avg, max]`, as in fastai.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, 2 * channels)`.
    """

    def call(self, inputs):
        return ops.concatenate(
            [ops.mean(inputs, axis=(1, 2)), ops.max(inputs, axis=(1, 2))],
            axis=-1,
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


@keras.saving.register_keras_serializable(package="kertransfer")
class RandomRot90(keras.layers.Layer):
    """Rotates each image by its own random multiple of 90 degrees.

    With a random horizontal and vertical flip before it, this gives each
    image one of the 8 dihedral symmetries of a square: fast.ai's
    `transforms_top_down` (satellite and microscope images, where "up" means
    nothing). Like Keras's augmentation layers it is inert unless called
    with `training=True`, and it exposes `get_random_transformation` /
    `transform_images`, so `kertransfer.transforms.BatchAugmenter` can seed
    it per image.

    Args:
        seed: int seed of the layer's own generator, or None.

    Input shape:
        `(batch, size, size, channels)`: square images (a quarter turn of a
        non-square image would change its shape).

    Output shape:
        Same as the input; image `i` is `np.rot90(images[i], k[i])`
        (counter-clockwise quarter turns), `k[i]` drawn uniformly from
        `{0, 1, 2, 3}`.

    Raises:
        ValueError: on images that are not square.

    Example:

    >>> layer = RandomRot90(seed=0)
    >>> layer(np.zeros((8, 32, 32, 3)), training=True).shape
    (8, 32, 32, 3)
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def get_random_transformation(self, data, training=True, seed=None):
        """`{"quarter_turns": int32 (batch,)}`, zeros unless training."""
        batch = ops.shape(data)[0]
        if not training:
            return {"quarter_turns": ops.zeros((batch,), dtype="int32")}
        turns = keras.random.randint(
            (batch,), 0, 4, dtype="int32",
            seed=self.generator if seed is None else seed,
        )
        return {"quarter_turns": turns}

    def transform_images(self, images, transformation, training=True):
        """Applies each image's quarter turns (see the class docstring)."""
        height, width = images.shape[1], images.shape[2]
        if height is not None and width is not None and height != width:
            raise ValueError(
                "RandomRot90 rotates square images only (a quarter turn changes "
                f"the shape of a {height}x{width} image). Crop to a square first."
            )
        turns = ops.reshape(transformation["quarter_turns"], (-1, 1, 1, 1))
        out = images
        rotated = images
        for k in (1, 2, 3):
            # One counter-clockwise quarter turn: transpose, then flip rows.
            rotated = ops.flip(ops.transpose(rotated, (0, 2, 1, 3)), axis=1)
            out = ops.where(ops.equal(turns, k), rotated, out)
        return out

    def call(self, images, training=True):
        transformation = self.get_random_transformation(images, training=training)
        return self.transform_images(images, transformation, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


def _on_jax():
    return keras.backend.backend() == "jax"


@keras.saving.register_keras_serializable(package="kertransfer")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """Drop-in `keras.layers.DepthwiseConv2D`, fast under JAX on CPU.

    Same arguments, weights and outputs as Keras's layer. Under the JAX
    backend (depth multiplier 1, no dilation, channels last) it computes the
    convolution as a sum of `k * k` shifted input slices times per-channel
    weights, with a gradient of the same form
    (`kertransfer.jax_convolution`), because XLA:CPU's grouped convolution,
    and above all its kernel gradient, is one to three orders of magnitude
    slower (see "Training speed under JAX" in the README). Other backends
    and configurations run Keras's own `call`. Results agree with Keras's
    layer to float32 rounding.

    Example:

    >>> layer = DepthwiseConv2D(3, strides=2, padding="same")
    >>> layer(np.zeros((1, 8, 8, 4))).shape
    (1, 4, 4, 4)
    """

    def _shifted_form_applies(self):
        return (
            _on_jax()
            and self.depth_multiplier == 1
            and tuple(self.dilation_rate) == (1, 1)
            and self.data_format == "channels_last"
            and self.padding in ("same", "valid")
        )

    def call(self, inputs):
        if not self._shifted_form_applies():
            return super().call(inputs)
        from kertransfer.jax_convolution import depthwise_conv2d

        outputs = depthwise_conv2d(
            inputs,
            self.kernel[:, :, :, 0],
            tuple(self.strides),
            self.padding,
        )
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="kertransfer")
class Conv2D(keras.layers.Conv2D):
    """Drop-in `keras.layers.Conv2D` whose 1x1 kernels run as a matmul under JAX.

    Same arguments, weights and outputs as Keras's layer. A 1x1
    convolution is a matrix product over channels (of every `strides`-th
    pixel); under the JAX backend this layer computes it so, because XLA:CPU
    computes the kernel gradient of a convolution several times slower than
    the same gradient as a matmul. Other kernel sizes, backends and
    configurations run Keras's own `call`. Like `DepthwiseConv2D` above, it
    keeps Keras's class name for `.weights.h5` compatibility.

    Example:

    >>> layer = Conv2D(8, 1)
    >>> layer(np.zeros((1, 4, 4, 3))).shape
    (1, 4, 4, 8)
    """

    def _matmul_form_applies(self):
        return (
            _on_jax()
            and tuple(self.kernel_size) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
        )

    def call(self, inputs):
        if not self._matmul_form_applies():
            return super().call(inputs)
        strided = inputs
        if tuple(self.strides) != (1, 1):
            # Both "same" and "valid" keep ceil(size / stride) pixels.
            strided = inputs[:, :: self.strides[0], :: self.strides[1], :]
        outputs = ops.matmul(strided, self.kernel[0, 0])
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
