"""Layer groups -> one optimizer per group (differential learning rates)."""

import keras

__all__ = ["group_optimizer", "trainable_groups"]


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
    (earliest layers first) and mapped to their variables by exact variable
    path through a `keras.optimizers.OptimizerMap`, so the optimizer
    serializes with the model. Groups without trainable weights get none.
    fast.ai's differential learning rates (`fit(np.array([1e-4, 1e-3,
    1e-2]), ...)`) set each sub-optimizer's LR.

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
                mapping[w.path] = opt
    # The last group's optimizer is the default for any variable not mapped.
    optimizer_map = keras.optimizers.OptimizerMap(optimizers[-1], mapping)
    return keras.optimizers.MultiOptimizer(optimizer_map), active
