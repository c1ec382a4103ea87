"""What a model's layers need under a distribution (TensorFlow's `MirroredStrategy`).

BatchNorm synchronised over the devices (`synchronize_batch_norm`), undone
in saved configs so they load on every backend (`portable_config`), and a
warning for dropout, whose masks repeat across replicas
(`warn_replicated_dropout`).
"""

import warnings

import keras

__all__ = ["portable_config", "synchronize_batch_norm", "warn_replicated_dropout"]


def synchronize_batch_norm(model):
    """Makes every BatchNormalization layer of `model` use the global batch's statistics.

    TensorFlow's `MirroredStrategy` otherwise normalises each device's share
    with its own mean and variance. Keras reads `layer.synchronized` at call
    time, so this works on built layers. `portable_config` undoes it in
    saved configs (JAX and torch refuse `synchronized=True`).
    """
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _layers(model):
    stack = [model]
    while stack:
        layer = stack.pop()
        yield layer
        stack.extend(getattr(layer, "layers", []))


def warn_replicated_dropout(model):
    """Warns when `model` has dropout and trains under `MirroredStrategy`.

    Keras 3 (TensorFlow backend) seeds dropout from the layer's
    `SeedGenerator`, whose state is the same on every replica, so each
    device draws the same mask for its share of the batch: training stays
    unbiased, but the masks of rows `i` and `i + batch / devices` are equal,
    and results differ from one device. JAX `DataParallel` draws one mask
    for the global batch and matches one device.
    """
    rates = [
        layer.rate
        for layer in _layers(model)
        if isinstance(layer, keras.layers.Dropout) and layer.rate > 0
    ]
    if rates:
        warnings.warn(
            f"{len(rates)} Dropout layer(s) with rate > 0 under tf.distribute: Keras "
            "draws the same dropout mask on every replica (for its share of the "
            "batch), so training is not identical to one device (it stays "
            "unbiased). For identical results use KERAS_BACKEND=jax, or ps=0.",
            stacklevel=3,
        )


def portable_config(config):
    """A copy of a model config with `synchronized=False` on every BatchNormalization.

    A `.keras` file whose BatchNorm layers say `synchronized=True` (set for
    `MirroredStrategy`) does not load on JAX or torch; the flag only changes
    how training statistics are gathered across devices, never the weights.
    """
    if isinstance(config, dict):
        out = {k: portable_config(v) for k, v in config.items()}
        if out.get("class_name") == "BatchNormalization" and isinstance(
            out.get("config"), dict
        ):
            out["config"]["synchronized"] = False
        return out
    if isinstance(config, list):
        return [portable_config(v) for v in config]
    return config
