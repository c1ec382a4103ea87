"""The learning rates of a model's optimizer(s): read, set, logged, checked.

Shared by the callbacks that schedule or record learning rates (`StepSchedule`,
`LRFinder`, `TensorBoardLogger`, `BatchLosses`): each sub-optimizer (one per
layer group) has its own rate.
"""

import keras

__all__ = [
    "check_settable_learning_rates",
    "get_learning_rates",
    "learning_rate_logs",
    "optimizer_steps",
    "set_learning_rates",
    "sub_optimizers",
    "sync_jax_state",
]


def _unwrapped(optimizer):
    # A LossScaleOptimizer (mixed precision) holds the optimizer that steps.
    return getattr(optimizer, "inner_optimizer", optimizer)


def sub_optimizers(optimizer):
    """The optimizers whose LRs a scheduler drives, one per layer group.

    A `keras.optimizers.MultiOptimizer` yields its sub-optimizers in
    construction order (kertransfer builds them earliest group first);
    any other optimizer yields itself. A `LossScaleOptimizer` (mixed
    precision) is looked through, as Keras's `TensorBoard` does.
    """
    optimizer = _unwrapped(optimizer)
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        return list(optimizer.optimizers)
    return [optimizer]


def sync_jax_state(model):
    """Makes `model`'s variables current during a JAX fit (no-op elsewhere).

    The JAX trainer keeps the variables in its own state during an epoch;
    syncing writes them back, and the next step re-reads them, so a value
    read here is current and an LR set here takes effect.
    """
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def optimizer_steps(model):
    """`model.optimizer.iterations` as an int: the training steps it ran.

    With a `MultiOptimizer` this is the wrapper's own counter, which counts
    every step once; each sub-optimizer counts only the steps in which it
    received gradients.
    """
    sync_jax_state(model)
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def check_settable_learning_rates(model, caller):
    """Raises unless `caller` can set each sub-optimizer's LR (for `on_train_begin`).

    Raises:
        ValueError: if `model` has no optimizer (not compiled).
        TypeError: if an optimizer was built with a `LearningRateSchedule`
            or a callable as its `learning_rate`: Keras cannot set those.
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"{caller} sets the optimizer's learning rates: compile the model with an optimizer first."
        )
    for opt in sub_optimizers(model.optimizer):
        # What Keras's own `learning_rate` setter requires (keras/src/optimizers/base_optimizer.py).
        lr = getattr(opt, "_learning_rate", None)
        if not isinstance(lr, keras.Variable):
            if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
                kind = f"a LearningRateSchedule ({type(lr).__name__})"
            else:
                kind = f"a {type(lr).__name__}"
            raise TypeError(
                f"{caller} sets the learning rate of optimizer {opt.name!r} every batch, but that "
                f"optimizer was built with {kind} as its learning_rate, which Keras cannot overwrite. "
                f"Build it with a float, e.g. {type(opt).__name__}(learning_rate=0.01): the schedule "
                f"comes from {caller}."
            )


def set_learning_rates(model, lrs):
    """Sets one LR per sub-optimizer of `model.optimizer` (any backend)."""
    sync_jax_state(model)
    for opt, lr in zip(sub_optimizers(model.optimizer), lrs):
        opt.learning_rate = float(lr)


def get_learning_rates(model):
    """Current LR of each sub-optimizer, as floats."""
    sync_jax_state(model)
    return [
        float(keras.ops.convert_to_numpy(opt.learning_rate))
        for opt in sub_optimizers(model.optimizer)
    ]


def learning_rate_logs(model):
    """The current LRs as Keras's `LearningRateScheduler` logs them.

    `{"learning_rate": lr}` for one optimizer; for a `MultiOptimizer`,
    `{"learning_rate_<name>": lr}` per sub-optimizer (`group_optimizer`
    names them after their layer groups: `learning_rate_group0`, ...,
    `learning_rate_head`). Written into the epoch logs, they reach
    `History`, `CSVLogger` and `TensorBoard`.
    """
    optimizer = _unwrapped(model.optimizer)
    lrs = get_learning_rates(model)
    if not isinstance(optimizer, keras.optimizers.MultiOptimizer):
        return {"learning_rate": lrs[0]}
    return {
        f"learning_rate_{opt.name}": lr for opt, lr in zip(optimizer.optimizers, lrs)
    }
