"""What the command line shows: the epoch table, progress bars, heartbeat, hidden backend noise."""

import io
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kertransfer.console import counted_batches
from kertransfer.console import epoch_table
from kertransfer.console import heartbeat
from kertransfer.console import progress_bar
from kertransfer.console import progress_bars
from kertransfer.console import stage_header

pytestmark = pytest.mark.one_backend  # no backend code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_epoch_table_is_fastais_one_line_per_epoch_with_the_kept_one_starred():
    history = [
        {"epoch": 1, "stage": "head", "loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.875, "seconds": 4.4},
        {"epoch": 2, "stage": "unfrozen", "loss": 0.125, "val_loss": 0.375, "val_accuracy": 0.75, "seconds": 75.6},
    ]
    assert epoch_table(history, kept_epoch=1) == [
        "epoch  stage     train_loss  valid_loss  accuracy  time",
        "1      head      0.500000    0.250000    0.875000  00:04  *",
        "2      unfrozen  0.125000    0.375000    0.750000  01:16",
    ]
    multi = [{"epoch": 1, "stage": "fit", "loss": 0.5, "val_loss": 0.5, "val_f2": 0.5, "seconds": 1.0}]
    assert epoch_table(multi)[0].split() == ["epoch", "stage", "train_loss", "valid_loss", "f2", "time"]


def test_stage_header():
    assert stage_header(2, 5, "head_augmented", "2 epochs, LR 0.01") == (
        "── stage 2/5: head_augmented (2 epochs, LR 0.01) ──"
    )


class _Batches:
    """A stand-in PyDataset: 3 batches, read as Keras may (the first twice)."""

    workers, max_queue_size = 1, 10

    def __len__(self):
        return 3

    def __getitem__(self, index):
        return (np.full((2, 1), index),)

    def on_epoch_end(self):
        pass


class _Bar:
    def __init__(self):
        self.count = 0

    def add(self, n, values=None):
        self.count += n


def test_counted_batches_count_each_batch_once_and_serve_it_unchanged():
    bar = _Bar()
    batches = counted_batches(_Batches(), bar)
    assert len(batches) == 3
    assert batches[0][0][0, 0] == 0  # Keras peeks at the first batch for its shape
    assert [batches[i][0][0, 0] for i in range(3)] == [0, 1, 2]
    assert bar.count == 3


def test_progress_bars_are_off_unless_asked_for():
    plain = _Batches()
    assert counted_batches(plain, progress_bar(3)) is plain  # silent: nothing wrapped
    with progress_bars(1):
        assert type(progress_bar(3)).__name__ == "Progbar"
        with progress_bars(0):
            assert counted_batches(plain, progress_bar(3)) is plain
    assert counted_batches(plain, progress_bar(3)) is plain


def test_heartbeat_writes_a_line_when_the_console_is_silent(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with heartbeat(lambda s: f"still working, {s:.0f} s", every=0.05):
        sys.stdout.write("\r3/10 ━━━━")  # a progress bar, its line left open
        deadline = time.monotonic() + 30
        while "still working" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sys.stdout is out  # put back
    text = out.getvalue()
    # The bar's line is ended first; each heartbeat is a line of its own.
    assert text.startswith("\r3/10 ━━━━\nstill working, ")
    assert all(line.startswith("still working, ") for line in text.split("\n")[1:-1])


_NOISE_SCRIPT = textwrap.dedent("""
    import os, sys
    from kertransfer.console import quiet_backend_logs
    with quiet_backend_logs(verbose=sys.argv[1] == "verbose"):
        print("TF_CPP_MIN_LOG_LEVEL=" + os.environ.get("TF_CPP_MIN_LOG_LEVEL", "unset"), flush=True)
        # As TensorFlow's C++ code writes them, straight to file descriptor 2:
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1 12266 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n")
        os.write(2, b"E0000 00:00:1 7091 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\\n")
        print("a real warning", file=sys.stderr, flush=True)
        os.write(2, b"an unfinished line")
""")


@pytest.mark.parametrize("verbose", [False, True])
def test_backend_start_up_noise_is_hidden_unless_verbose(verbose, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", _NOISE_SCRIPT, "verbose" if verbose else "quiet"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    if verbose:
        assert done.stdout == "TF_CPP_MIN_LOG_LEVEL=unset\n"
        assert "Could not find cuda drivers" in done.stderr and "failed call to cuInit" in done.stderr
        assert "absl::InitializeLog" in done.stderr
    else:
        assert done.stdout == "TF_CPP_MIN_LOG_LEVEL=2\n"
        assert done.stderr == "a real warning\nan unfinished line"


def test_a_log_level_the_user_set_is_kept(monkeypatch):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "0"}
    done = subprocess.run(
        [sys.executable, "-c", _NOISE_SCRIPT, "quiet"], capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    assert done.stdout == "TF_CPP_MIN_LOG_LEVEL=0\n"
