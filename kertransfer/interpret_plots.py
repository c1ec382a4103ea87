"""The plots of `ClassificationInterpretation`: compute there, draw here.

`InterpretationPlots` is the plotting half of
`kertransfer.interpret.ClassificationInterpretation` (which inherits it):
each method draws what a compute method answered (`confusion_matrix`,
`top_losses`, `most_incorrect`, ...; Grad-CAM from `kertransfer.gradcam`)
and returns the matplotlib axes or figure; none calls `plt.show()`. The
figures are `kertransfer.figures`': a notebook shows each once.
matplotlib is imported when a plot is drawn.
"""

import math
import os
import warnings

import numpy as np

from kertransfer.images import frame_image
from kertransfer.images import frame_images
from kertransfer.images import load_thumbnail

__all__ = ["InterpretationPlots", "MultiLabelPlots", "placeholder_figure"]


def placeholder_figure(message):
    """A small figure that says why there is nothing to show."""
    from kertransfer.figures import subplots

    fig, ax = subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


class InterpretationPlots:
    """Plot methods over an interpretation's results (a mixin).

    Expects `class_names`, `num_classes`, `targets`, `preds`, `probs`,
    `losses`, `image_paths` and the compute methods of
    `ClassificationInterpretation`.
    """

    def plot_confusion_matrix(self, normalize=False, ax=None, cmap="Blues", figsize=None):
        """Draws the confusion matrix with the value written in each cell.

        Args:
            normalize: divide each row by its total (recall per class), and
                write proportions instead of counts.
            ax: matplotlib axes to draw on; a new figure if None.
            cmap: matplotlib colormap name.
            figsize: `(width, height)` in inches of a new figure (default:
                grows with the number of classes).

        Returns:
            The matplotlib axes.
        """
        from kertransfer.figures import subplots

        cm = self.confusion_matrix()
        values = self.confusion_matrix(normalize=True) if normalize else cm.astype(np.float64)
        c = self.num_classes
        if ax is None:
            side = min(max(4.0, 0.55 * c + 2.0), 30.0)
            _, ax = subplots(figsize=figsize or (side, side))
        vmax = 1.0 if normalize else max(1.0, float(values.max()))
        ax.imshow(values, cmap=cmap, vmin=0.0, vmax=vmax)
        fontsize = max(4.0, min(10.0, 160.0 / c))
        for i in range(c):
            for j in range(c):
                text = f"{values[i, j]:.2f}" if normalize else str(cm[i, j])
                color = "white" if values[i, j] > vmax / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color,
                        fontsize=fontsize)
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        ax.set_xticklabels(self.class_names, rotation=45 if c > 2 else 0,
                           ha="right" if c > 2 else "center",
                           fontsize=fontsize)
        ax.set_yticklabels(self.class_names, fontsize=fontsize)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Actual")
        ax.set_title(
            "Confusion matrix (row-normalized)" if normalize
            else "Confusion matrix"
        )
        return ax

    def plot_images(self, idxs, title=None, ncols=4, size=224, figsize=None, heatmaps=None, framing=None):
        """Grid of the validation images at `idxs`.

        Each image is titled with its actual class, predicted class, the
        predicted class's probability and the item's loss (fast.ai v0.7
        `plot_val_with_title`). Images are opened with Pillow, rotated by
        their EXIF orientation, converted to RGB and thumbnailed. An image
        that cannot be opened is drawn as a labelled blank tile (with a
        warning), and an empty `idxs` gives a placeholder figure.

        Args:
            idxs: indices into the validation set.
            title: optional figure title.
            ncols: images per row.
            size: thumbnail size in pixels (longest side).
            figsize: `(width, height)` in inches (default: 2.8 x 3.2 per
                image), as fastai's `plot_top_losses(k, figsize=...)`.
            heatmaps: optional array `(len(idxs), h, w)` (e.g. `grad_cam`)
                drawn over each image; the images are then shown as the
                model saw them (`framing`), so the map lines up.
            framing: the `kertransfer.images.Framing` of the model input;
                required with `heatmaps`.

        Returns:
            The matplotlib figure.

        Raises:
            ValueError: if the interpretation has no `image_paths`, an
                index is out of range, or `heatmaps` does not match `idxs`.
        """
        from kertransfer.figures import subplots

        idxs = np.asarray(idxs, dtype=np.int64).reshape(-1)
        if idxs.size == 0:
            label = f"{title}: " if title else ""
            return placeholder_figure(f"{label}no images to show.")
        if self.image_paths is None:
            raise ValueError(
                "plot_images needs the image files. Pass image_paths= to "
                "ClassificationInterpretation (from_learner takes them from "
                "learn.data.valid_paths)."
            )
        n = len(self.targets)
        if idxs.min() < 0 or idxs.max() >= n:
            raise ValueError(
                f"plot_images expects indices in [0, {n}). Received "
                f"{idxs.tolist()}."
            )
        if heatmaps is not None and (len(heatmaps) != idxs.size or framing is None):
            raise ValueError(
                f"plot_images needs one heatmap per index and the framing. Received "
                f"{len(heatmaps)} heatmaps for {idxs.size} indices, framing={framing!r}."
            )
        ncols = max(1, min(int(ncols), idxs.size))
        nrows = math.ceil(idxs.size / ncols)
        fig, axes = subplots(
            nrows, ncols, figsize=figsize or (2.8 * ncols, 3.2 * nrows), squeeze=False
        )
        for ax in axes.flat:
            ax.axis("off")
        for tile, (ax, i) in enumerate(zip(axes.flat, idxs)):
            path = self.image_paths[i]
            try:
                if heatmaps is None:
                    ax.imshow(load_thumbnail(path, size))
                else:
                    side = framing.image_size
                    ax.imshow(frame_image(path, framing))
                    ax.imshow(heatmaps[tile], cmap="jet", alpha=0.45, interpolation="bilinear",
                              extent=(-0.5, side - 0.5, side - 0.5, -0.5))
            except (OSError, ValueError) as error:
                warnings.warn(
                    f"Could not open image {path!r}: {error}", stacklevel=2
                )
                ax.text(0.5, 0.5, f"cannot open\n{os.path.basename(path)}",
                        ha="center", va="center", transform=ax.transAxes)
            ax.set_title(self._image_title(i), fontsize=9)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    def _image_title(self, i):
        actual = self.class_names[self.targets[i]]
        predicted = self.class_names[self.preds[i]]
        prob = self.probs[i, self.preds[i]]
        return (
            f"actual: {actual}\npred: {predicted} ({prob:.2f})\n"
            f"loss: {self.losses[i]:.2f}"
        )

    def plot_top_losses(self, k=9, ncols=4, figsize=None):
        """Images with the highest loss (fastai v2 `plot_top_losses`).

        Returns:
            The matplotlib figure.
        """
        idxs = self.top_losses(k).indices
        return self.plot_images(idxs, title=f"Top {k} losses", ncols=ncols, figsize=figsize)

    def plot_grad_cam(self, model, framing, idxs=None, k=9, layer=None, ncols=4, figsize=None):
        """The top losses (or `idxs`) with their Grad-CAM heatmap overlaid.

        The heatmap (`kertransfer.gradcam.grad_cam`) shows where the model
        found the evidence for the class it predicted: on a wrong
        prediction, what it looked at instead of the object.

        Args:
            model: the classifier (raw pixels in, probabilities out).
            framing: the `kertransfer.images.Framing` it was validated with.
            idxs: indices into the validation set; None: `top_losses(k)`.
            k: number of top losses when `idxs` is None.
            layer: the feature layer (see `kertransfer.gradcam.grad_cam`).
            ncols, figsize: as `plot_images`.

        Returns:
            The matplotlib figure.

        Raises:
            ValueError: without `image_paths`, or as `grad_cam`.
            FileNotFoundError: if an image file is missing.
        """
        from kertransfer.gradcam import grad_cam

        if self.image_paths is None:
            raise ValueError("plot_grad_cam needs the image files. Pass image_paths= to ClassificationInterpretation.")
        if idxs is None:
            idxs = self.top_losses(k).indices
        idxs = np.asarray(idxs, dtype=np.int64).reshape(-1)
        images = frame_images([self.image_paths[i] for i in idxs], framing)
        heatmaps = grad_cam(model, images, self.preds[idxs], layer=layer)
        return self.plot_images(idxs, title=f"Grad-CAM of the predicted class, top {idxs.size} losses",
                                ncols=ncols, figsize=figsize, heatmaps=heatmaps, framing=framing)

    def plot_most_correct(self, cls, k=4, ncols=4, figsize=None):
        """Images of `most_correct(cls, k)`; returns the figure."""
        name = self.class_names[self.class_index(cls)]
        return self.plot_images(self.most_correct(cls, k),
                                title=f"Most correct {name}", ncols=ncols, figsize=figsize)

    def plot_most_incorrect(self, cls, k=4, ncols=4, figsize=None):
        """Images of `most_incorrect(cls, k)`; returns the figure."""
        name = self.class_names[self.class_index(cls)]
        return self.plot_images(self.most_incorrect(cls, k),
                                title=f"Most incorrect {name}", ncols=ncols, figsize=figsize)

    def plot_most_uncertain(self, cls, k=4, ncols=4, figsize=None):
        """Images of `most_uncertain(cls, k)` (all of class `cls`); returns the figure."""
        name = self.class_names[self.class_index(cls)]
        return self.plot_images(self.most_uncertain(cls, k),
                                title=f"Most uncertain {name}", ncols=ncols, figsize=figsize)


class MultiLabelPlots:
    """Plot methods of `kertransfer.interpret.MultiLabelInterpretation` (a mixin).

    Expects `thresholds` and the compute method `fbeta_curve`.
    """

    def plot_fbeta_curve(self, beta=2, ax=None, label=None, figsize=(6, 4)):
        """Draws F-beta against one threshold for all tags; marks the interpretation's threshold.

        Args:
            beta: weight of recall (2: Planet's F2).
            ax: matplotlib axes to draw on (e.g. to compare plain and TTA
                predictions on one plot); a new figure if None.
            label: legend label of the curve.
            figsize: `(width, height)` in inches of a new figure.

        Returns:
            The matplotlib axes.
        """
        from kertransfer.figures import axes_or_new

        curve = self.fbeta_curve(beta=beta)
        name = f"f{beta:g}"
        ax = axes_or_new(ax, figsize)
        line, = ax.plot(curve["threshold"], curve[name], label=label or name.upper())
        if np.all(self.thresholds == self.thresholds[0]):  # one threshold for all tags: mark it
            at = float(self.thresholds[0])
            ax.axvline(at, color=line.get_color(), linestyle=":", label=f"threshold {at:g}")
        ax.set_xlabel("threshold (all tags)")
        ax.set_ylabel(f"F{beta:g} (samples)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return ax
