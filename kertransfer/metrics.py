"""Multi-label metrics in numpy: F-beta and threshold search (Planet).

fast.ai v0.7 lesson 2 scores the Kaggle "Planet: Understanding the Amazon
from Space" competition with `planet.f2`: scikit-learn's
`fbeta_score(targets, probs > threshold, beta=2, average="samples")`, and
picks the threshold with `planet.opt_th`. These are the same computations
without scikit-learn, for any number of items and tags. The Keras training
metric is `kertransfer.fbeta_score.SamplesFBetaScore`.
"""

import numpy as np

__all__ = ["binary_cross_entropy", "check_multi_hot", "cross_entropy", "fbeta", "fbeta_from_counts", "opt_th"]

DEFAULT_THRESHOLDS = np.arange(0.05, 0.95, 0.01)


def fbeta_from_counts(tp, fp, fn, beta=2):
    """F-beta from true positive, false positive and false negative counts.

    `F = (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)`, elementwise; 0 where
    the denominator is 0 (nothing present, nothing predicted), as
    scikit-learn's default `zero_division`.

    Args:
        tp, fp, fn: counts, scalars or arrays of one shape.
        beta: weight of recall over precision (2: recall counts 4x).

    Returns:
        float64 array of the broadcast shape.
    """
    b2 = float(beta) ** 2
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    numerator = (1 + b2) * tp
    denominator = numerator + b2 * fn + fp
    return np.divide(
        numerator,
        denominator,
        out=np.zeros(np.broadcast(numerator, denominator).shape),
        where=denominator != 0,
    )


def check_multi_hot(probs, targets, name):
    """Validates `(num_items, num_tags)` probabilities and 0/1 targets.

    Returns:
        `(probs as float64, targets as bool)`.

    Raises:
        ValueError: naming `name`, on mismatched shapes or non-0/1 targets.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(
            f"{name} expects probs and multi-hot targets of one shape "
            f"(num_items, num_tags). Received probs {probs.shape} and targets "
            f"{targets.shape}."
        )
    if not np.all((targets == 0) | (targets == 1)):
        raise ValueError(f"{name} expects targets of 0s and 1s (multi-hot).")
    return probs, targets.astype(bool)


# Same value as `keras.config.epsilon()`, so the losses here match what
# `keras.losses.categorical_crossentropy` reports for the same probabilities.
EPSILON = 1e-7


def cross_entropy(probs, targets, epsilon=EPSILON):
    """Per-sample categorical cross-entropy `-log(p[target])`.

    Probabilities are clipped to `[epsilon, 1 - epsilon]` first, like
    `keras.losses.categorical_crossentropy`, so a probability of exactly 0
    for the true class gives a large but finite loss.

    Args:
        probs: float array `(n, num_classes)` of class probabilities.
        targets: int array `(n,)` of true class indices.
        epsilon: clipping constant.

    Returns:
        Float array `(n,)`.

    Example:

    >>> cross_entropy(np.array([[0.9, 0.1], [0.0, 1.0]]), np.array([0, 0]))
    array([ 0.10536052, 16.11809565])
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    picked = probs[np.arange(len(targets)), targets]
    return -np.log(np.clip(picked, epsilon, 1.0 - epsilon))


def binary_cross_entropy(probs, targets, epsilon=1e-7):
    """Per-item binary cross-entropy, averaged over tags (Keras's clip).

    `-mean_j(t_j log p_j + (1 - t_j) log(1 - p_j))` with `p` clipped to
    `[epsilon, 1 - epsilon]`, as `keras.losses.binary_crossentropy`
    computes it from probabilities: the loss a multi-label (sigmoid) model
    trains with.

    Args:
        probs: float array `(num_items, num_tags)` of tag probabilities.
        targets: multi-hot array `(num_items, num_tags)` of 0/1.
        epsilon: clipping constant (`keras.config.epsilon()`).

    Returns:
        float64 array `(num_items,)`.

    Raises:
        ValueError: if shapes disagree or targets are not 0/1.
    """
    probs, true = check_multi_hot(probs, targets, "binary_cross_entropy")
    p = np.clip(probs, epsilon, 1 - epsilon)
    return -np.mean(np.where(true, np.log(p), np.log(1 - p)), axis=1)


def _samples_fbeta(pred, true, beta):
    """Per-item F-beta of boolean `(n, tags)` predictions and targets."""
    tp = (pred & true).sum(axis=-1)
    fp = (pred & ~true).sum(axis=-1)
    fn = (~pred & true).sum(axis=-1)
    return fbeta_from_counts(tp, fp, fn, beta)


def fbeta(probs, targets, beta=2, threshold=0.5):
    """Samples-averaged F-beta of thresholded probabilities (fast.ai `f2`).

    An item has a tag when its probability is strictly above the threshold
    (fast.ai's `preds > thresh`). F-beta is computed per item over its tags,
    then averaged over items: scikit-learn's `fbeta_score(...,
    average="samples")`, the Kaggle Planet metric with `beta=2`.

    Args:
        probs: float array `(num_items, num_tags)` of tag probabilities.
        targets: multi-hot array `(num_items, num_tags)` of 0/1.
        beta: weight of recall (2 for Planet's F2).
        threshold: one float, or one per tag `(num_tags,)`.

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: if shapes disagree or targets are not 0/1.

    Example:

    >>> fbeta([[0.9, 0.2], [0.6, 0.7]], [[1, 0], [0, 1]])  # items: 1, 5/6
    0.9166666666666667
    """
    probs, true = check_multi_hot(probs, targets, "fbeta")
    return float(np.mean(_samples_fbeta(probs > np.asarray(threshold), true, beta)))


def opt_th(
    probs,
    targets,
    thresholds=DEFAULT_THRESHOLDS,
    beta=2,
    per_class=False,
):
    """The threshold maximising samples-averaged F-beta (fast.ai `opt_th`).

    fast.ai v0.7 `planet.opt_th` tries thresholds 0.17-0.24 on the
    validation predictions and keeps the best; here the grid is wider. With
    `per_class=True`, each tag then gets its own threshold, chosen tag by
    tag (one coordinate-ascent pass, starting from the best common
    threshold): a common trick of the Planet competition. Ties go to the
    lowest threshold. Tune on validation data, not on the test set.

    Args:
        probs: float array `(num_items, num_tags)` of tag probabilities.
        targets: multi-hot array `(num_items, num_tags)` of 0/1.
        thresholds: 1-D candidate thresholds.
        beta: weight of recall (2 for Planet's F2).
        per_class: return one threshold per tag.

    Returns:
        A float, or with `per_class=True` a float array `(num_tags,)`.

    Raises:
        ValueError: if shapes disagree, targets are not 0/1, or
            `thresholds` is empty.

    Example:

    >>> probs = [[0.9, 0.3], [0.4, 0.8]]
    >>> float(opt_th(probs, [[1, 1], [1, 1]]))  # every tag present
    0.05
    """
    probs, true = check_multi_hot(probs, targets, "opt_th")
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0:
        raise ValueError("opt_th needs at least one candidate threshold.")
    # scores[t] = samples F-beta with every tag at thresholds[t].
    pred = probs[None] > thresholds[:, None, None]  # (T, n, tags)
    scores = _samples_fbeta(pred, true[None], beta).mean(axis=-1)
    best = float(thresholds[int(np.argmax(scores))])
    if not per_class:
        return best
    chosen = np.full(probs.shape[1], best)
    for tag in range(probs.shape[1]):
        pred = probs > chosen  # (n, tags) with the current thresholds
        others = np.delete(np.arange(probs.shape[1]), tag)
        tp = (pred[:, others] & true[:, others]).sum(axis=1)
        fp = (pred[:, others] & ~true[:, others]).sum(axis=1)
        fn = (~pred[:, others] & true[:, others]).sum(axis=1)
        tag_pred = probs[None, :, tag] > thresholds[:, None]  # (T, n)
        tag_true = true[None, :, tag]
        scores = fbeta_from_counts(
            tp + (tag_pred & tag_true),
            fp + (tag_pred & ~tag_true),
            fn + (~tag_pred & tag_true),
            beta,
        ).mean(axis=1)
        chosen[tag] = thresholds[int(np.argmax(scores))]
    return chosen
