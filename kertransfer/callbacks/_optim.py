"""Helpers shared by callbacks that set learning rates."""

import keras

__all__ = ["sub_optimizers", "set_learning_rates", "get_learning_rates"]


def sub_optimizers(optimizer):
    """The optimizers whose LRs a scheduler drives, one per layer group.

    A `keras.optimizers.MultiOptimizer` yields its sub-optimizers in
    construction order (kertransfer builds them earliest group first);
    any other optimizer yields itself.
    """
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        return list(optimizer.optimizers)
    return [optimizer]


def _sync_jax(model):
    # The JAX trainer keeps optimizer variables in its own state during an
    # epoch; syncing makes it re-read them, so an LR set here takes effect.
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def set_learning_rates(model, lrs):
    """Sets one LR per sub-optimizer of `model.optimizer` (any backend)."""
    _sync_jax(model)
    for opt, lr in zip(sub_optimizers(model.optimizer), lrs):
        opt.learning_rate = float(lr)


def get_learning_rates(model):
    """Current LR of each sub-optimizer, as floats."""
    return [
        float(keras.ops.convert_to_numpy(opt.learning_rate))
        for opt in sub_optimizers(model.optimizer)
    ]
