"""OneCycle: the 1cycle LR policy, per layer group."""

from kertransfer import schedules
from kertransfer.callbacks.step_schedule import StepSchedule

__all__ = ["OneCycle"]


class OneCycle(StepSchedule):
    """Sets each layer group's LR every batch by the 1cycle policy.

    Each group's LR warms up along a cosine from `lr / div` to its maximum
    `lr` over the first `pct_start` of the fit, then anneals along a cosine
    to `lr / div_final` (Smith 2018, "Super-Convergence"; fastai v2
    `fit_one_cycle`): `lr * schedules.one_cycle_multiplier(step / total,
    pct_start, div, div_final)` with `total = epochs * steps_per_epoch`.
    The momentum is not cycled (fastai cycles it 0.95 -> 0.85 -> 0.95):
    Keras's `SGD` compiles its `momentum` into the train step as a
    constant.

    The step comes from `model.optimizer.iterations`, so a resumed fit and
    `steps_per_execution > 1` keep to the schedule; the LRs go into the
    epoch logs (`learning_rate_<group>`); see `StepSchedule`.

    Args:
        lrs: float, or one maximum LR per sub-optimizer.
        epochs: epochs of the fit (the `epochs` given to `model.fit`).
        steps_per_epoch: batches per epoch, or None to take Keras's
            `params["steps"]`.
        pct_start: fraction of the fit spent warming up, in `[0, 1)`.
        div: the LR starts at `lr / div`.
        div_final: the LR ends at `lr / div_final`.

    Attributes:
        lr_history: list of per-step lists of the LRs used, one per group.

    Raises:
        ValueError: on a bad `epochs`, `steps_per_epoch`, `pct_start` or
            `div`; in `on_train_begin` as `StepSchedule`.

    Example:

    ```python
    history = model.fit(train, epochs=3, callbacks=[OneCycle(1e-2, epochs=3)])
    ```
    """

    def __init__(self, lrs, epochs, steps_per_epoch=None, pct_start=0.25, div=25.0, div_final=1e5):
        super().__init__(lrs, steps_per_epoch)
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
            raise ValueError(f"OneCycle epochs must be a positive integer. Received epochs={epochs!r}.")
        schedules.one_cycle_multiplier(0.0, pct_start, div, div_final)  # validates
        self.epochs = int(epochs)
        self.pct_start, self.div, self.div_final = pct_start, div, div_final

    def multiplier(self, step):
        pct = min(step / (self.epochs * self._steps), 1.0)
        return schedules.one_cycle_multiplier(pct, self.pct_start, self.div, self.div_final)
