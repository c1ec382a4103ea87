"""Each recipe's `--smoke` run on the offline sample photos (issue 4)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["planet", "dog_breeds", "dogscats"])
def test_recipe_smoke(recipe):
    env = dict(os.environ)
    env.setdefault("KERTRANSFER_DATA", str(ROOT.parent / "shared" / "data"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), "--smoke"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {"planet": "TTA F2", "dog_breeds": "TTA at 96 px: accuracy", "dogscats": "TTA accuracy"}
    assert expected[recipe] in result.stdout
