"""Interpretation of a classifier's validation predictions.

Compute first, plot second: every question ("which classes get confused?",
"which images is the model most sure and most wrong about?") is answered by a
method returning numpy arrays or a pandas DataFrame; the `plot_*` methods
(`kertransfer.interpret_plots.InterpretationPlots`) only draw those answers.
Nothing here imports Keras: interpretation works on the probabilities a
model already produced, whatever the backend (`plot_grad_cam` alone runs
the model, through `kertransfer.gradcam`).

Sources: fast.ai v0.7 lesson 1 (`most_by_correct`, `most_uncertain`,
`plot_val_with_title`) and fastai v2 `ClassificationInterpretation`
(`confusion_matrix`, `most_confused`, `top_losses`, `plot_top_losses`).
"""

import collections
import os

import numpy as np
import pandas as pd

from kertransfer.interpret_checks import check_class_names
from kertransfer.interpret_checks import check_k
from kertransfer.interpret_checks import check_probs
from kertransfer.interpret_checks import divide
from kertransfer.interpret_multilabel import MultiLabelInterpretation
from kertransfer.interpret_plots import InterpretationPlots
from kertransfer.metrics import cross_entropy
from kertransfer.reprs import html_repr
from kertransfer.reprs import short_list
from kertransfer.reprs import text_repr

__all__ = [
    "ClassificationInterpretation",
    "MultiLabelInterpretation",
    "TopLosses",
    "cross_entropy",
]

TopLosses = collections.namedtuple("TopLosses", ["indices", "losses"])
TopLosses.__doc__ = """Result of `ClassificationInterpretation.top_losses`.

Attributes:
    indices: int array `(k,)`, indices into the validation set.
    losses: float array `(k,)`, the loss of each of those items, in the
        same order.
"""


class ClassificationInterpretation(InterpretationPlots):
    """Answers "what does my single-label classifier get wrong, and why?".

    Holds validation probabilities and targets and derives the confusion
    matrix, the most confused class pairs, per-class precision/recall, the
    items with the highest loss, and fast.ai lesson 1's "most correct",
    "most incorrect" and "most uncertain" images for a class. The `plot_*`
    methods draw those results and return the matplotlib axes or figure
    (shown once in a notebook: `kertransfer.figures`); they never call
    `plt.show()`.

    Sources: fast.ai v0.7 lesson 1 (`most_by_correct`, `most_uncertain`)
    and fastai v2 `ClassificationInterpretation`.

    Args:
        probs: float array `(n, num_classes)` of class probabilities (softmax
            outputs, or TTA-averaged softmax outputs).
        targets: int array `(n,)` of true class indices, or one-hot targets
            `(n, num_classes)`.
        class_names: `num_classes` names, in column order of `probs`.
        image_paths: optional sequence of `n` image file paths aligned with
            `targets`; needed only by the image plots.
        losses: optional float array `(n,)` of per-item losses (e.g. with
            label smoothing, as the model computed them). Defaults to
            `cross_entropy(probs, targets)`.

    Raises:
        ValueError: if shapes disagree, probabilities fall outside [0, 1],
            targets are not class indices, or class names are not unique.

    Example:

    >>> probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    >>> interp = ClassificationInterpretation(probs, [0, 1, 1], ["cat", "dog"])
    >>> interp.confusion_matrix()
    array([[1, 0],
           [1, 1]])
    >>> interp.most_incorrect("dog")
    array([2])
    """

    def __init__(
        self, probs, targets, class_names, image_paths=None, losses=None
    ):
        owner = type(self).__name__
        self.probs = check_probs(probs, owner)
        num_items, num_classes = self.probs.shape
        if num_classes < 2:
            raise ValueError(
                f"{owner} needs at least 2 classes. Received probs of shape "
                f"{self.probs.shape}; for a single sigmoid output use "
                "np.stack([1 - p, p], axis=1)."
            )
        self.targets = self._check_targets(targets, num_items, num_classes)
        self.class_names = check_class_names(class_names, num_classes, owner)
        if image_paths is not None:
            image_paths = [os.fspath(path) for path in image_paths]
            if len(image_paths) != num_items:
                raise ValueError(
                    f"{owner} got {len(image_paths)} image_paths for "
                    f"{num_items} predictions; they must be aligned."
                )
        self.image_paths = image_paths
        if losses is None:
            self.losses = cross_entropy(self.probs, self.targets)
        else:
            self.losses = np.asarray(losses, dtype=np.float64).reshape(-1)
            if self.losses.shape != (num_items,):
                raise ValueError(
                    f"{owner} expects losses of shape ({num_items},). "
                    f"Received shape {np.shape(losses)}."
                )
        self.preds = np.argmax(self.probs, axis=1)

    @staticmethod
    def _check_targets(targets, num_items, num_classes):
        targets = np.asarray(targets)
        if targets.shape == (num_items, num_classes):
            targets = np.argmax(targets, axis=1)  # one-hot
        targets = targets.reshape(-1) if targets.ndim == 2 else targets
        if targets.shape != (num_items,):
            raise ValueError(
                "ClassificationInterpretation expects targets of shape "
                f"({num_items},) or one-hot ({num_items}, {num_classes}). "
                f"Received shape {targets.shape}."
            )
        as_int = targets.astype(np.int64)
        if not np.array_equal(as_int, targets) or (
            as_int.min() < 0 or as_int.max() >= num_classes
        ):
            raise ValueError(
                "ClassificationInterpretation expects integer class indices "
                f"in [0, {num_classes}). Received values in "
                f"[{targets.min()}, {targets.max()}]."
            )
        return as_int

    @classmethod
    def from_learner(cls, learn, tta=False):
        """Builds the interpretation of a learner's validation predictions.

        Args:
            learn: a learner with `predict()` and `TTA()`, both returning
                `(probs, targets)` for the validation set, and `data` with
                `classes` and `valid_paths`.
            tta: use test-time-augmented predictions (`learn.TTA()`).

        Returns:
            A `ClassificationInterpretation`.

        Example:

        >>> interp = ClassificationInterpretation.from_learner(learn, tta=True)
        >>> interp.plot_most_incorrect("cats")
        """
        probs, targets = learn.TTA() if tta else learn.predict()
        data = learn.data
        return cls(
            probs,
            targets,
            class_names=list(data.classes),
            image_paths=getattr(data, "valid_paths", None),
        )

    @property
    def num_classes(self):
        return self.probs.shape[1]

    # ------------------------------------------------------------- display

    def _repr_title(self):
        return f"{type(self).__name__}({len(self.targets)} items, {self.num_classes} classes)"

    def _repr_rows(self):
        """What `repr(interp)` and a notebook show: `[(name, value)]`."""
        wrong = int(np.sum(self.preds != self.targets))
        confused = self.most_confused().head(3)
        worst = int(np.argmax(self.losses))
        return [
            ("classes", short_list(self.class_names)),
            ("accuracy", f"{self.accuracy():.4f} ({wrong} wrong)"),
            ("most confused", ", ".join(
                f"{row.actual} as {row.predicted} {row.count}" for row in confused.itertuples()
            ) or "none"),
            ("top loss", (
                f"{self.losses[worst]:.4f} (a {self.class_names[self.targets[worst]]} "
                f"predicted {self.class_names[self.preds[worst]]})"
            )),
            ("image paths", None if self.image_paths is not None else "none (the image plots need them)"),
        ]

    def __repr__(self):
        """Items, classes, accuracy, the most confused pairs, the top loss.

        ```
        ClassificationInterpretation(153 items, 2 classes)
          classes: ants, bees
          accuracy: 0.9150 (13 wrong)
          most confused: ants as bees 8, bees as ants 5
          top loss: 3.2189 (a bees predicted ants)
        ```
        """
        return text_repr(self._repr_title(), self._repr_rows())

    def _repr_html_(self):
        """`repr` as a small table, what Jupyter shows."""
        return html_repr(self._repr_title(), self._repr_rows())

    def class_index(self, cls):
        """Index of a class given by name or index.

        Raises:
            ValueError: if `cls` is neither a known name nor a valid index.
        """
        if isinstance(cls, str):
            if cls in self.class_names:
                return self.class_names.index(cls)
        elif isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            if 0 <= cls < self.num_classes:
                return int(cls)
        raise ValueError(
            f"Unknown class {cls!r}. Expected one of {self.class_names} or "
            f"an index in [0, {self.num_classes})."
        )

    # ------------------------------------------------------------- compute

    def accuracy(self):
        """Fraction of items whose arg-max prediction equals the target."""
        return float(np.mean(self.preds == self.targets))

    def confusion_matrix(self, normalize=False):
        """Counts of (actual, predicted) pairs.

        Args:
            normalize: divide each row by its total, so each row sums to 1
                (the diagonal is the recall of each class); a class with no
                item keeps a row of zeros.

        Returns:
            Int array `(num_classes, num_classes)`: rows are actual classes,
            columns predicted classes; it sums to the number of items. With
            `normalize`, a float array whose rows sum to 1.
        """
        c = self.num_classes
        flat = np.bincount(self.targets * c + self.preds, minlength=c * c)
        cm = flat.reshape(c, c).astype(np.int64)
        return divide(cm, cm.sum(axis=1, keepdims=True)) if normalize else cm

    def most_confused(self, min_val=1):
        """Off-diagonal cells of the confusion matrix, largest first.

        Source: fastai v2 `ClassificationInterpretation.most_confused`.

        Args:
            min_val: keep pairs confused at least this many times.

        Returns:
            DataFrame with columns `actual`, `predicted`, `count`, sorted by
            `count` descending (ties in class order).
        """
        cm = self.confusion_matrix()
        rows = [
            (self.class_names[i], self.class_names[j], int(cm[i, j]))
            for i in range(self.num_classes)
            for j in range(self.num_classes)
            if i != j and cm[i, j] >= min_val
        ]
        frame = pd.DataFrame(rows, columns=["actual", "predicted", "count"])
        frame = frame.astype({"count": np.int64})
        frame = frame.sort_values("count", ascending=False, kind="stable")
        return frame.reset_index(drop=True)

    def top_losses(self, k=None, largest=True):
        """Items with the largest (or smallest) loss.

        Source: fastai v2 `ClassificationInterpretation.top_losses`.

        Args:
            k: number of items, or None for all.
            largest: largest losses first if True, smallest first otherwise.

        Returns:
            `TopLosses(indices, losses)`: int array `(k,)` of item indices
            and the matching float array `(k,)` of losses.
        """
        k = check_k(k, "top_losses")
        key = -self.losses if largest else self.losses
        order = np.argsort(key, kind="stable")[:k]
        return TopLosses(order, self.losses[order])

    def most_correct(self, cls, k=4):
        """Items of class `cls` predicted as `cls`, most confident first.

        Source: fast.ai v0.7 lesson 1 `most_by_correct(y, True)`.

        Args:
            cls: class name or index.
            k: number of items, or None for all.

        Returns:
            Int array of at most `k` indices, by decreasing probability of
            `cls`. Empty if no item qualifies.
        """
        c = self.class_index(cls)
        mask = (self.targets == c) & (self.preds == c)
        return self._sorted_by_prob(mask, c, descending=True, k=k)

    def most_incorrect(self, cls, k=4):
        """Items of class `cls` predicted as another class, most wrong first.

        Source: fast.ai v0.7 lesson 1 `most_by_correct(y, False)`.

        Args:
            cls: class name or index.
            k: number of items, or None for all.

        Returns:
            Int array of at most `k` indices, by increasing probability of
            `cls` (the most confidently wrong first). Empty if the model
            gets every item of `cls` right.
        """
        c = self.class_index(cls)
        mask = (self.targets == c) & (self.preds != c)
        return self._sorted_by_prob(mask, c, descending=False, k=k)

    def most_uncertain(self, cls, k=4):
        """Items of class `cls` the model was least sure about.

        Only items whose actual class is `cls`, ranked by the margin between
        the probability of `cls` and the highest probability of any other
        class, `|p[cls] - max_{j != cls} p[j]|`, smallest first: right or
        wrong, these sit on the decision boundary. For two classes the
        margin is `2 |p[cls] - 0.5|`, so the order is fast.ai v0.7 lesson
        1's `np.argsort(np.abs(probs - 0.5))`, taken within the class.

        Args:
            cls: class name or index.
            k: number of items, or None for all.

        Returns:
            Int array of at most `k` indices, least certain first. Empty if
            no item is of class `cls`.
        """
        c = self.class_index(cls)
        k = check_k(k, "most_uncertain")
        idxs = np.flatnonzero(self.targets == c)
        others = np.delete(self.probs[idxs], c, axis=1).max(axis=1)
        margin = np.abs(self.probs[idxs, c] - others)
        return idxs[np.argsort(margin, kind="stable")][:k]

    def _sorted_by_prob(self, mask, c, descending, k):
        k = check_k(k, "most_correct/most_incorrect")
        idxs = np.flatnonzero(mask)
        key = self.probs[idxs, c]
        order = np.argsort(-key if descending else key, kind="stable")
        return idxs[order][:k]

    def per_class_report(self):
        """Precision, recall, F1 and support per class.

        A class never predicted gets precision 0 (and one never present,
        recall 0), as scikit-learn's `zero_division=0`.

        Returns:
            DataFrame indexed by class name with columns `precision`,
            `recall`, `f1`, `support`, followed by three summary rows:
            `accuracy` (the micro average: precision, recall and F1 all
            equal the accuracy), `macro avg` and `weighted avg` (weighted by
            support). `support` is the number of items of that class.
        """
        cm = self.confusion_matrix()
        true_pos = np.diag(cm)
        support = cm.sum(axis=1)
        precision = divide(true_pos, cm.sum(axis=0))
        recall = divide(true_pos, support)
        f1 = divide(2 * precision * recall, precision + recall)
        n = int(support.sum())
        accuracy = true_pos.sum() / n

        def weighted(values):
            return float(np.average(values, weights=support))

        frame = pd.DataFrame(
            {
                "precision": [*precision, accuracy, precision.mean(),
                              weighted(precision)],
                "recall": [*recall, accuracy, recall.mean(), weighted(recall)],
                "f1": [*f1, accuracy, f1.mean(), weighted(f1)],
                "support": [*support, n, n, n],
            },
            index=pd.Index(
                [*self.class_names, "accuracy", "macro avg", "weighted avg"],
                name="class",
            ),
        )
        return frame.astype({"support": np.int64})


