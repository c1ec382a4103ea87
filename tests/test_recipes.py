"""Each recipe's `--smoke` run on the offline sample photos (issue 4)."""

import os
import pathlib
import runpy
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["planet", "dog_breeds", "dogscats"])
def test_recipe_smoke(recipe, monkeypatch, capsys):
    # The script runs as `python recipes/<recipe>.py --smoke` would, in this
    # process: a subprocess would import TensorFlow and Keras a second time
    # (about 7 s of CPU per recipe).
    if "KERTRANSFER_DATA" not in os.environ:
        monkeypatch.setenv("KERTRANSFER_DATA", str(ROOT.parent / "shared" / "data"))
    script = ROOT / "recipes" / f"{recipe}.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--smoke"])
    runpy.run_path(str(script), run_name="__main__")
    expected = {"planet": "TTA F2", "dog_breeds": "TTA at 96 px: accuracy", "dogscats": "TTA accuracy"}
    assert expected[recipe] in capsys.readouterr().out
