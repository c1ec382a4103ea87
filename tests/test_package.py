"""The package surface: lazy public names, a CLI that answers without Keras."""

import ast
import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

import kertransfer

pytestmark = pytest.mark.one_backend


def test_import_and_help_do_not_import_keras_or_a_backend():
    # `kertransfer --help` took 18 s when the package imported Keras (and so
    # TensorFlow) eagerly; the names are now imported on first use.
    code = (
        "import sys, kertransfer, kertransfer.cli\n"
        "try:\n"
        "    kertransfer.cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: kertransfer" in out and "--version" in out
    assert "HEAVY []" in out


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["predict", "--help"]])
def test_python_m_kertransfer_answers_without_a_backend(argv):
    # `python -m kertransfer ...` as a user types it; the wrapper then lists
    # the heavy modules the run imported.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['kertransfer', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('kertransfer', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "heavy = sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    if argv == ["--version"]:
        assert out.startswith(f"kertransfer {kertransfer.__version__}")
    else:
        assert "usage: kertransfer" in out
    if argv == ["train", "--help"]:
        assert "efficientnet_lite0," in out and "--n-aug N_AUG, --tta N_AUG" in out


def test_version_flag(capsys):
    from kertransfer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kertransfer {kertransfer.__version__}"


@pytest.mark.parametrize("name", kertransfer.__all__)
def test_every_public_name_is_the_object_of_its_module(name):
    value = getattr(kertransfer, name)
    module = importlib.import_module(kertransfer._EXPORTS[name])
    assert value is (module if name == "backbones" else getattr(module, name))
    assert name in dir(kertransfer)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'ConvLearnr'"):
        kertransfer.ConvLearnr  # noqa: B018


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root):
    """`file:line: statement` for each import of a private name or module.

    Any import statement of a `.py` file under `root` (lazy ones inside
    functions too) that names a module path with a private part
    (`pkg._mod`) or imports a private name (`from pkg.mod import _name`).
    Dunder names (`__version__`, `__main__`) are public.
    """
    found = []
    for path in sorted(pathlib.Path(root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                modules, names = [alias.name for alias in node.names], []
            else:
                continue
            parts = [part for module in modules for part in module.split(".")]
            if any(_is_private(part) for part in parts + names):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_private_import_check_finds_private_names_and_modules(tmp_path):
    (tmp_path / "a.py").write_text(
        "from kertransfer import __version__\n"  # dunder: public
        "from kertransfer.cli import main\n"
        "def f():\n"
        "    from kertransfer.export.common import _hidden\n"
    )
    (tmp_path / "b.py").write_text("import kertransfer.callbacks._optim\nfrom ._x import y\n")
    found = private_imports(tmp_path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "from kertransfer.export.common import _hidden",
        "import kertransfer.callbacks._optim",
        "from ._x import y",
    ]
    assert found[0].startswith(f"{tmp_path / 'a.py'}:4")


def test_no_module_imports_another_modules_private_names():
    # A name another module needs is public, documented in its one home
    # (issue 18); `make lint` runs this check.
    found = private_imports(pathlib.Path(kertransfer.__file__).parent)
    assert not found, "Private names imported across modules:\n" + "\n".join(found)


_SEED_AND_SAVE = """
import json, random, sys
import keras
import numpy as np
from kertransfer.no_tensorflow import set_seed
from kertransfer.portable import portable_model
from kertransfer.portable import save_portable

def draws(seed_fn, seed):
    seed_fn(seed)
    dropout = keras.layers.Dropout(0.5)  # its SeedGenerator seeds from Keras's global seed
    mask = keras.ops.convert_to_numpy(dropout(keras.ops.ones((64,)), training=True))
    return {
        "python": random.random(), "numpy": float(np.random.rand()),
        "keras": keras.ops.convert_to_numpy(keras.random.uniform((4,))).tolist(),
        "dropout": (mask > 0).tolist(),
    }

ours = draws(set_seed, 3)
inputs = keras.Input((8, 8, 3))
model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs)))
portable_model(model)  # called alone too (its layers' get_config)
save_portable(model, sys.argv[1])
after_ours = "tensorflow" in sys.modules
keras_draws = draws(keras.utils.set_random_seed, 3)  # Keras's own: imports TensorFlow
print(json.dumps({"ours": ours, "keras": keras_draws, "tf_after_ours": after_ours,
                  "tf_after_keras": "tensorflow" in sys.modules,
                  "reloaded": keras.saving.load_model(sys.argv[1]).count_params() == model.count_params()}))
"""


def test_seeding_and_saving_do_not_import_tensorflow_under_jax(tmp_path):
    # Keras's set_random_seed and Model.save import TensorFlow under every
    # backend (~10 s of CPU per process). kertransfer's set_seed,
    # portable_model and save_portable do not under JAX, set_seed draws
    # exactly what Keras's seeding draws (Python, NumPy, keras.random, a
    # Dropout mask), and Keras is left as it was: its own set_random_seed
    # still imports TensorFlow afterwards.
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _SEED_AND_SAVE, str(tmp_path / "m.keras")],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["tf_after_ours"] is False
    assert report["tf_after_keras"] is True
    assert report["ours"] == report["keras"]
    assert 0 < sum(report["ours"]["dropout"]) < 64
    assert report["reloaded"]
