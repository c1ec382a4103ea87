"""What the main job tells the user: stage headers, progress bars, the epoch table.

The library stays quiet by default. `progress_bars(verbose=1)` turns on
Keras-style progress bars (`keras.utils.Progbar`) for the steps that
otherwise run silently for a long time: decoding the images, computing
precomputed activations, predicting (`learn.predict`, `learn.TTA`). The main
job (`kertransfer.train.train`) turns them on for its whole run with
`verbose=1`; the verbs that take a `verbose` argument turn them on for
their own call.

The command line also hides the backend's known-harmless start-up noise
(`quiet_backend_logs`). This module imports neither Keras nor a backend at
import time: `kertransfer --help` uses it.
"""

import contextlib
import contextvars
import os
import re
import sys
import threading
import time

__all__ = [
    "BACKEND_NOISE",
    "epoch_table",
    "heartbeat",
    "progress_bar",
    "progress_bars",
    "quiet_backend_logs",
    "stage_header",
]

_VERBOSE = contextvars.ContextVar("kertransfer_progress_bars", default=0)


@contextlib.contextmanager
def progress_bars(verbose=1):
    """Shows (`verbose=1`) or hides (0) kertransfer's progress bars in the block.

    Args:
        verbose: 0 (silent) or 1 (one `keras.utils.Progbar` per long step,
            updated as it goes). None leaves the current setting.

    Example:

    ```python
    with progress_bars():
        data = ImageClassifierData.from_paths("data/dogscats")  # decode bar
        learn = ConvLearner.pretrained("efficientnet_lite0", data)  # precompute bars
    ```
    """
    if verbose is None:
        yield
        return
    token = _VERBOSE.set(int(verbose))
    try:
        yield
    finally:
        _VERBOSE.reset(token)


class _Silent:
    """A progress bar that shows nothing (`progress_bar` when bars are off)."""

    target = None

    def update(self, current, values=None, finalize=None):
        pass

    def add(self, n, values=None):
        pass


def progress_bar(target, unit_name="step"):
    """A `keras.utils.Progbar` of `target` units if bars are on, else a silent one.

    Args:
        target: number of units (batches, images) the step will count.
        unit_name: shown as `ms/<unit_name>`.

    Returns:
        An object with Keras's `Progbar` methods `update(current)` and
        `add(n)`.
    """
    if not _VERBOSE.get() or not target:
        return _Silent()
    import keras

    return keras.utils.Progbar(target, unit_name=unit_name)


def counted_batches(batches, bar):
    """`batches` (a `keras.utils.PyDataset`) advancing `bar` by one per batch served.

    For a progress bar over a `model.predict` that takes no callbacks
    (`kertransfer.distribute.predict_padded`). Each batch counts once
    (Keras may read the first one twice, to learn the input's shape). With
    a silent `bar`, `batches` itself is returned.
    """
    if isinstance(bar, _Silent):
        return batches
    import keras

    class CountedBatches(keras.utils.PyDataset):
        # Keras may fetch batches from worker threads: one update at a time.
        def __init__(self):
            super().__init__(
                workers=batches.workers, use_multiprocessing=False, max_queue_size=batches.max_queue_size
            )
            self._lock = threading.Lock()
            self._served = set()

        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            item = batches[index]
            with self._lock:
                if index not in self._served:
                    self._served.add(index)
                    bar.add(1)
            return item

        def on_epoch_end(self):
            batches.on_epoch_end()

        def __getattr__(self, name):  # batch_size, sizes, ... of the wrapped batches
            return getattr(batches, name)

    return CountedBatches()


def stage_header(index, total, name, detail=""):
    """`── stage 2/9: head_augmented (2 epochs, LR 0.01) ──`.

    Args:
        index: 1-based number of the stage.
        total: number of stages of the run.
        name: the stage's name (as in `metrics.json` `stage_seconds` and
            the `stage` column of `history.csv`).
        detail: what it does, in brackets after the name.
    """
    detail = f" ({detail})" if detail else ""
    return f"── stage {index}/{total}: {name}{detail} ──"


def _minutes(seconds):
    seconds = round(float(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def epoch_table(history, kept_epoch=None):
    """fastai's end-of-fit table, one line per epoch of `history`.

    Columns: `epoch` (of the run, as in `history.csv`), `stage`,
    `train_loss`, `valid_loss`, the validation metric (`accuracy`, or `f2`
    for multi-label), `time` (`mm:ss`, the epoch's `seconds`). The kept
    epoch's line ends with `*`.

    Args:
        history: `learn.history` (list of dicts with `epoch`, `stage`,
            `loss`, `val_loss`, `val_accuracy` or `val_f2`, `seconds`).
        kept_epoch: the run epoch whose weights were kept, or None.

    Returns:
        List of lines (header first).
    """
    metric = next((m for m in ("accuracy", "f2") if any(f"val_{m}" in row for row in history)), None)
    header = ["epoch", "stage", "train_loss", "valid_loss"] + ([metric] if metric else []) + ["time"]
    cells = []
    for row in history:
        line = [
            str(row.get("epoch", "")),
            str(row.get("stage", "")),
            f"{float(row.get('loss', float('nan'))):.6f}",
            f"{float(row.get('val_loss', float('nan'))):.6f}",
        ]
        if metric:
            line.append(f"{float(row.get(f'val_{metric}', float('nan'))):.6f}")
        line.append(_minutes(row.get("seconds", 0.0)))
        cells.append(line)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row, line in zip(history, cells):
        text = "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
        lines.append(text + ("  *" if kept_epoch is not None and row.get("epoch") == kept_epoch else ""))
    return lines


# Start-up messages of the backends that say nothing about the run: CUDA
# probing on a machine without a GPU, absl's note that it is not set up yet,
# TensorFlow's CPU and oneDNN notices, JAX's CPU fallback, LiteRT's CPU
# delegate.
BACKEND_NOISE = (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"oneDNN custom operations are on",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"TF-TRT Warning: Could not find TensorRT",
    r"An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not installed",
    r"Created TensorFlow Lite XNNPACK delegate for CPU",
)


def _forward(read_fd, write_fd, pattern):
    """Copies lines from `read_fd` to `write_fd`, dropping those matching `pattern`."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = [line + b"\n" for line in lines if not pattern.search(line.decode("utf-8", "replace"))]
        if kept:
            os.write(write_fd, b"".join(kept))
    if pending and not pattern.search(pending.decode("utf-8", "replace")):
        os.write(write_fd, pending)
    os.close(read_fd)


@contextlib.contextmanager
def quiet_backend_logs(verbose=False, noise=BACKEND_NOISE):
    """Hides the backends' known-harmless start-up messages in the block (the CLI's default).

    Sets `TF_CPP_MIN_LOG_LEVEL=2` (TensorFlow's C++ INFO and WARNING lines)
    when the user has not set it, before TensorFlow is imported; and since
    some lines are printed before TensorFlow reads that setting (absl's
    "All log messages before absl::InitializeLog()", "Could not find cuda
    drivers on your machine"), lines of the process's standard error that
    match one of `noise` are dropped as they are written (file descriptor 2
    goes through a pipe; every other line is passed on as it comes).
    Standard output, and so the progress bars, is untouched.

    Args:
        verbose: True shows everything (the block runs unchanged).
        noise: regular expressions of the lines to drop.

    Example:

    ```python
    with quiet_backend_logs():
        import tensorflow  # no CUDA probing messages on a CPU machine
    ```
    """
    if verbose:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced (pytest, notebooks)
        fd = None
    if fd != 2:
        yield
        return
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pattern = re.compile("|".join(f"(?:{p})" for p in noise))
    thread = threading.Thread(target=_forward, args=(read_fd, saved, pattern), daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread ends
        thread.join(timeout=5)
        if not thread.is_alive():  # else a child process still holds the pipe
            os.close(saved)


class _WriteClock:
    """A text stream that passes writes on to `stream`, noting when the last one came."""

    def __init__(self, stream):
        self.stream = stream
        self.last = self.last_update = time.monotonic()  # any write; not the heartbeat's
        self.open_line = False  # the last write left a line unfinished (a bar)
        self.lock = threading.Lock()

    def write(self, text):
        with self.lock:
            written = self.stream.write(text)
            if text:
                self.last = self.last_update = time.monotonic()
                self.open_line = not text.endswith("\n")
            return written

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...
        return getattr(self.stream, name)


@contextlib.contextmanager
def heartbeat(message, every=8.0):
    """Writes a line to standard output whenever it has been silent `every` seconds.

    Progress bars move when a step ends; a single step can take longer
    (the first batch of a fit, which compiles the model; saving; a long
    import). In the block, a thread watches `sys.stdout` and, after
    `every` seconds without a write, writes `message(seconds)` on a line
    of its own (after the bar's line, which stays as it was), so the
    console never looks stuck for longer.

    Args:
        message: `message(seconds) -> str`, the line to write; `seconds`
            since the last write other than its own.
        every: seconds of silence before a line.

    Example:

    ```python
    with heartbeat(lambda s: f"still working ({s:.0f} s since the last line)"):
        train("data/dogscats", "runs/dogscats")
    ```
    """
    clock = _WriteClock(sys.stdout)
    sys.stdout = clock
    stop = threading.Event()

    def beat():
        while not stop.wait(min(0.5, every / 4)):
            now = time.monotonic()
            if now - clock.last >= every:
                with clock.lock:
                    line = message(now - clock.last_update)
                    clock.stream.write(("\n" if clock.open_line else "") + line + "\n")
                    clock.stream.flush()
                    clock.open_line = False
                    clock.last = time.monotonic()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if sys.stdout is clock:
            sys.stdout = clock.stream
