"""Batch augmentation: parameters drawn on the host, pixels moved on the device.

fastai v2 runs its `batch_tfms` on the GPU on whole batches; kertransfer
does the same with the Keras 3 augmentation layers. The work splits in
two:

- on the host (the batches' worker threads, `BatchAugmenter.draw` and
  `draw_per_position`): each layer's random transformation (Keras's
  `get_random_transformation`, a few numbers per image) from a seed drawn
  from a numpy generator seeded by `(seed, epoch, batch index)` or by the
  image's position, so a batch is the same whichever thread makes it;
- on the device (`BatchAugmenter.apply`): the uint8 crops cast to float32
  and every layer's `transform_images` with those transformations, each
  compiled (`tf.function` under TensorFlow, `jax.jit` under JAX; torch
  runs eagerly on its device).
"""

import numpy as np

from kertransfer.no_tensorflow import tensorflow_unimported

__all__ = ["BatchAugmenter"]


# Compiled `transform_images` by layer config and static transformation
# entries, shared by every augmenter (the oldest dropped past the bound).
_COMPILED = {}
_MAX_COMPILED = 64


def _is_tensor(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _transformable(layer):
    return hasattr(layer, "get_random_transformation") and hasattr(layer, "transform_images")


class BatchAugmenter:
    """Augments cropped batches with Keras layers, seeded per batch or image.

    Layers with Keras's `get_random_transformation` / `transform_images`
    (all Keras 3 image augmentation layers, and kertransfer's
    `RandomRot90`) get their transformation from an explicit seed drawn
    from a numpy generator, so a batch is the same whichever thread makes
    it and in whatever order (workers > 1). Other user layers are called as
    they are (`training=True`, their own seed generator: deterministic only
    when batches are made in order), eagerly.

    With one generator for the batch (training: `draw`), each layer's seed
    is drawn in turn and its transformation drawn for the whole batch's
    shape, so a process's slice of a batch gets the rows the whole batch
    would (`kertransfer.distribute`). TTA and predictions use
    `draw_per_position`, where an image's transformation depends on its
    position in the epoch, not on the batch size or its neighbours.

    Args:
        tfms: the `ImageTransforms` (crop size, random or center crop).
        layers: Keras augmentation layers, e.g. `tfms.augment_layers()`.

    Example:

    >>> augmenter = tfms.build_augmenter()
    >>> rng = np.random.default_rng([seed, epoch, index])
    >>> crops = tfms.crops(images, rng)                # uint8, host
    >>> x = augmenter.apply(crops, augmenter.draw(rng, len(crops)))  # device
    """

    CHUNK = 32

    def __init__(self, tfms, layers):
        self.tfms = tfms
        self.layers = list(layers)
        self._keys = None

    # ------------------------------------------------------------- host
    def draw(self, rng, batch_size, rows=None):
        """Each layer's random transformation for rows `rows` of a batch.

        Draws one seed per layer from `rng` in turn (after the crops'
        draws); a layer's transformation is drawn for the whole batch's
        shape and `rows` take theirs, so a slice of a batch gets what the
        whole batch would.

        Args:
            rng: the batch's `numpy.random.Generator`.
            batch_size: the whole batch's size.
            rows: int rows of the batch wanted; default all.

        Returns:
            list, one per layer: its transformation for the rows (a dict of
            tensors with one row per image), or None for a layer without
            `get_random_transformation`.
        """
        import keras

        rows = np.arange(batch_size) if rows is None else np.asarray(rows)
        whole = len(rows) == batch_size and np.array_equal(rows, np.arange(batch_size))
        s = self.tfms.image_size
        # Only its shape matters to the draws.
        shape = keras.ops.zeros((batch_size, s, s, 3))
        out = []
        for layer in self.layers:
            seed = int(rng.integers(0, 2**31 - 1))
            if not _transformable(layer):
                out.append(None)
                continue
            transformation = layer.get_random_transformation(shape, training=True, seed=seed)
            out.append(transformation if whole else _take_rows(transformation, rows, batch_size))
        return out

    def draw_per_position(self, positions, seed, epoch=0):
        """Each layer's transformation for images at `positions` in the epoch.

        Each layer's random transformation is drawn for the whole block of
        `CHUNK` positions `positions[i] // CHUNK`, its seeds from
        `numpy.random.default_rng([seed, epoch, block, CHUNK])`, and image
        `i` gets row `positions[i] % CHUNK` of it. So an image's
        transformation depends on its position and the seed alone: any
        batch size, any worker order gives the same pixels.

        Args:
            positions: int position of each image in the epoch (0-based).
            seed: int, the batches' seed.
            epoch: int, the epoch (TTA copies differ by epoch).

        Returns:
            As `draw`: one transformation (or None) per layer, one row per
            position, in the order of `positions`.
        """
        import keras

        positions = np.asarray(positions, dtype="int64")
        blocks = positions // self.CHUNK
        parts = []  # (members, per-layer transformations)
        for block in dict.fromkeys(blocks.tolist()):  # in order of appearance
            members = np.flatnonzero(blocks == block)
            # A 4-number key: a stream apart from the per-image crop streams.
            rng = np.random.default_rng([seed, epoch, block, self.CHUNK])
            drawn = self.draw(rng, self.CHUNK, positions[members] % self.CHUNK)
            parts.append((members, drawn))
        if len(parts) == 1:
            return parts[0][1]
        # Back to the order of `positions`.
        where = keras.ops.convert_to_tensor(np.argsort(np.concatenate([m for m, _ in parts])))
        return [
            None if drawn[0] is None else _concat_rows(list(drawn), where, len(positions))
            for drawn in zip(*(d for _, d in parts))
        ]

    # ----------------------------------------------------------- device
    def apply(self, x, transformations):
        """Casts uint8 crops to float32 and augments them on the device.

        Args:
            x: uint8 (or float) `(n, s, s, 3)` crops, numpy or a tensor.
            transformations: from `draw` or `draw_per_position`, for these
                `n` rows.

        Returns:
            float32 tensor of the backend `(n, s, s, 3)` in [0, 255], on
            its default device.
        """
        import keras

        out = keras.ops.cast(keras.ops.convert_to_tensor(x), "float32")
        tensors, static = _split(transformations)
        keys = self._layer_keys()
        if keras.backend.backend() == "tensorflow" and all(t is not None for t in transformations):
            # One tf.function for the chain (as fast as layer by layer under
            # TensorFlow): tf.function warns of retracing when functions
            # of one Python function trace 5 times in a row, as one per
            # layer did at their first batch.
            out = _compiled_chain(self.layers, tuple(keys), static)(out, tensors)
            return keras.ops.clip(out, 0.0, 255.0)
        for i, layer in enumerate(self.layers):
            if transformations[i] is None:  # a layer without a seedable transformation
                out = layer(out, training=True)
            else:
                out = _compiled_chain([layer], (keys[i],), static[i : i + 1])(out, tensors[i : i + 1])
        return keras.ops.clip(out, 0.0, 255.0)

    def _layer_keys(self):
        """Each layer's class and config less its seed: what `transform_images` depends on.

        Batches made with other seeds (every fit, every TTA copy) reuse the
        compiled functions instead of compiling anew (seconds under JAX).
        Keras's `get_config` serializes the dtype policy, which imports
        TensorFlow under every backend: 5.7 s of the first batch under JAX
        (2026-12-04, this 2-core CPU); `tensorflow_unimported` skips it.
        """
        if self._keys is None:
            self._keys = []
            for layer in self.layers:
                with tensorflow_unimported():
                    config = layer.get_config()
                config = {k: v for k, v in config.items() if k not in ("seed", "name")}
                self._keys.append((type(layer).__module__, type(layer).__qualname__, repr(sorted(config.items()))))
        return self._keys

    # ---------------------------------------------- host + device, numpy
    def __call__(self, images, rng):
        """Crops and augments a list of decoded uint8 images into a float32 batch.

        Args:
            images: list of uint8 `(h, w, 3)` arrays.
            rng: a `numpy.random.Generator` for the batch.

        Returns:
            float32 numpy `(len(images), image_size, image_size, 3)` in [0, 255].

        Raises:
            TypeError: for a list of generators (per image: `per_position`).
        """
        if isinstance(rng, (list, tuple)):
            raise TypeError(
                "BatchAugmenter takes one generator for the batch; for copies that do "
                "not depend on the batch, use per_position(images, positions, seed)."
            )
        return self.tfms.batch(images, rng, self)

    def per_position(self, images, positions, seed, epoch=0):
        """Crops and augments images by their position in the epoch, not their batch.

        Image `i` is cropped with `numpy.random.default_rng([seed, epoch,
        positions[i]])` and transformed as `draw_per_position` says.

        Args:
            images: list of uint8 `(h, w, 3)` arrays.
            positions: int position of each image in the epoch (0-based).
            seed: int, the batches' seed.
            epoch: int, the epoch.

        Returns:
            float32 numpy `(len(images), image_size, image_size, 3)` in [0, 255].
        """
        import keras

        crops = self.tfms.crops_per_position(images, positions, seed, epoch)
        out = self.apply(crops, self.draw_per_position(positions, seed, epoch))
        return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")

    def augment_cropped(self, x, rng, rows, batch_size):
        """Augments cropped rows `rows` of a batch of `batch_size` (`draw`, then `apply`).

        Args:
            x: `(len(rows), s, s, 3)` crops, uint8 or float.
            rng: the batch's `numpy.random.Generator` (after the crops).
            rows: int rows of the batch that `x` holds.
            batch_size: the whole batch's size.

        Returns:
            float32 numpy `(len(rows), s, s, 3)` in [0, 255].
        """
        import keras

        out = self.apply(x, self.draw(rng, batch_size, rows))
        return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")


def _split(transformations):
    """`(tensors, static)`: per layer, its tensor entries and its other entries."""
    tensors, static = [], []
    for transformation in transformations:
        if transformation is None:
            transformation = {}
        elif not isinstance(transformation, dict):
            # A bare tensor (no dict): under the key None.
            transformation = {None: transformation}
        tensors.append({k: v for k, v in transformation.items() if _is_tensor(v)})
        static.append(_for_batch({k: v for k, v in transformation.items() if not _is_tensor(v)}, None))
    return tensors, static


# The entries of a transformation that hold the batch size (Keras's
# `input_shape`, and RandomRotation's `batch_size`): set for the rows
# taken (`_take_rows`, `_concat_rows`), and kept out of a compiled
# function's key, taken from the batch inside it (`_split`, `_with_batch`),
# so one traced function serves every batch size (the stages' batch sizes,
# short last batches, TTA blocks).
_NOT_BATCH = object()


def _batch_entry(key, value, n):
    """Entry `key: value` for a batch of `n` (None: any), or `_NOT_BATCH` if it holds no batch size."""
    if key == "input_shape" and isinstance(value, (tuple, list)):
        return (n, *tuple(value[1:]))
    if key == "batch_size" and (value is None or isinstance(value, int)):
        return n
    return _NOT_BATCH


def _for_batch(entries, n):
    """`entries` (a transformation's non-tensor entries) with their batch size `n`."""
    out = {}
    for key, value in entries.items():
        entry = _batch_entry(key, value, n)
        out[key] = value if entry is _NOT_BATCH else entry
    return out


def _with_batch(fixed, x):
    """`fixed` with its batch entries set from the batch `x`."""
    import keras

    n = x.shape[0]
    return _for_batch(fixed, keras.ops.shape(x)[0] if n is None else n)


def _transform(layer, x, fixed, tensors):
    transformation = {**_with_batch(fixed, x), **tensors}
    transformation = transformation[None] if None in transformation else transformation
    return layer.transform_images(x, transformation, training=True)


def _compiled_chain(layers, keys, static):
    """`fn(x, tensors)`: every layer's `transform_images` in turn, compiled as one.

    Under JAX `apply` compiles each layer apart (a chain of one): XLA fuses
    one affine transform's interpolation into the next one's gathers,
    computing it again for every tap (the chain compiled whole ran 2.3x
    slower than layer by layer under JAX on CPU: 1.84 s against 0.79 s per
    batch of 32 at 224 px, side-on with zoom).
    """
    cache_key = (keys, repr(static))
    fn = _COMPILED.get(cache_key)
    if fn is None:

        def transform_chain(x, tensors):
            for layer, fixed, part in zip(layers, static, tensors):
                x = _transform(layer, x, fixed, part)
            return x

        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.pop(next(iter(_COMPILED)))
        fn = _COMPILED[cache_key] = _compile(transform_chain)
    return fn


def _compile(fn):
    """`fn` compiled for the backend: `tf.function`, `jax.jit`, or as is (torch)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


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
            entry = _batch_entry(key, value, len(rows))
            taken[key] = _take_rows(value, rows, batch_size) if entry is _NOT_BATCH else entry
        return taken
    shape = getattr(transformation, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] == batch_size:
        return keras.ops.take(transformation, keras.ops.convert_to_tensor(rows), axis=0)
    return transformation


def _concat_rows(parts, where, n):
    """Transformations of consecutive groups of rows joined, rows `where` taken.

    `parts` are one layer's transformations (as `_take_rows` gives) of the
    groups, in order; the result has `n` rows, row `i` the joined row
    `where[i]`.
    """
    import keras

    first = parts[0]
    if isinstance(first, dict):
        joined = {}
        for key, value in first.items():
            entry = _batch_entry(key, value, n)
            joined[key] = _concat_rows([p[key] for p in parts], where, n) if entry is _NOT_BATCH else entry
        return joined
    if _is_tensor(first) and len(first.shape) >= 1:
        return keras.ops.take(keras.ops.concatenate(parts, axis=0), where, axis=0)
    return first
