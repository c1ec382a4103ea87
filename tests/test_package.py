"""The package surface: lazy public names, a CLI that answers without Keras."""

import importlib
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
