"""kertransfer's plots show once in a notebook (kertransfer.figures), in a real kernel.

Jupyter's inline backend shows every figure still open when a cell ends,
and the cell's value is shown too: a plot method returning its figure
showed it twice, one returning axes printed `<Axes: ...>`. These cells run
in an ipykernel, as a notebook does; the plain-matplotlib cell is the
reference: the same count that finds one image per kertransfer plot finds
its returned figure twice.
"""

import base64
import io

import pytest
from notebook_kernel import code_cells
from notebook_kernel import execute
from notebook_kernel import images
from notebook_kernel import object_reprs
from notebook_kernel import texts
from PIL import Image

pytestmark = pytest.mark.one_backend  # matplotlib and IPython; no Keras in the kernel

SETUP = """
%matplotlib inline
import numpy as np
import matplotlib
from kertransfer.interpret import ClassificationInterpretation
from kertransfer.recorder import LRFindResult
finder = LRFindResult(np.geomspace(1e-5, 1, 30), np.linspace(1, 0.2, 30), np.linspace(1, 0.2, 30), 16)
interp = ClassificationInterpretation(np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), [0, 1, 1], ["cat", "dog"])
"""

CELLS = {
    # name: (source, images shown); only the figures of matplotlib's own
    # `plt.subplots` show as `<Figure size ...>` (the inline backend's text
    # beside its image).
    "axes value": ("finder.plot()", 1),
    "two plots, the last the value": (
        "interp.plot_confusion_matrix()\ninterp.plot_confusion_matrix(normalize=True)", 2,
    ),
    "figure value": ("interp.plot_images([], title='nothing')", 1),
    "assigned, not the value": ("fig = interp.plot_confusion_matrix().figure", 1),
    "a figure of an earlier cell": ("fig", 1),
    "drawn on the caller's axes": (
        "import matplotlib.pyplot as plt\n_, ax = plt.subplots()\nfinder.plot_lr(ax=ax);", 1,
    ),
    "plain matplotlib returning its figure (reference)": (
        "fig, ax = plt.subplots()\nax.plot([0, 1])\nfig", 2,
    ),
    "Agg backend: nothing shows figures": ("plt.switch_backend('agg')\nfinder.plot_loss()", 1),
}


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    notebook = code_cells([SETUP] + [source for source, _ in CELLS.values()])
    execute(notebook, tmp_path_factory.mktemp("figures"), timeout=300)
    return dict(zip(CELLS, notebook.cells[1:]))


@pytest.mark.parametrize("name", list(CELLS))
def test_each_plot_shows_once(cells, name):
    cell = cells[name]
    assert len(images(cell)) == CELLS[name][1], texts(cell)
    for png in images(cell):
        assert Image.open(io.BytesIO(base64.b64decode(png))).size[0] > 100
    if "reference" in name:
        # The double display fixed in kertransfer: the same image twice, and a <Figure ...> text.
        assert images(cell)[0] == images(cell)[1]
        assert "<Figure" in object_reprs(cell)
    else:
        assert object_reprs(cell) == (["<Figure"] if "caller's axes" in name else [])


def test_plots_show_in_the_order_they_are_drawn(cells):
    descriptions = [
        o["data"]["text/plain"] for o in cells["two plots, the last the value"].outputs if "image/png" in o["data"]
    ]
    assert [d.split(": ", 1)[1] for d in descriptions] == ["Confusion matrix", "Confusion matrix (row-normalized)"]
