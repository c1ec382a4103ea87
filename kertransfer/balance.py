"""Unbalanced classes: oversampling, class weights, balanced accuracy.

fast.ai's advice for a rare class (lesson 2 of the 2018 course, and Buda,
Maki & Mazurowski, "A systematic study of the class imbalance problem in
convolutional neural networks", Neural Networks 2018) is to copy the rare
cases until every class is about as frequent as the largest one. The
alternative is to weight the loss per class, as scikit-learn's
`class_weight="balanced"` does. Both are pure numpy here; `data.py` and
`learner.py` wire them in.
"""

import numbers

import numpy as np

__all__ = [
    "oversample_indices",
    "balanced_class_weights",
    "resolve_class_weight",
    "per_class_recall",
    "balanced_accuracy",
]


def _check_single_label(labels, what):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"{what} needs one integer label per image (single-label "
            f"classification). Received labels of shape {labels.shape} "
            "(multi-label targets); weight or resample multi-label data "
            "yourself."
        )
    return labels


def oversample_indices(labels, num_classes=None):
    """Training indices with each class's images repeated to the largest count.

    Every class with `n_c` images gets `max_c n_c` indices: its images
    cycled in order (`np.resize`), so each one appears `floor(max / n_c)` or
    one more times per epoch. Nothing is decoded or copied: the result just
    indexes the training images. Classes without images stay absent.

    Args:
        labels: int array `(n,)` of class indices.
        num_classes: number of classes (default: `labels.max() + 1`).

    Returns:
        int64 array `(num_classes_present * max_count,)` of indices into
        `labels`, sorted.

    Raises:
        ValueError: if `labels` is not 1-D (multi-label targets).

    Example:

    >>> oversample_indices([0, 0, 0, 1])
    array([0, 1, 2, 3, 3, 3])
    """
    labels = _check_single_label(labels, "Oversampling")
    if labels.size == 0:
        return np.zeros(0, dtype="int64")
    num_classes = int(num_classes or labels.max() + 1)
    counts = np.bincount(labels, minlength=num_classes)
    target = counts.max()
    parts = [
        np.resize(np.flatnonzero(labels == c), target)
        for c in range(num_classes)
        if counts[c] > 0
    ]
    return np.sort(np.concatenate(parts)).astype("int64")


def balanced_class_weights(labels, num_classes):
    """scikit-learn's `class_weight="balanced"`: `n / (C * count_c)`.

    A class with half the average frequency gets weight 2; weights average
    to 1 over the training images, so the loss keeps its scale. A class
    without training images gets weight 0 (it contributes no loss anyway).

    Args:
        labels: int array `(n,)` of class indices.
        num_classes: `C`, the number of classes.

    Returns:
        dict `{class_index: weight}` for every class, as `model.fit` takes it.

    Raises:
        ValueError: if `labels` is not 1-D (multi-label targets).

    Example:

    >>> balanced_class_weights([0, 0, 0, 1], 2)
    {0: 0.6666666666666666, 1: 2.0}
    """
    labels = _check_single_label(labels, 'class_weight="balanced"')
    counts = np.bincount(labels, minlength=num_classes)
    n = len(labels)
    return {
        c: (n / (num_classes * counts[c]) if counts[c] else 0.0)
        for c in range(num_classes)
    }


def resolve_class_weight(class_weight, labels, num_classes):
    """Turns `fit`'s `class_weight` argument into Keras's dict (or None).

    Args:
        class_weight: None, `"balanced"`, or a dict `{class_index: weight}`
            (class names as keys are not accepted: use the index of
            `data.classes`); classes left out get weight 1.
        labels: training labels `(n,)`.
        num_classes: number of classes.

    Returns:
        None, or a dict with a float weight for each class index.

    Raises:
        ValueError: on any other string, unknown class indices, negative
            weights, or multi-label `labels`.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(
                'class_weight must be None, "balanced" or a dict '
                f"{{class_index: weight}}. Received class_weight={class_weight!r}."
            )
        return balanced_class_weights(labels, num_classes)
    if not isinstance(class_weight, dict):
        raise ValueError(
            'class_weight must be None, "balanced" or a dict {class_index: '
            f"weight}}. Received a {type(class_weight).__name__}."
        )
    _check_single_label(labels, "class_weight")
    bad = [
        k
        for k in class_weight
        if not isinstance(k, numbers.Integral) or not 0 <= k < num_classes
    ]
    if bad:
        raise ValueError(
            f"class_weight keys must be class indices in [0, {num_classes}) "
            f"(positions in data.classes). Received keys {bad}."
        )
    weights = {c: 1.0 for c in range(num_classes)}
    for k, w in class_weight.items():
        if not w >= 0:
            raise ValueError(
                f"class_weight values must be >= 0. Received {w} for class {k}."
            )
        weights[int(k)] = float(w)
    return weights


def per_class_recall(probs, targets, num_classes=None):
    """Recall (accuracy within the class) of each class.

    Args:
        probs: `(n, num_classes)` scores, or `(n,)` predicted class indices.
        targets: int array `(n,)` of true classes.
        num_classes: number of classes (default: from `probs` / the labels).

    Returns:
        float array `(num_classes,)`; NaN for a class absent from `targets`.
    """
    probs = np.asarray(probs)
    targets = np.asarray(targets)
    preds = probs.argmax(-1) if probs.ndim == 2 else probs
    if num_classes is None:
        num_classes = probs.shape[-1] if probs.ndim == 2 else int(
            max(preds.max(), targets.max()) + 1
        )
    recall = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = targets == c
        if mask.any():
            recall[c] = float((preds[mask] == c).mean())
    return recall


def balanced_accuracy(probs, targets, num_classes=None):
    """Mean per-class recall (scikit-learn's `balanced_accuracy_score`).

    Chance level is `1 / num_classes` whatever the class frequencies, so a
    model that always predicts the majority class scores exactly that.

    Args:
        probs: `(n, num_classes)` scores, or `(n,)` predicted class indices.
        targets: int array `(n,)`.
        num_classes: number of classes (optional).

    Returns:
        float in [0, 1], over the classes present in `targets`.
    """
    return float(np.nanmean(per_class_recall(probs, targets, num_classes)))
