"""The learning rates of a model's optimizer(s): read, set, logged, checked.

Shared by the callbacks that schedule or record learning rates (`StepSchedule`,
`LRFinder`, `TensorBoardLogger`, `BatchLosses`): each sub-optimizer (one per
layer group) has its own rate.

Under JAX, what a callback reads every batch comes from the trainer's
in-flight state (`InFlightValues`) rather than a state sync, which writes
every variable of the model back and makes the next step read them all
again (`benchmarks/bench_callbacks.py` measures what the callbacks cost).
"""

import keras
import numpy as np

__all__ = [
    "InFlightValues",
    "StepLearningRates",
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


class InFlightValues:
    """Reads some optimizer or metric variables of `model` during a fit.

    Under JAX, Keras's trainer keeps the variables' values in its own state
    during an epoch; `model.jax_state_sync()` writes all of them back into
    the variables (and the next step then reads all of them again). For a
    few scalars read every batch (the step counter, the loss tracker),
    `read` takes their values from the trainer's copy of that state
    (`model._jax_state`) instead: the same values, without the sync. (A
    new value cannot go that way: `model._jax_state` holds copies of the
    lists the next step takes; see `StepLearningRates`.)
    Other backends, a JAX distribution, or a state already synced read the
    variables.

    Args:
        model: the model being fitted.
        variables: variables of `model.optimizer.variables` or
            `model.metrics_variables` (positions taken now: create this in
            `on_train_begin` or later).
    """

    def __init__(self, model, variables):
        self.model = model
        self.variables = list(variables)
        self._slots = None
        if keras.backend.backend() == "jax" and keras.distribution.distribution() is None:
            # The trainer's state lists follow these lists' order (the
            # metrics' list is long to build: only when needed).
            where = {}
            for kind, listed in (
                ("optimizer_variables", lambda: model.optimizer.variables if model.optimizer else []),
                ("metrics_variables", lambda: model.metrics_variables),
            ):
                if all(id(v) in where for v in self.variables):
                    break
                for i, v in enumerate(listed()):
                    where.setdefault(id(v), (kind, i))
            if all(id(v) in where for v in self.variables):
                self._slots = [where[id(v)] for v in self.variables]

    def _state(self):
        """The trainer's in-flight state lists, when newer than the variables."""
        if self._slots is None or getattr(self.model, "_jax_state_synced", True):
            return None
        state = getattr(self.model, "_jax_state", None) or {}
        if any(state.get(kind) is None for kind, _ in self._slots):
            return None
        return state

    def read(self):
        """The variables' current values, as floats."""
        state = self._state()
        if state is None:
            sync_jax_state(self.model)
            return [float(keras.ops.convert_to_numpy(v)) for v in self.variables]
        return [float(np.asarray(state[kind][i])) for kind, i in self._slots]


class StepLearningRates:
    """Sets each sub-optimizer's LR for the next training step, every batch.

    Where the model's variables are current, it assigns them
    (`set_learning_rates`). Under JAX during an epoch they are not: Keras's
    trainer holds the state and passes it to `model.train_function(state,
    data)` at each step, and assigning a variable would need a sync of the
    whole state (every variable written back, then read again by the next
    step; about 2 ms a batch for a small head, `benchmarks/bench_callbacks.py`).
    There the new LRs are put into the optimizer's part of that state as it
    goes into the next step, by a wrapper of `model.train_function` for the
    fit (`close()` removes it; one left by a fit that raised passes the
    state through unchanged, and `compile` drops it).

    Args:
        model: the model being fitted, with its train function made (as it
            is from `on_train_begin` on).
    """

    def __init__(self, model):
        self.model = model
        self._pending = None
        self._inner = None
        opts = sub_optimizers(model.optimizer)
        inner = getattr(model, "train_function", None)
        if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None or inner is None:
            return
        position = {id(v): i for i, v in enumerate(model.optimizer.variables)}
        slots = [position.get(id(opt._learning_rate)) for opt in opts]
        if None in slots:
            return

        def train_function(state, data):
            if self._pending is not None:
                # The trainer's state: trainable, non-trainable, optimizer
                # (in `model.optimizer.variables` order) and metric variables.
                values = list(state[2])
                for i, lr in zip(slots, self._pending):
                    values[i] = lr
                state = (state[0], state[1], values, *state[3:])
                self._pending = None
            return inner(state, data)

        model.train_function = train_function
        self._inner, self._wrapper, self._slots = inner, train_function, slots

    def set(self, lrs):
        """Sets the LRs (one per sub-optimizer) for the next step."""
        copy = (getattr(self.model, "_jax_state", None) or {}).get("optimizer_variables")
        if self._inner is None or copy is None or getattr(self.model, "_jax_state_synced", True):
            # The variables are current (and the next step reads them).
            self._pending = None
            set_learning_rates(self.model, lrs)
            return
        import jax

        self._pending = []
        for i, lr in zip(self._slots, lrs):
            # As committed (placed) as the value it replaces: a committed
            # array where the step took an uncommitted one changes the jitted
            # step's signature, and JAX compiles the step again every fit.
            value = np.asarray(lr, copy[i].dtype)
            value = jax.device_put(value, copy[i].sharding) if copy[i].committed else jax.numpy.asarray(value)
            # Also into the trainer's copy of its state, which a sync (by a
            # later callback reading the LRs) writes into the variables.
            copy[i] = value
            self._pending.append(value)

    def close(self):
        """Puts back the model's own train function."""
        if self._inner is not None and self.model.train_function is self._wrapper:
            self.model.train_function = self._inner
        self._pending = self._inner = None


def optimizer_steps(model):
    """`model.optimizer.iterations` as an int: the training steps it ran.

    With a `MultiOptimizer` this is the wrapper's own counter, which counts
    every step once; each sub-optimizer counts only the steps in which it
    received gradients.
    """
    return int(InFlightValues(model, [model.optimizer.iterations]).read()[0])


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
