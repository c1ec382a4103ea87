"""Test-time augmentation: the mean prediction over augmented copies.

fast.ai v0.7 `learn.TTA()`: predict the original (center-cropped) images and
`n_aug` randomly augmented copies (training transforms: random crop, flips,
rotation, lighting), and average the probabilities. `ConvLearner.TTA` and
`kertransfer predict --tta` both call `tta_probs`, so a saved model scores
new images exactly as the learner scored its validation set.
"""

import numpy as np

from kertransfer.console import counted_batches
from kertransfer.console import progress_bar
from kertransfer.distribute import predict_padded

__all__ = ["tta_probs"]


def tta_probs(model, data, n_aug=4, split="valid", seed=0, probs=None, beta=None, return_all=False):
    """Mean of the model's probabilities over the original and augmented images.

    The original images get the validation transforms (center crop); copy
    `i` gets the training transforms (random crop, augmentation layers called
    with `training=True`) seeded with `seed + i`. The model itself runs in
    inference mode throughout.

    Source: fast.ai v0.7 `Learner.TTA` (mean of the softmax outputs). With
    `beta`, fast.ai v2 `Learner.tta` instead: `torch.lerp(aug_mean, orig,
    beta)`, i.e. `beta * orig + (1 - beta) * aug_mean`, where `aug_mean` is
    the mean over the augmented copies only (v2's default `beta=0.25`).
    Probabilities are averaged either way, so multi-label (sigmoid) outputs
    work the same. Under a distribution (`ConvLearner.TTA` runs in the
    learner's), batches are padded to the device count and the outputs
    trimmed (`kertransfer.distribute.predict_padded`). Within
    `kertransfer.console.progress_bars()`, a progress bar counts the batches.

    Args:
        model: `keras.Model` taking raw pixels `(batch, size, size, 3)` in
            `[0, 255]` and returning probabilities `(batch, num_classes)`.
        data: an `ImageClassifierData` (anything with `fixed_batches(split,
            tfms=None, augment=False, seed=None)` and `train_tfms`).
        n_aug: number of augmented copies per image (0: plain prediction).
        split: the split of `data` to predict: "valid", "test", ...
        seed: seed of the first copy's augmentation; equal seeds give equal
            results.
        probs: the plain (center-crop) predictions of `split` if already
            computed, `(n, num_classes)`; None computes them.
        beta: None for the plain mean over all `n_aug + 1` predictions, or
            the weight in [0, 1] of the un-augmented prediction (fast.ai v2).
        return_all: return every copy's probabilities instead of their
            mean, the original first: what fast.ai v0.7's `TTA()` returned
            (as log-probabilities there; probabilities here, so
            `probs.mean(0)` is the TTA prediction).

    Returns:
        float32 array `(n, num_classes)`: the mean over `n_aug + 1`
        predictions of each image (or the `beta` blend); with `return_all`,
        `(n_aug + 1, n, num_classes)`.

    Raises:
        ValueError: if `n_aug` is not an integer >= 0, or `beta` is not in
            [0, 1], or `beta` is given with `n_aug=0` or with `return_all`.

    Example:

    ```python
    probs = tta_probs(learn.model, learn.data, n_aug=4)
    accuracy = (probs.argmax(1) == learn.data.valid_labels).mean()
    ```
    """
    if isinstance(n_aug, bool) or int(n_aug) != n_aug or n_aug < 0:
        raise ValueError(
            f"n_aug must be an integer >= 0 (0: no augmented copies). "
            f"Received n_aug={n_aug!r}."
        )
    if beta is not None and not 0 <= beta <= 1:
        raise ValueError(
            f"beta is the weight of the un-augmented prediction and must be in "
            f"[0, 1] (fast.ai v2 uses 0.25), or None for the plain mean. "
            f"Received beta={beta!r}."
        )
    if beta is not None and n_aug < 1:
        raise ValueError(
            "beta blends the original prediction with the mean of the "
            "augmented copies, so it needs n_aug >= 1. Received n_aug=0; "
            "pass beta=None or n_aug >= 1."
        )
    if beta is not None and return_all:
        raise ValueError(
            "return_all returns every copy's probabilities, so there is no blend "
            "for beta to weight: pass one of beta= and return_all=True."
        )
    plain = data.fixed_batches(split)
    bar = progress_bar((int(n_aug) + (probs is None)) * len(plain))
    if probs is None:
        probs = predict_padded(model, counted_batches(plain, bar))
    copies = [np.asarray(probs, dtype="float64")]
    for i in range(int(n_aug)):
        batches = data.fixed_batches(
            split, tfms=data.train_tfms, augment=True, seed=seed + i
        )
        copies.append(np.asarray(predict_padded(model, counted_batches(batches, bar)), dtype="float64"))
    if return_all:
        return np.stack(copies).astype("float32")
    if beta is None:
        return np.mean(copies, axis=0).astype("float32")
    aug_mean = np.mean(copies[1:], axis=0)
    return (beta * copies[0] + (1 - beta) * aug_mean).astype("float32")
