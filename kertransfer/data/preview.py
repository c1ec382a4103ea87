"""A look at what the model is fed: center crops beside augmented copies.

`ImageClassifierData.augmented_samples` and `.plot_augmented` (fast.ai
lesson 1 `plots(get_augs())`) call these; the copies come out of the same
`ImageBatches` training uses.
"""

import os

import keras
import numpy as np

from kertransfer.data.batches import ImageBatches
from kertransfer.data.splits import Split

__all__ = ["augmented_samples", "plot_augmented"]


def augmented_samples(data, n=8, split="train", seed=0, images=0):
    """Center crops and `n` augmented copies of some images of `split`.

    The copies go through exactly what training does: the training
    transforms' random crop and zoom, and their augmentation layers
    called with `training=True`.

    Args:
        data: an `ImageClassifierData`.
        n: augmented copies per image.
        split: "train", "valid" or "test".
        seed: seed of the augmentation; equal seeds give equal copies.
        images: index (or list of indices) into the split's images.

    Returns:
        `(center, augmented)`: float32 arrays `(k, size, size, 3)` (the
        validation center crops) and `(k, n, size, size, 3)`, pixels in
        [0, 255], for the `k` images asked for.

    Raises:
        ValueError: on `n < 1`, an unknown split, or an index out of
            range.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1. Received n={n!r}.")
    source = data.split(split)
    indices = [images] if np.ndim(images) == 0 else list(images)
    bad = [i for i in indices if not -len(source) <= int(i) < len(source)]
    if bad or not indices:
        raise ValueError(
            f"images must index the {len(source)} {split} images (one "
            f"index or a non-empty list). Received images={images!r}."
        )
    center, augmented = [], []
    for k, i in enumerate(indices):
        image = source.image(int(i))
        center.append(data.valid_tfms.crop(image, None).astype("float32"))
        copies = Split([source.paths[int(i)]] * int(n), None, source.store)
        batches = ImageBatches(
            copies, data.train_tfms, int(n), augment=True, seed=seed + k
        )
        # A tensor of the backend (augmented on its device).
        augmented.append(keras.ops.convert_to_numpy(batches[0][0]))
    return np.stack(center), np.stack(augmented)


def plot_augmented(data, n=8, path=None, split="train", seed=0, images=0):
    """Grid of augmented copies, to check the augmentation by eye.

    fast.ai lesson 1 `plots(get_augs())`: one row per image, its center
    crop first, then `n` augmented copies (see `augmented_samples`).
    Needs matplotlib.

    Args:
        data: an `ImageClassifierData`.
        n: augmented copies per image.
        path: PNG file to write, or None to return the figure.
        split: "train", "valid" or "test".
        seed: seed of the augmentation.
        images: index (or list of indices) into the split's images.

    Returns:
        The path written (str) when `path` is given (the figure is
        closed), else the `matplotlib.figure.Figure`.

    Raises:
        ValueError: as `augmented_samples`.

    Example:

    >>> data.plot_augmented(n=8, path="augmented.png", images=[0, 1])
    'augmented.png'
    """
    center, augmented = augmented_samples(data, n, split, seed, images)
    try:
        import matplotlib.pyplot as plt

        from kertransfer.figures import subplots
    except ImportError as e:
        raise ImportError(
            "plot_augmented needs matplotlib: pip install matplotlib"
        ) from e
    rows, cols = len(center), int(n) + 1
    fig, axes = subplots(
        rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False
    )
    for r in range(rows):
        tiles = [center[r]] + list(augmented[r])
        for c, tile in enumerate(tiles):
            ax = axes[r, c]
            ax.imshow(np.clip(tile, 0, 255).astype("uint8"))
            ax.set_axis_off()
            if r == 0:
                ax.set_title("center crop" if c == 0 else f"aug {c}", fontsize=8)
    fig.tight_layout()
    if path is None:
        return fig
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
