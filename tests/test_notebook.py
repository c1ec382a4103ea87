"""recipes/lesson1.ipynb runs in a real Jupyter kernel, and reads as a notebook should (issue 21).

The notebook executes top to bottom with nbclient in an ipykernel
(`make test` runs it in the recipes pass, TensorFlow). Besides running
without error, every output is checked for what fast.ai users see when a
library gets notebooks wrong: `<Axes: ...>`, `<Figure ...>` or `<keras...History
object>` lines instead of plots and numbers, and plots shown twice. Each
plot call of a cell (`.plot(`, `.plot_lr(`, `.plot_confusion_matrix(`, ...)
must show exactly one image.
"""

import os
import re
import time

import nbformat
import pytest
from notebook_kernel import ROOT
from notebook_kernel import execute
from notebook_kernel import images
from notebook_kernel import kernel_env
from notebook_kernel import object_reprs
from notebook_kernel import texts

NOTEBOOK = ROOT / "recipes" / "lesson1.ipynb"
PLOT_CALL = re.compile(r"\.plot\w*\(")


@pytest.mark.one_backend  # reads the file
def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run in a kernel from a scratch folder (its report goes there), and the seconds it took."""
    cwd = tmp_path_factory.mktemp("lesson1")
    env = kernel_env(KERAS_BACKEND="tensorflow")
    env.setdefault("KERTRANSFER_DATA", str(ROOT.parent / "shared" / "data"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.monotonic()
    execute(notebook, cwd, env=env, timeout=600)
    return notebook, cwd, time.monotonic() - start


@pytest.mark.slow
def test_lesson1_notebook_runs_and_shows_each_plot_once(executed):
    notebook, cwd, seconds = executed
    print(f"lesson1.ipynb executed in {seconds:.1f} s")
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        assert object_reprs(cell) == [], (cell.source, texts(cell))
        assert len(images(cell)) == len(PLOT_CALL.findall(cell.source)), (cell.source, texts(cell))
    assert sum(len(images(cell)) for cell in code) == 10
    # What the cells ending with `data`, `learn`, `learn.fit(...)` and
    # `interp` show: their short forms, not object addresses.
    shown = "\n".join(text for cell in code for text in texts(cell))
    for expected in ("ImageClassifierData(path=", "ConvLearner(arch='efficientnet_lite0'",
                     "FitHistory(epochs=1, ", "FitHistory(epochs=3, ", "ClassificationInterpretation(",
                     "LRFindResult("):
        assert expected in shown, expected
    assert " object at 0x" not in shown
    assert os.path.isfile(cwd / "runs" / "lesson1_report.html")
