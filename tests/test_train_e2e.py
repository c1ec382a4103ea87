"""The main job end to end on real photos (`kertransfer train`)."""

import csv
import json
import os

import pytest

from kertransfer.cli import main
from kertransfer.train import TrainConfig
from kertransfer.train import train


@pytest.mark.slow
def test_main_job_on_hymenoptera(hymenoptera, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(image_size=128, batch_size=32, head_epochs=1, aug_epochs=1, unfrozen_cycles=1, n_aug=2)
    metrics = train(hymenoptera, out, config, verbose=0)
    for f in ["model.keras", "history.csv", "metrics.json", "predictions.npz", "lr_find.png", "lr_schedule.png", "loss.png", "report.html"]:
        assert (out / f).is_file(), f
    saved = json.loads((out / "metrics.json").read_text())
    for key in ["valid_accuracy", "tta_accuracy", "valid_loss", "classes", "arch", "image_size", "lrs", "stage_seconds", "wall_seconds"]:
        assert key in saved
    # Two balanced classes: chance is ~0.5; a working recipe is far above it.
    history = (out / "history.csv").read_text()
    assert saved["valid_accuracy"] >= 0.85 and saved["tta_accuracy"] >= 0.85, (saved["lrs"], history)
    with open(out / "history.csv") as f:
        stages = [row["stage"] for row in csv.DictReader(f)]
    assert stages == ["head_precomputed", "head_augmented", "unfrozen"]
    lrs = saved["lrs"]["unfrozen"]
    assert lrs[0] < lrs[1] < lrs[2]  # earlier groups at lower LRs
    assert metrics["classes"] == ["ants", "bees"]


def test_cli_reports_bad_data_clearly(tmp_path, capsys):
    (tmp_path / "valid" / "a").mkdir(parents=True)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No training folder" in err and str(tmp_path / "train") in err


def test_cli_unknown_arch(tmp_path, hymenoptera, capsys):
    assert main(["train", str(hymenoptera), "--arch", "resnet9000", "--out", str(tmp_path), "--quiet"]) == 2
    assert "Unknown backbone arch='resnet9000'" in capsys.readouterr().err
