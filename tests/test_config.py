"""`TrainConfig` and the `kertransfer train` flags made from it."""

import csv
import dataclasses
import json

import pytest

from kertransfer.cli import _config
from kertransfer.cli import build_parser
from kertransfer.cli import main
from kertransfer.config import BUILTIN_ARCHS
from kertransfer.config import TrainConfig

from conftest import write_synthetic_images

pytestmark = pytest.mark.one_backend  # argument handling: no backend code runs


def test_every_field_is_a_flag_with_the_fields_default(tmp_path):
    parser = build_parser()
    config = _config(parser.parse_args(["train", str(tmp_path)]))
    # The command line's only other default: "none" (one device), where
    # Python's None also takes a distribution scope the caller made current.
    assert config == dataclasses.replace(TrainConfig(), distribute="none")
    help_text = " ".join(parser._subparsers._group_actions[0].choices["train"].format_help().split())
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in help_text
    for arch in BUILTIN_ARCHS:
        assert arch in help_text


def test_flags_reach_the_config(tmp_path):
    parser = build_parser()
    argv = [
        "train", str(tmp_path), "--lr", "3e-3", "--cycle-len", "2", "--cycle-mult", "3",
        "--max-images", "64", "--n-aug", "2", "--group-ratio", "5", "--max-lr", "0.1",
        "--weights", "none", "--cache", "none", "--seed", "7",
    ]
    config = _config(parser.parse_args(argv))
    assert (config.lr, config.cycle_len, config.cycle_mult, config.max_images) == (3e-3, 2, 3, 64)
    assert (config.n_aug, config.group_ratio, config.max_lr, config.seed) == (2, 5.0, 0.1, 7)
    assert config.weights is None and config.cache is None
    # The old spelling of --n-aug, with its old meaning (a count).
    assert _config(parser.parse_args(["train", str(tmp_path), "--tta", "3"])).n_aug == 3
    # TTA's blend: fast.ai v2's beta by default, `none` for v0.7's plain mean.
    assert _config(parser.parse_args(["train", str(tmp_path)])).tta_beta == 0.25
    assert _config(parser.parse_args(["train", str(tmp_path), "--tta-beta", "0.5"])).tta_beta == 0.5
    assert _config(parser.parse_args(["train", str(tmp_path), "--tta-beta", "none"])).tta_beta is None


def test_default_arch_and_its_own_image_size(tmp_path):
    # The default is Lite2 (the arch table in the README); without
    # --image-size each arch trains at the size it was trained at
    # (Google's EfficientNet-Lite: 224, 240, 260 px).
    parser = build_parser()
    config = _config(parser.parse_args(["train", str(tmp_path)]))
    assert (config.arch, config.image_size, config.n_aug) == ("efficientnet_lite2", 260, 0)
    for arch, size in (("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("resnet34", 224)):
        assert TrainConfig(arch=arch).image_size == size
    assert TrainConfig(arch="efficientnet_lite2", image_size=224).image_size == 224
    assert _config(parser.parse_args(["train", str(tmp_path), "--image-size", "none"])).image_size == 260
    with pytest.raises(SystemExit):
        parser.parse_args(["train", str(tmp_path), "--image-size", "0"])


def test_builtin_archs_are_the_registered_ones():
    from kertransfer.backbones import get_backbone
    from kertransfer.backbones import list_backbones

    def module(name):
        builder = get_backbone(name).builder
        return getattr(builder, "func", builder).__module__

    ours = {name for name in list_backbones() if module(name).startswith("kertransfer.")}
    assert ours == set(BUILTIN_ARCHS)


@pytest.fixture
def no_decode(monkeypatch):
    from kertransfer.data.cache import ImageStore

    def fail(*args):
        raise AssertionError("decoded an image before checking the flags")

    monkeypatch.setattr(ImageStore, "get", fail)


def test_settings_checked_together_fail_before_any_data_is_read(tmp_path, synthetic_folder, capsys, no_decode):
    argv = ["train", str(synthetic_folder), "--out", str(tmp_path / "run"), "--batch-size", "16", "--max-images", "8"]
    assert main(argv) == 2
    assert "max_images=8 (--max-images) leaves fewer than two batches of batch_size=16" in capsys.readouterr().err
    argv = ["train", str(synthetic_folder), "--out", str(tmp_path / "run"), "--arch", "resnet9000"]
    assert main(argv) == 2
    assert "Unknown backbone arch='resnet9000'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="TrainConfig lr must be a number > 0. Received lr=-1"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="TrainConfig cycle_mult must be an integer >= 1"):
        TrainConfig(cycle_mult=0)


def test_a_failed_run_leaves_no_run_folder(tmp_path, capsys):
    from kertransfer.train import train

    (tmp_path / "data" / "valid" / "a").mkdir(parents=True)  # no train/ folder
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "No training folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(FileNotFoundError, match="No training folder"):
        train(tmp_path / "data", tmp_path / "run2", TrainConfig(arch="tiny_cnn"), verbose=0)
    assert not (tmp_path / "run2").exists()
    # A folder that was there before is the user's: it stays.
    (tmp_path / "mine").mkdir()
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "mine"), "--quiet"]) == 2
    assert (tmp_path / "mine").is_dir()


@pytest.mark.slow
def test_cli_smoke_run_with_given_lr_and_cycles(tmp_path, capsys):
    """`--max-images`, `--lr`, `--cycle-len`, `--cycle-mult` and `--n-aug` in a whole tiny run."""
    data = write_synthetic_images(
        tmp_path / "data", {"train/ants": 30, "train/bees": 10, "valid/ants": 12, "valid/bees": 12}
    )
    run = tmp_path / "run"
    argv = [
        "train", str(data), "--out", str(run), "--arch", "tiny_cnn", "--image-size", "32",
        "--weights", "none", "--batch-size", "8", "--max-images", "16", "--lr", "0.02",
        "--head-epochs", "1", "--aug-epochs", "0", "--unfrozen-cycles", "2", "--cycle-len", "1",
        "--cycle-mult", "1", "--n-aug", "1", "--group-ratio", "4", "--seed", "0", "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # --quiet hides the progress bars, not what the run tells.
    assert "[kertransfer] 16 train / 16 valid images" in out and "given lr=0.02" in out
    metrics = json.loads((run / "metrics.json").read_text())
    # At most 16 per split, spread over the classes: 8 of the 30 ants, 8 of the 10 bees.
    assert list(metrics["dataset"]["train_counts"].values()) == [8, 8]
    assert list(metrics["dataset"]["valid_counts"].values()) == [8, 8]
    # --lr: no lr_find; the unfrozen groups at lr / 4**k.
    assert metrics["lrs"]["head_precomputed"] == [0.02]
    assert metrics["lrs"]["unfrozen"] == pytest.approx([0.02 / 16, 0.02 / 4, 0.02])
    assert "lr_find" not in metrics["stage_seconds"] and not (run / "lr_find.png").exists()
    with open(run / "history.csv") as f:
        stages = [row["stage"] for row in csv.DictReader(f)]
    # 2 cycles of 1 epoch, cycle_mult 1: 2 unfrozen epochs.
    assert stages == ["head_precomputed", "unfrozen", "unfrozen"]
