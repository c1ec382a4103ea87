"""The main job's best weights over every epoch of every stage (`KeptWeights`)."""

import keras
import numpy as np

from kertransfer.files import atomic_path

__all__ = ["KeptWeights", "restore_kept"]


class KeptWeights(keras.callbacks.Callback):
    """The weights of the lowest validation loss over every epoch of the run.

    The main job gives this one callback to each of its fits. At an epoch's
    end, if its `val_loss` is lower than every earlier epoch's, of any stage
    (NaN never wins), it keeps the weights of the full model
    (`learn.model`): while the head trains on precomputed activations, that
    is the head at this epoch on the body, which those stages do not
    change. They are kept in memory and written to `model.keras`
    (atomically), so from the first epoch on the run folder holds the best
    model so far (until an epoch has a finite loss, the current one).
    `KeepBestWeights` does the same within one fit; this spans the fits.

    Its state (`state_dict`: which epoch, and its weights) is backed up
    with the fit in progress (`FitCheckpoint`) and between steps
    (`RunProgress.commit`), so a resumed run ends with the same weights.

    Attributes:
        stage: the stage of the fit in progress (set before each fit).
        kept: None, or `{"stage", "epoch" (of the run, 1-based),
            "stage_epoch" (of the stage, 1-based), "val_loss"}`.
        weights: the kept epoch's `learn.model.get_weights()`, or None.
    """

    def __init__(self, learn, path):
        super().__init__()
        self.learn, self.path = learn, path
        self.stage, self.kept, self.weights = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("val_loss", np.nan))
        if self.kept is None or loss < self.kept["val_loss"]:  # NaN never wins
            if np.isfinite(loss):
                self.kept = {
                    # The fit's rows join learn.history when it ends.
                    "stage": self.stage, "epoch": len(self.learn.history) + epoch + 1,
                    "stage_epoch": epoch + 1, "val_loss": loss,
                }
                self.weights = self.learn.model.get_weights()
            with atomic_path(self.path) as tmp:
                self.learn.save(tmp)

    def state_dict(self):
        return {"kept": self.kept, "weights": self.weights}

    def load_state_dict(self, state):
        self.kept = state["kept"]
        self.weights = None if state["weights"] is None else list(state["weights"])


def restore_kept(learn, kept_weights, replicas):
    """Puts the kept weights into `learn.model`; marks their row `best`.

    Returns:
        `metrics["kept"]`: `kept_weights.kept`, or when no epoch had a
        finite validation loss, the last epoch (whose weights stay).
    """
    if kept_weights.weights is not None:
        with replicas.scope():
            learn.model.set_weights(kept_weights.weights)
        kept = dict(kept_weights.kept)
    else:
        last = learn.history[-1]
        n_stage = sum(r["stage"] == last["stage"] for r in learn.history)
        kept = {"stage": last["stage"], "epoch": last["epoch"], "stage_epoch": n_stage, "val_loss": float(last["val_loss"])}
    for row in learn.history:
        row["best"] = row["epoch"] == kept["epoch"]
    return kept
