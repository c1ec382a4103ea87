"""TensorBoard logging of a sequence of fits (`train --tensorboard`)."""

import importlib.util
import math

import numpy as np
import pytest

from kertransfer.callbacks import TensorBoardLogger
from kertransfer.cli import _config
from kertransfer.cli import build_parser
from kertransfer.groups import trainable_groups
from kertransfer.learner import ConvLearner

from conftest import tensorboard_scalars


def test_fits_write_loss_metrics_and_group_lrs(tiny_data, tmp_path):
    learn = ConvLearner.pretrained("tiny_cnn", tiny_data, precompute=True, weights=None)
    tb = TensorBoardLogger(
        tmp_path / "tb",
        group_names=lambda: [learn.group_names[i] for i in trainable_groups(learn.layer_groups)],
    )
    learn.fit(1e-2, 1, callbacks=[tb], verbose=0)  # constant LR, precomputed
    learn.precompute = False
    learn.fit(1e-2, 1, cycle_len=1, callbacks=[tb], verbose=0)  # cosine
    learn.unfreeze()
    learn.fit(np.array([1e-4, 1e-3, 1e-2]), 1, callbacks=[tb], verbose=0)

    train = tensorboard_scalars(tmp_path / "tb" / "train")
    valid = tensorboard_scalars(tmp_path / "tb" / "validation")
    # One running epoch axis over the three fits, numbered as learn.history.
    assert [step for step, _ in train["epoch_loss"]] == [r["epoch"] for r in learn.history] == [1, 2, 3]
    assert [step for step, _ in valid["epoch_loss"]] == [1, 2, 3]
    np.testing.assert_allclose(
        [v for _, v in train["epoch_loss"]], [r["loss"] for r in learn.history], rtol=1e-5)
    np.testing.assert_allclose(
        [v for _, v in valid["epoch_accuracy"]], [r["val_accuracy"] for r in learn.history], rtol=1e-5)
    # Mean LR of each epoch: constant, then a cosine cycle from 1e-2 to ~0
    # (mean ~ half), then the three differential LRs.
    head = dict(train["epoch_lr_head"])
    assert head[1] == pytest.approx(1e-2)
    assert 0.3e-2 < head[2] < 0.7e-2
    assert head[3] == pytest.approx(1e-2)
    assert train["epoch_lr_group0"] == [(3, pytest.approx(1e-4))]
    assert train["epoch_lr_group1"] == [(3, pytest.approx(1e-3))]
    # Keras's own LR scalars: the LR at each epoch's end, named after the
    # layer groups (the same over recompiles), as in `learn.history`.
    lr_tags = {tag for tag in train if tag.startswith("epoch_learning_rate")}
    assert lr_tags == {f"epoch_learning_rate_{g}" for g in ("group0", "group1", "head")}
    end = [v for _, v in train["epoch_learning_rate_head"]]
    np.testing.assert_allclose(end, [r["learning_rate_head"] for r in learn.history], rtol=1e-6)
    steps = math.ceil(len(tiny_data.train_labels) / tiny_data.batch_size)
    last_batch = 1e-2 * (1 + math.cos(math.pi * (steps - 1) / steps)) / 2  # the cosine's last step
    np.testing.assert_allclose(end, [1e-2, last_batch, 1e-2], rtol=1e-5)
    # The History of each fit is untouched.
    assert not any(k.startswith("lr_") for row in learn.history for k in row)


@pytest.mark.one_backend  # argument parsing
def test_cli_tensorboard_flag_reaches_train_config(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["train", str(tmp_path), "--tensorboard"])
    assert _config(args).tensorboard is True
    args = parser.parse_args(["train", str(tmp_path), "--tensorboard", str(tmp_path / "tb")])
    assert _config(args).tensorboard == str(tmp_path / "tb")
    assert _config(parser.parse_args(["train", str(tmp_path)])).tensorboard is None


@pytest.mark.one_backend  # an import check, before any backend code
def test_missing_tensorflow_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install tensorflow tensorboard"):
        TensorBoardLogger(tmp_path)


def _sgdr_closed_form(base, steps, cycle_len, cycle_mult, n_cycle):
    """LR of each batch of an SGDR fit: a cosine from `base` to 0 per cycle
    (Loshchilov & Hutter 2017), cycles of `cycle_len * cycle_mult**i` epochs."""
    lrs = []
    for i in range(n_cycle):
        length = cycle_len * cycle_mult**i * steps
        lrs += [base * (1 + math.cos(math.pi * t / length)) / 2 for t in range(length)]
    return lrs


def test_batch_lrs_over_fits_show_the_sgdr_restarts(tiny_data, tmp_path):
    """`batch_lr_<group>`: each batch's LR, numbered over the fits, restarts at the base LR."""
    learn = ConvLearner.pretrained("tiny_cnn", tiny_data, precompute=True, weights=None)
    tb = TensorBoardLogger(tmp_path / "tb", group_names=["head"])
    learn.fit(5e-3, 1, callbacks=[tb], verbose=0)  # constant LR
    first = len(learn.sched.lr_history)
    learn.fit(1e-2, 2, cycle_len=1, cycle_mult=2, callbacks=[tb], verbose=0)  # 1 + 2 epochs
    steps = learn.sched.steps_per_epoch

    head = tensorboard_scalars(tmp_path / "tb" / "train")["batch_lr_head"]
    assert [step for step, _ in head] == list(range(1, first + 3 * steps + 1))
    want = [5e-3] * first + _sgdr_closed_form(1e-2, steps, 1, 2, 2)
    np.testing.assert_allclose([v for _, v in head], want, rtol=1e-5)
    # The restarts: the second fit's first batch, its second cycle's first.
    values = dict(head)
    assert values[first + 1] == values[first + steps + 1] == pytest.approx(1e-2)
    assert values[first + steps] < 1e-2 / 10  # the end of the first cycle, just before
