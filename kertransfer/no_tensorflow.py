"""Keras calls that import TensorFlow needlessly under JAX and torch.

Keras 3.15 imports TensorFlow, when it is installed, inside
`keras.utils.set_random_seed` (it seeds `tf.random` for `tf.data`
pipelines) and inside `Model.save` (its serializer asks whether objects
are `tf.TensorShape`, `tf.DType`, `tf.TypeSpec`), whatever the backend:
about 10 s of CPU and several hundred MB per process on a small machine
(keras-team/keras#18455 reports the general problem). Under JAX and torch
kertransfer makes no TensorFlow object, so neither call needs it:

- `tensorflow_unimported()` tells Keras's lazy TensorFlow handle, for the
  duration of a block, that TensorFlow is unavailable, when the backend is
  not TensorFlow and nothing has imported TensorFlow yet (then no object
  can be a TensorFlow one and the answers are the same); afterwards Keras
  probes for TensorFlow again as before.
- `set_seed(seed)` is `keras.utils.set_random_seed(seed)` in that block:
  Python's, NumPy's and the backend's generators, and Keras's global seed.

Under the TensorFlow backend, or once TensorFlow is imported, both are
exactly Keras's calls. If a Keras version lays out its lazy handle
differently, the block does nothing and Keras imports TensorFlow as
before (slower, same results).
"""

import contextlib
import importlib
import sys

__all__ = ["set_seed", "tensorflow_unimported"]


def _keras_lazy_tensorflow():
    """Keras's lazy `tensorflow` handle (`keras.src.utils.module_utils`), or None."""
    try:
        handle = importlib.import_module("keras.src.utils.module_utils").tensorflow
    except (ImportError, AttributeError):
        return None
    return handle if hasattr(handle, "_available") else None


@contextlib.contextmanager
def tensorflow_unimported():
    """A block in which Keras does not import TensorFlow under JAX or torch.

    Inside, Keras's checks for TensorFlow answer "not installed" when the
    backend is not TensorFlow and TensorFlow is not imported yet; on exit,
    Keras probes for it again on its next check. Under the TensorFlow
    backend, or with TensorFlow already imported, the block changes
    nothing.

    Yields:
        None.

    Example:

    >>> with tensorflow_unimported():
    ...     model.save("model.keras")  # no `import tensorflow` under JAX
    """
    import keras

    handle = _keras_lazy_tensorflow()
    if (
        handle is None
        or keras.backend.backend() == "tensorflow"
        or "tensorflow" in sys.modules
        or handle._available is not None
    ):
        yield
        return
    handle._available = False
    try:
        yield
    finally:
        if handle._available is False:
            handle._available = None


def set_seed(seed):
    """Seeds every random generator a run uses, as `keras.utils.set_random_seed`.

    fast.ai's `set_seed`: Python's `random`, NumPy's global generator, the
    backend's (torch's `manual_seed`; TensorFlow's under that backend) and
    Keras's global seed, from which layers created afterwards seed their
    `SeedGenerator`s. Under JAX and torch it does not import TensorFlow
    (see `tensorflow_unimported`); Keras's own call does, to seed
    `tf.random` for `tf.data`, which kertransfer does not use.

    Args:
        seed: int, the seed.

    Raises:
        ValueError: if `seed` is not an int (Keras's check and message).

    Example:

    >>> set_seed(42)
    >>> learn = ConvLearner.pretrained("efficientnet_lite0", data)
    """
    import keras

    with tensorflow_unimported():
        keras.utils.set_random_seed(seed)
