"""Samples-averaged F-beta as a Keras metric, for multi-label training."""

import keras
from keras import ops

__all__ = ["SamplesFBetaScore"]


@keras.saving.register_keras_serializable(package="kertransfer")
class SamplesFBetaScore(keras.metrics.Metric):
    """F-beta per item, averaged over items (fast.ai's Planet `f2`).

    fast.ai v0.7 lesson 2 trains the Planet model with `metrics=[f2]`:
    scikit-learn's `fbeta_score(targets, probs > threshold, beta=2,
    average="samples")`. `keras.metrics.FBetaScore` averages over tags
    (micro/macro) instead; this metric averages over items, so its value
    equals `kertransfer.metrics.fbeta` on the same predictions. Items with
    no tag present and none predicted score 0 (scikit-learn's default).
    Written with `keras.ops`: runs under TensorFlow, JAX and torch.

    Args:
        beta: weight of recall over precision (2: the Planet F2).
        threshold: a tag is predicted when its probability is above this.
        name: metric name; default `f{beta}` (`"f2"`).
        dtype: metric dtype.

    Example:

    >>> m = SamplesFBetaScore(beta=2, threshold=0.5)
    >>> m.update_state([[1, 0], [0, 1]], [[0.9, 0.2], [0.6, 0.7]])
    >>> round(float(m.result()), 4)  # items: 1 and 5/6
    0.9167
    """

    def __init__(self, beta=2.0, threshold=0.5, name=None, dtype=None):
        if beta <= 0:
            raise ValueError(f"beta must be > 0. Received beta={beta}.")
        if not 0 <= threshold <= 1:
            raise ValueError(
                f"threshold must be in [0, 1]. Received threshold={threshold}."
            )
        super().__init__(name=name or f"f{beta:g}", dtype=dtype)
        self.beta = float(beta)
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, self.dtype)
        y_pred = ops.cast(ops.greater(y_pred, self.threshold), self.dtype)
        tp = ops.sum(y_true * y_pred, axis=-1)
        fp = ops.sum((1.0 - y_true) * y_pred, axis=-1)
        fn = ops.sum(y_true * (1.0 - y_pred), axis=-1)
        b2 = self.beta * self.beta
        denominator = (1.0 + b2) * tp + b2 * fn + fp
        scores = ops.where(
            denominator > 0,
            (1.0 + b2) * tp / ops.maximum(denominator, 1.0),
            ops.zeros_like(denominator),
        )
        weights = ops.ones_like(scores)
        if sample_weight is not None:
            weights = ops.cast(ops.reshape(sample_weight, ops.shape(scores)), self.dtype)
        self.total.assign_add(ops.sum(scores * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "beta": self.beta,
            "threshold": self.threshold,
        }
