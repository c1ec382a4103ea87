"""Interpretation of a multi-label classifier's validation predictions.

Per-tag counts, precision, recall and F-beta, the F-beta curve over
thresholds (fast.ai lesson 2's Planet F2 and `opt_th`);
`kertransfer.interpret_plots.MultiLabelPlots` draws them. Re-exported by
`kertransfer.interpret`.
"""


import numpy as np
import pandas as pd

from kertransfer.interpret_checks import check_class_names
from kertransfer.interpret_checks import check_probs
from kertransfer.interpret_checks import divide
from kertransfer.interpret_plots import MultiLabelPlots
from kertransfer.metrics import DEFAULT_THRESHOLDS
from kertransfer.metrics import check_multi_hot
from kertransfer.metrics import fbeta
from kertransfer.metrics import fbeta_from_counts
from kertransfer.reprs import html_repr
from kertransfer.reprs import short_list
from kertransfer.reprs import text_repr

__all__ = ["MultiLabelInterpretation"]


class MultiLabelInterpretation(MultiLabelPlots):
    """Per-tag quality of a multi-label (sigmoid) classifier at thresholds.

    An item has a tag when its probability is strictly above the tag's
    threshold (fast.ai's `preds > thresh`). Reports true/false
    positives/negatives per tag, precision, recall and F-beta; F2 (beta=2,
    recall weighted over precision) is the Kaggle Planet metric of fast.ai
    v0.7 lesson 3.

    Args:
        probs: float array `(n, num_tags)` of independent tag probabilities.
        targets: multi-hot array `(n, num_tags)` of 0/1 (or bool).
        class_names: `num_tags` tag names.
        thresholds: one float for every tag, or an array `(num_tags,)`.

    Raises:
        ValueError: if shapes disagree, values are not probabilities,
            targets are not 0/1, or thresholds are outside [0, 1].

    Example:

    >>> interp = MultiLabelInterpretation(
    ...     probs=[[0.9, 0.2], [0.6, 0.7]], targets=[[1, 0], [0, 1]],
    ...     class_names=["clear", "water"], thresholds=0.5)
    >>> interp.counts()["fp"].tolist()
    [1, 0]
    """

    def __init__(self, probs, targets, class_names, thresholds=0.5):
        owner = type(self).__name__
        self.probs = check_probs(probs, owner)
        num_tags = self.probs.shape[1]
        self.targets = check_multi_hot(self.probs, targets, owner)[1]
        self.class_names = check_class_names(class_names, num_tags, owner)
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.ndim == 0:
            thresholds = np.full(num_tags, float(thresholds))
        if thresholds.shape != (num_tags,):
            raise ValueError(
                f"{owner} expects thresholds to be one float or {num_tags} "
                f"floats (one per tag). Received shape {thresholds.shape}."
            )
        if thresholds.min() < 0 or thresholds.max() > 1:
            raise ValueError(
                f"{owner} expects thresholds in [0, 1]. Received "
                f"{thresholds.tolist()}."
            )
        self.thresholds = thresholds
        self.predictions = self.probs > thresholds

    @classmethod
    def from_learner(cls, learn, thresholds=0.5, tta=False):
        """Like `ClassificationInterpretation.from_learner`, multi-hot."""
        probs, targets = learn.TTA() if tta else learn.predict()
        return cls(probs, targets, list(learn.data.classes), thresholds)

    def _repr_rows(self):
        one = np.all(self.thresholds == self.thresholds[0])
        return [
            ("tags", short_list(self.class_names)),
            ("thresholds", f"{self.thresholds[0]:g}" if one else
             f"one per tag, {self.thresholds.min():g} to {self.thresholds.max():g}"),
            ("F2 (samples)", f"{self.fbeta(beta=2):.4f}"),
        ]

    def __repr__(self):
        """Items, tags, thresholds and the samples-averaged F2."""
        title = f"MultiLabelInterpretation({len(self.targets)} items, {len(self.class_names)} tags)"
        return text_repr(title, self._repr_rows())

    def _repr_html_(self):
        """`repr` as a small table, what Jupyter shows."""
        title = f"MultiLabelInterpretation({len(self.targets)} items, {len(self.class_names)} tags)"
        return html_repr(title, self._repr_rows())

    def counts(self):
        """True/false positive/negative counts per tag.

        Returns:
            DataFrame indexed by tag with int columns `tp`, `fp`, `fn`, `tn`.
        """
        pred, true = self.predictions, self.targets
        return pd.DataFrame(
            {
                "tp": (pred & true).sum(axis=0),
                "fp": (pred & ~true).sum(axis=0),
                "fn": (~pred & true).sum(axis=0),
                "tn": (~pred & ~true).sum(axis=0),
            },
            index=pd.Index(self.class_names, name="tag"),
        ).astype(np.int64)

    @staticmethod
    def _fbeta(tp, fp, fn, beta):
        return fbeta_from_counts(tp, fp, fn, beta)

    def per_class_report(self, beta=2):
        """Threshold, precision, recall, F-beta and counts per tag.

        F-beta is `(1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)`, 0 when a
        tag is neither present nor predicted (scikit-learn's
        `zero_division=0`); likewise precision and recall.

        Args:
            beta: weight of recall; the column is named `f{beta}` (`f2`).

        Returns:
            DataFrame indexed by tag with columns `threshold`, `precision`,
            `recall`, `f{beta}`, `support` (items having the tag), `tp`,
            `fp`, `fn`, `tn`.
        """
        counts = self.counts()
        tp, fp, fn = (counts[c].to_numpy() for c in ("tp", "fp", "fn"))
        frame = pd.DataFrame(
            {
                "threshold": self.thresholds,
                "precision": divide(tp, tp + fp),
                "recall": divide(tp, tp + fn),
                f"f{beta:g}": self._fbeta(tp, fp, fn, beta),
                "support": tp + fn,
            },
            index=counts.index,
        )
        return frame.join(counts)

    def fbeta(self, beta=2, average="samples"):
        """F-beta over the whole set.

        Args:
            beta: weight of recall (2 for the Planet F2 score).
            average: `"samples"` (F-beta per item, then the mean: Planet's
                and fast.ai's `f2`), `"macro"` (mean of per-tag scores) or
                `"micro"` (from counts summed over tags).

        Returns:
            A float.

        Raises:
            ValueError: for an unknown `average`.
        """
        pred, true = self.predictions, self.targets
        if average == "samples":
            axis = 1
        elif average == "macro":
            axis = 0
        elif average == "micro":
            axis = None
        else:
            raise ValueError(
                "average must be 'samples', 'macro' or 'micro'. "
                f"Received average={average!r}."
            )
        tp = (pred & true).sum(axis=axis)
        fp = (pred & ~true).sum(axis=axis)
        fn = (~pred & true).sum(axis=axis)
        return float(np.mean(self._fbeta(tp, fp, fn, beta)))

    def fbeta_curve(self, thresholds=DEFAULT_THRESHOLDS, beta=2):
        """Samples-averaged F-beta with every tag at each candidate threshold.

        The curve `kertransfer.metrics.opt_th` takes the maximum of (with
        the same default candidates, 0.05 to 0.94 by 0.01); it shows how
        much the choice of threshold matters, and how flat the optimum is.

        Args:
            thresholds: 1-D candidate thresholds.
            beta: weight of recall; the column is named `f{beta}` (`f2`).

        Returns:
            DataFrame with columns `threshold` and `f{beta}`, one row per
            candidate.
        """
        thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        scores = [fbeta(self.probs, self.targets, beta, threshold) for threshold in thresholds]
        return pd.DataFrame({"threshold": thresholds, f"f{beta:g}": scores})
