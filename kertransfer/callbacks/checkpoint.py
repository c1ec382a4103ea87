"""Back up a fit at every epoch's end, atomically; a rerun continues it."""

import base64
import contextlib
import os
import random
import shutil

import keras
import numpy as np

from kertransfer.run_folder import read_state
from kertransfer.run_folder import write_state

__all__ = [
    "FitCheckpoint",
    "assign_arrays",
    "get_rng_state",
    "load_states",
    "rng_state_kept",
    "save_states",
    "set_rng_state",
    "variable_arrays",
]

_FORMAT = 1


def _b64(tensor):
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _from_b64(text):
    import torch

    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype="uint8").copy())


def get_rng_state():
    """The global generator states a fit draws from, as JSON-able values.

    NumPy's and Python's (`keras.utils.set_random_seed` seeds both;
    kertransfer draws data seeds from NumPy's, `ImageBatches(seed=None)`, and
    Keras the seeds of layers built without one from Python's), and under
    the torch backend torch's: there, a Dropout layer without a seed draws
    its masks from torch's global generator (Keras 3.15's fast path), not
    from its `SeedGenerator`.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    if keras.backend.backend() == "torch":
        import torch

        state["torch"] = _b64(torch.get_rng_state())
        if torch.cuda.is_available():
            state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state):
    """Restores what `get_rng_state` returned."""
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype="uint32"), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "torch" in state and keras.backend.backend() == "torch":
        import torch

        torch.set_rng_state(_from_b64(state["torch"]))
        if "torch_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_from_b64(s) for s in state["torch_cuda"]])


@contextlib.contextmanager
def rng_state_kept():
    """A block after which the global generators are as they were before it.

    For work whose random draws must not depend on whether it ran: a seeded
    run that computes its activations (Keras's torch `predict` draws a seed
    from torch's generator for every `DataLoader` it makes) must continue
    exactly as one that found them in the cache. The generators are those
    of `get_rng_state`.

    Yields:
        None.

    Example:

    >>> with rng_state_kept():
    ...     features = body_model.predict(images)
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def variable_arrays(variables, prefix):
    """`{f"{prefix}/{i}": numpy value}` of a list of Keras variables."""
    return {f"{prefix}/{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}


def assign_arrays(variables, arrays, prefix, source):
    """Assigns `variable_arrays(variables, prefix)`'s values back, in order.

    Raises:
        ValueError: if the count or a shape differs (a backup of another
            model); names `source`.
    """
    saved = sorted((k for k in arrays if k.startswith(prefix + "/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if len(saved) != len(variables):
        raise ValueError(
            f"{source} holds {len(saved)} {prefix} variables; this model has {len(variables)}. "
            "It was written by another model or configuration: resume with the same one, or start anew."
        )
    for v, key in zip(variables, saved, strict=True):
        value = arrays[key]
        if tuple(value.shape) != tuple(v.shape):
            raise ValueError(
                f"{source}: {prefix} variable {v.path} has shape {tuple(v.shape)}, the backup "
                f"{tuple(value.shape)}. It was written by another model or configuration."
            )
        v.assign(value)


def save_states(objects):
    """The states of `objects` (`state_dict()`), split into JSON and arrays.

    A value that is a non-empty list of numpy arrays (weights) goes to the
    arrays, as `stateful<i>/<key>/<j>`; every other value stays in the JSON.

    Args:
        objects: objects with `state_dict()` -> dict (e.g. callbacks).

    Returns:
        `(meta, arrays)`: `{"stateful": [JSON part per object],
        "stateful_arrays": [{key: number of arrays} per object]}` and a dict
        of numpy arrays; `load_states` takes them back.
    """
    json_states, array_counts, arrays = [], [], {}
    for i, obj in enumerate(objects):
        state, counts = {}, {}
        for key, value in obj.state_dict().items():
            if isinstance(value, (list, tuple)) and value and all(isinstance(a, np.ndarray) for a in value):
                counts[key] = len(value)
                arrays.update({f"stateful{i}/{key}/{j}": a for j, a in enumerate(value)})
            else:
                state[key] = value
        json_states.append(state)
        array_counts.append(counts)
    return {"stateful": json_states, "stateful_arrays": array_counts}, arrays


def load_states(objects, meta, arrays, source):
    """Gives each of `objects` its state from `save_states` (`load_state_dict`).

    Args:
        objects: the objects `save_states` was given, in the same order.
        meta, arrays: a JSON record holding `save_states`'s `meta` keys, and
            the arrays saved with it.
        source: the file read, for messages.

    Raises:
        ValueError: if the record holds the states of another number of
            objects.
    """
    if len(meta["stateful"]) != len(objects):
        raise ValueError(
            f"{source} holds the states of {len(meta['stateful'])} callbacks; there are "
            f"{len(objects)} with state_dict() now. Resume with the callbacks it started with."
        )
    for i, (obj, saved) in enumerate(zip(objects, meta["stateful"], strict=True)):
        state = dict(saved)
        for key, count in meta["stateful_arrays"][i].items():
            state[key] = [arrays[f"stateful{i}/{key}/{j}"] for j in range(count)]
        obj.load_state_dict(state)


class FitCheckpoint(keras.callbacks.Callback):
    """Backs up a fit at the end of every epoch; a rerun continues it.

    What `keras.callbacks.BackupAndRestore` does for one `model.fit` (save at
    each epoch's end; at the next fit's start, restore and skip the epochs
    done; delete the backup when the fit ends), made safe against `kill -9`
    and complete enough that the continued fit ends with the same weights as
    one never interrupted. Keras 3.15's `BackupAndRestore` cannot be used
    for that, because it:

    - writes `latest.weights.h5` in place and then `training_metadata.json`:
      a kill during or between the two leaves a torn file, or the weights of
      epoch `e + 1` beside the epoch count `e`, and the resumed fit trains an
      epoch twice without notice;
    - saves `model.save_weights`, which holds the weights and optimizer
      state but not the states of the random generators (Dropout's
      `SeedGenerator`; torch's global one, which unseeded Dropout uses under
      the torch backend), nor the state of other callbacks (the best weights
      kept so far), nor the data order;
    - restores by setting the model's private `_initial_epoch`, which no
      later `fit` resets: the next fit of a sequence (fast.ai's stages) would
      skip epochs too.

    This callback writes one `.npz` per epoch (every variable of the model
    and of its optimizer, and the arrays of `stateful` callbacks) under a new
    name, then `fit.json` (epoch count, `fit_args`, the global generator
    states: NumPy's, Python's, and torch's under the torch backend; the JSON
    part of the `stateful` callbacks' states, e.g. a recorder of the epoch
    logs), renamed into place: that rename commits the epoch
    (`kertransfer.run_folder.write_state`).

    On `on_train_begin` an existing backup is restored. The caller passes
    `initial_epoch=FitCheckpoint.read(backup_dir)["epoch"]` to `model.fit`
    (checked at the first epoch), and rebuilds its data with the same order
    (`ImageBatches` seed, shuffled once per epoch done; `ConvLearner.fit`
    does this from `fit_args`). Place it last among the callbacks, so that
    the states it saves include the epoch just ended.

    Args:
        backup_dir: folder of the backup (`fit.json`, one `fit-*.npz`);
            created. Use one folder per fit.
        fit_args: JSON-able dict saved with the backup (e.g. the epoch
            count, LRs and data seed of the fit); `read` returns it, so the
            caller can rebuild the data and check that a backup belongs to
            this fit.
        stateful: objects (callbacks) with `state_dict()` -> dict and
            `load_state_dict(dict)`; values are JSON-able or lists of numpy
            arrays. Their states are saved and restored with the model's.
        delete_checkpoint: delete `backup_dir` when training ends (as
            `BackupAndRestore`); a killed fit never gets there.

    Example:

    ```python
    backup = "runs/mine/checkpoint/unfrozen"
    resumed = FitCheckpoint.read(backup)
    model.fit(train, epochs=7, initial_epoch=resumed["epoch"] if resumed else 0,
              callbacks=[SGDR(lrs, len(train), 1, 2), FitCheckpoint(backup)])
    ```
    """

    def __init__(self, backup_dir, fit_args=None, stateful=(), delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"FitCheckpoint needs a backup_dir. Received backup_dir={backup_dir!r}.")
        self.backup_dir = os.fspath(backup_dir)
        self.fit_args = dict(fit_args or {})
        self.stateful = list(stateful)
        self.delete_checkpoint = delete_checkpoint
        self._restored_epoch = 0
        self._checked = False

    @staticmethod
    def read(backup_dir):
        """The backup's `fit.json` as a dict (`epoch`, `fit_args`, ...), or None."""
        state = read_state(os.path.join(os.fspath(backup_dir), "fit.json"))
        return None if state is None else state[0]

    @property
    def _json(self):
        return os.path.join(self.backup_dir, "fit.json")

    def on_train_begin(self, logs=None):
        self._restored_epoch, self._checked = 0, False
        state = read_state(self._json)
        if state is None:
            return
        meta, arrays = state
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{self._json} has format {meta.get('format')!r}; this kertransfer reads {_FORMAT}.")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # as BackupAndRestore
        assign_arrays(self.model.variables, arrays, "model", self._json)
        if optimizer is not None:
            assign_arrays(optimizer.variables, arrays, "optimizer", self._json)
        load_states(self.stateful, meta, arrays, self._json)
        set_rng_state(meta["rng"])
        self._restored_epoch = int(meta["epoch"])

    def on_epoch_begin(self, epoch, logs=None):
        if not self._checked and epoch != self._restored_epoch:
            raise ValueError(
                f"{self._json} holds a fit after {self._restored_epoch} epoch(s), but model.fit "
                f"started at epoch {epoch}. Pass initial_epoch=FitCheckpoint.read(backup_dir)"
                "['epoch'] to model.fit."
            )
        self._checked = True

    def on_epoch_end(self, epoch, logs=None):
        arrays = variable_arrays(self.model.variables, "model")
        if self.model.optimizer is not None:
            arrays.update(variable_arrays(self.model.optimizer.variables, "optimizer"))
        states, state_arrays = save_states(self.stateful)
        arrays.update(state_arrays)
        meta = {
            "format": _FORMAT,
            "epoch": epoch + 1,
            "epochs": self.params.get("epochs") if self.params else None,
            "fit_args": self.fit_args,
            "rng": get_rng_state(),
            **states,
        }
        write_state(self._json, meta, arrays, tag=f"epoch-{epoch + 1:04d}")

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)
