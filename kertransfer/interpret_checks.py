"""Argument checks and safe division shared by the interpretation classes.

`ClassificationInterpretation` (`kertransfer.interpret`) and
`MultiLabelInterpretation` (`kertransfer.interpret_multilabel`) take
probabilities a model already produced; these check them before any work.
"""

import numpy as np

__all__ = ["check_class_names", "check_k", "check_probs", "divide"]


def check_probs(probs, owner):
    """`probs` as float64 `(num_samples, num_classes)` in [0, 1], checked.

    Args:
        probs: array-like of probabilities (not logits).
        owner: the caller's name, for errors.

    Returns:
        float64 array, clipped to [0, 1] (rounding error only).

    Raises:
        ValueError: wrong rank, no rows, NaN/inf, or values outside [0, 1]
            (logits: the message says to apply softmax or sigmoid).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(
            f"{owner} expects probs of shape (num_samples, num_classes). "
            f"Received shape {probs.shape}."
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{owner} received probs containing NaN or inf.")
    if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise ValueError(
            f"{owner} expects probabilities in [0, 1]. Received values in "
            f"[{probs.min():.4g}, {probs.max():.4g}]; these look like logits "
            "or log-probabilities: apply softmax (or exp, or sigmoid for "
            "multi-label) first."
        )
    return np.clip(probs, 0.0, 1.0)


def check_class_names(class_names, num_classes, owner):
    """`class_names` as `num_classes` unique strings (`"0"`, `"1"`, ... for None).

    Raises:
        ValueError: a count other than `num_classes`, or duplicates.
    """
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"{owner} got {len(class_names)} class_names for probs with "
            f"{num_classes} columns. Received class_names={class_names}."
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(
            f"{owner} needs unique class_names. Received {class_names}."
        )
    return class_names


def check_k(k, owner):
    """`k` as a positive int, or None (all items).

    Raises:
        ValueError: anything else (bools included), naming `owner`.
    """
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(
            f"{owner} expects k to be a positive int or None (all items). "
            f"Received k={k!r}."
        )
    return int(k)


def divide(numerator, denominator):
    """Elementwise `numerator / denominator`, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(
        numerator,
        denominator,
        out=np.zeros(np.broadcast(numerator, denominator).shape),
        where=denominator != 0,
    )
