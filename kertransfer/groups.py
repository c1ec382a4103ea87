"""Layer groups: which layers train together, and at which learning rate.

fast.ai trains a pretrained CNN as a few layer groups (early body, late
body, head), each frozen or unfrozen as a whole and each with its own
learning rate ("differential learning rates"). As in timm's
`group_matcher`, a backbone names its groups with regexes on layer names
(its preset's `layer_groups`, `{"group0": regex, "group1": regex}`,
earliest first; the learner adds the head as the last group, `"head"`).

One matching rule, used everywhere a layer is put into a group:

- a regex must match the *whole* layer name (`re.fullmatch`): `layer1_`
  matches nothing, `layer1_.*` every layer of `layer1`;
- a layer with weights matched by two groups is an error naming the layer
  and both groups;
- a layer with weights matched by none is an error too (a group that
  silently misses layers would leave them frozen, or training, by
  accident); layers without weights (padding, activations) belong to no
  group.

Without a preset (`ConvLearner.from_model`, `register_keras_backbone`),
`split_layer_groups` makes fast.ai's default split: the layers with
weights, in layer order, cut into two runs of equal length (early body,
late body; with the head, three groups), written as regexes of exact layer
names so that the same matching rule applies.

Learning rates per group come from `expand_lrs`: a float, one value per
group, or fast.ai's `slice(lo, hi)` (geometric spread). `group_optimizer`
turns groups and LRs into one Keras `MultiOptimizer`. The pure functions
here import no Keras.
"""

import math
import re

import numpy as np

__all__ = [
    "assign_layer_groups",
    "expand_lrs",
    "group_optimizer",
    "group_patterns",
    "match_layer_groups",
    "split_layer_groups",
    "trainable_groups",
]


def group_patterns(layer_groups):
    """Checks a backbone's layer groups and returns them as `{name: regex}`.

    Args:
        layer_groups: a mapping `{group name: regex}`, earliest group first,
            each regex matched against whole layer names (`re.fullmatch`);
            or, the form of kertransfer 0.1, a sequence of regexes matched
            at the start of layer names (`re.match`), named `group0`,
            `group1`, ... : each becomes `(?:regex).*`, so that it matches
            the same names under the one full-match rule. In either form a
            group may also be a list of exact layer names, e.g.
            `[["Conv1", "bn_Conv1"], "block_.*"]`.

    Returns:
        `dict` of group name -> regex string, in group order.

    Raises:
        ValueError: if `layer_groups` is empty, a regex does not compile or
            a list of layer names is empty.
        TypeError: if a name is not a non-empty string, a regex not a
            string, or a list of layer names holds something else.

    Example:

    >>> group_patterns(("conv1|layer1_", "layer2_"))
    {'group0': '(?:conv1|layer1_).*', 'group1': '(?:layer2_).*'}
    """
    if isinstance(layer_groups, str) or not layer_groups:
        raise ValueError(
            "layer_groups must map group names to regexes on layer names, e.g. "
            '{"group0": r"(conv1|layer1_).*", "group1": r"layer2_.*"}. '
            f"Received layer_groups={layer_groups!r}."
        )
    if hasattr(layer_groups, "items"):
        patterns = {
            name: _names_pattern(p, layer_groups) if isinstance(p, (list, tuple)) else p
            for name, p in layer_groups.items()
        }
    else:
        patterns = {
            f"group{i}": _names_pattern(p, layer_groups) if isinstance(p, (list, tuple)) else f"(?:{p}).*"
            for i, p in enumerate(layer_groups)
        }
    for name, pattern in patterns.items():
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"Each layer group needs a non-empty string name. Received {name!r} "
                f"in layer_groups={layer_groups!r}."
            )
        if not isinstance(pattern, str):
            raise TypeError(
                f"Layer group {name!r} needs a regex string. Received {pattern!r}."
            )
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"The regex of layer group {name!r} does not compile ({e}). "
                f"Received {pattern!r}."
            ) from e
    return patterns


def _names_pattern(names, layer_groups):
    """A regex matching exactly the layer names `names` (a list of strings)."""
    if not names or not all(isinstance(n, str) and n for n in names):
        kind = ValueError if not names else TypeError
        raise kind(
            "A layer group given as a list holds exact layer names (non-empty strings), "
            f"at least one. Received {list(names)!r} in layer_groups={layer_groups!r}."
        )
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


def split_layer_groups(model, num_groups=2):
    """fast.ai's automatic layer groups: runs of equal length, by layer order.

    `model`'s top-level layers with weights, in order, are cut into
    `num_groups` consecutive runs whose lengths differ by at most one (the
    earlier runs take the extra layers, as `numpy.array_split`). Each run
    is written as a regex of its exact layer names, so that
    `match_layer_groups` applies the one matching rule. fast.ai v0.7's
    `ConvnetBuilder` splits a body in two (early and late body) and adds
    the head as the third group; that is `num_groups=2` here.

    Args:
        model: a Keras model (e.g. a backbone; its top-level layers).
        num_groups: number of groups, at least 1.

    Returns:
        `dict` `{"group0": regex, ...}` in layer order (see `group_patterns`).

    Raises:
        ValueError: if `num_groups` is not a positive integer, or the model
            has fewer layers with weights than `num_groups`.

    Example:

    ```python
    model = keras.applications.MobileNetV2(weights=None, include_top=False)
    groups = match_layer_groups(model, split_layer_groups(model))
    [len(g) for g in groups.values()]  # [52, 52]
    ```
    """
    if isinstance(num_groups, bool) or int(num_groups) != num_groups or num_groups < 1:
        raise ValueError(
            f"num_groups must be a positive integer. Received num_groups={num_groups!r}."
        )
    names = [layer.name for layer in model.layers if layer.weights]
    if len(names) < num_groups:
        raise ValueError(
            f"Model {model.name!r} has {len(names)} layer(s) with weights, fewer than the "
            f"{int(num_groups)} layer groups asked for: each group needs at least one. Use "
            "fewer groups, or a model with more layers."
        )
    runs = np.array_split(np.arange(len(names)), int(num_groups))
    return {f"group{i}": _names_pattern([names[j] for j in run], None) for i, run in enumerate(runs)}


def match_layer_groups(model, layer_groups):
    """Splits `model`'s layers with weights into named groups (full match).

    Args:
        model: a Keras model; its top-level layers are matched by name.
        layer_groups: `{group name: regex}` (see `group_patterns`), or None
            for fast.ai's automatic split in two (`split_layer_groups`).

    Returns:
        `dict` of group name -> list of layers (in model order), in group
        order. A group may be empty.

    Raises:
        ValueError: if a layer with weights matches two groups (naming the
            layer and both groups) or none.

    Example:

    ```python
    groups = match_layer_groups(model, {"group0": r"(stem|block[0-3])_.*",
                                        "group1": r"(block\\d+|head)_.*"})
    ```
    """
    if layer_groups is None:
        layer_groups = split_layer_groups(model)
    patterns = group_patterns(layer_groups)
    compiled = {name: re.compile(p) for name, p in patterns.items()}
    groups = {name: [] for name in patterns}
    for layer in model.layers:
        if not layer.weights:
            continue
        names = [name for name, rx in compiled.items() if rx.fullmatch(layer.name)]
        if len(names) > 1:
            first, second = names[:2]
            raise ValueError(
                f"Layer {layer.name!r} of model {model.name!r} is in two layer groups: "
                f"{first!r} ({patterns[first]!r}) and {second!r} "
                f"({patterns[second]!r}). A layer belongs to exactly one group: make "
                "the regexes disjoint."
            )
        if not names:
            raise ValueError(
                f"Layer {layer.name!r} of model {model.name!r} is in no layer group "
                f"{patterns}. Every layer with weights needs a group; regexes match "
                "whole layer names, so a prefix needs `.*` (e.g. 'layer1_.*')."
            )
        groups[names[0]].append(layer)
    return groups


def assign_layer_groups(model, patterns):
    """`match_layer_groups` as a list of layer lists, in group order.

    Kept for code written against kertransfer 0.1 (there in
    `kertransfer.backbones.registry`).
    """
    return list(match_layer_groups(model, patterns).values())


def expand_lrs(lrs, num_groups):
    """Turns `lrs` (float, sequence or slice) into one LR per layer group.

    fast.ai accepts a float (the same LR for every group), one LR per group
    (earliest first), or `slice(lo, hi)`: geometric spacing from `lo` for
    the first group to `hi` for the last (fastai's `even_mults`:
    `lo * (hi / lo) ** (i / (num_groups - 1))`); `slice(hi)` gives `hi / 10`
    to every group but the last, and `hi` to the last.

    Args:
        lrs: float, sequence of `num_groups` floats, or `slice`.
        num_groups: number of layer groups, >= 1.

    Returns:
        list of `num_groups` floats.

    Raises:
        ValueError: if a sequence has the wrong length, a slice has a step
            or no stop, or an LR is not positive and finite.

    Example:

    >>> expand_lrs(slice(1e-4, 1e-2), 3)
    [0.0001, 0.001, 0.01]
    """
    if int(num_groups) != num_groups or num_groups < 1:
        raise ValueError(
            f"num_groups must be a positive integer. Received num_groups={num_groups!r}."
        )
    num_groups = int(num_groups)
    if isinstance(lrs, slice):
        if lrs.step is not None or lrs.stop is None:
            raise ValueError(
                "A learning-rate slice is slice(lo, hi) or slice(hi) (fast.ai), "
                f"without a step. Received lrs={lrs!r}."
            )
        _check_positive([v for v in (lrs.start, lrs.stop) if v is not None], lrs)
        if lrs.start is None:
            values = [lrs.stop / 10] * (num_groups - 1) + [lrs.stop]
        elif num_groups == 1:
            values = [lrs.stop]
        else:
            values = np.geomspace(lrs.start, lrs.stop, num_groups).tolist()
    elif np.ndim(lrs) == 0:
        values = [float(lrs)] * num_groups
    else:
        values = [float(v) for v in np.asarray(lrs).ravel()]
        if len(values) != num_groups:
            raise ValueError(
                f"Received {len(values)} learning rates for {num_groups} "
                "layer groups. Pass one float, one LR per group, or a slice."
            )
    _check_positive(values, lrs)
    return [float(v) for v in values]


def _check_positive(values, lrs):
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(f"Learning rates must be positive. Received {lrs}.")


def trainable_groups(layer_groups):
    """Indices of the groups that have at least one trainable weight."""
    return [
        i
        for i, group in enumerate(layer_groups)
        if any(w.trainable for layer in group for w in layer.trainable_weights)
    ]


def group_optimizer(layer_groups, opt_fn, lrs, names=None):
    """A `keras.optimizers.MultiOptimizer` with one sub-optimizer per group.

    Sub-optimizers are created with `opt_fn(learning_rate=lr)` in group order
    (earliest layers first) and mapped to their variables through a
    `keras.optimizers.OptimizerMap` keyed by `re.escape(variable.path)`
    (the map reads keys as regexes, matched in full: escaped, a path with
    `.`, `+` or brackets in a layer name matches only itself), so the
    optimizer serializes with the model. Groups without trainable weights
    get none; a trainable variable in no group goes to the last group's
    optimizer. fast.ai's differential learning rates (`fit(np.array([1e-4,
    1e-3, 1e-2]), ...)`) set each sub-optimizer's LR.

    Each sub-optimizer is named after its group (`names[i]`, default
    `group<i>`): Keras logs per-optimizer LRs as `learning_rate_<name>`
    (`LearningRateScheduler`, `TensorBoard`, and here `SGDR`), and these
    names stay the same from one compile to the next, unlike Keras's
    `sgd`, `sgd_1`, ...

    Args:
        layer_groups: list of lists of Keras layers.
        opt_fn: callable `opt_fn(learning_rate=...) -> keras Optimizer`.
        lrs: one LR per group in `layer_groups`.
        names: one name per group in `layer_groups`, or None.

    Returns:
        `(optimizer, active)`: the optimizer, and the indices of the groups
        that have a sub-optimizer, in the order of `optimizer.optimizers`.

    Raises:
        ValueError: if no group has trainable weights (everything frozen),
            or `names` does not have one name per group.

    Example:

    ```python
    optimizer, active = group_optimizer(
        groups, lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
        [1e-4, 1e-3, 1e-2], names=["body0", "body1", "head"])
    model.compile(optimizer, "sparse_categorical_crossentropy")
    ```
    """
    import keras

    if names is None:
        names = [f"group{i}" for i in range(len(layer_groups))]
    if len(names) != len(layer_groups):
        raise ValueError(
            f"group_optimizer needs one name per layer group ({len(layer_groups)}). "
            f"Received names={list(names)}."
        )
    active = trainable_groups(layer_groups)
    if not active:
        raise ValueError(
            "Every layer group is frozen: nothing to train. Call unfreeze() "
            "or freeze_to(n) with n < number of groups."
        )
    optimizers = [opt_fn(learning_rate=lrs[i]) for i in active]
    for opt, i in zip(optimizers, active):
        # Before `build`: the variables it creates take the name as prefix.
        opt.name = str(names[i])
    mapping = {}
    for opt, i in zip(optimizers, active):
        for layer in layer_groups[i]:
            for w in layer.trainable_weights:
                mapping[re.escape(w.path)] = opt
    # The last group's optimizer is the default for any variable not mapped.
    optimizer_map = keras.optimizers.OptimizerMap(optimizers[-1], mapping)
    return keras.optimizers.MultiOptimizer(optimizer_map), active
