"""Runs notebook cells in a real Jupyter kernel (nbclient, ipykernel) for the tests.

The kernel is the venv's `python3` kernel (`python -m ipykernel_launcher`,
jupyter_client starting it with this interpreter), with this checkout
first on `PYTHONPATH` (the tests run the checkout's kertransfer) and the
rest of the environment as the tests have it (KERAS_BACKEND, KERAS_HOME,
KERTRANSFER_DATA, thread counts), except `MPLBACKEND`: `make test` sets
Agg, and in a notebook matplotlib uses Jupyter's inline backend.
"""

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]

# What a figure, axes or Keras History shows when a notebook prints its
# repr instead of the plot or the numbers.
OBJECT_REPRS = ("<Axes", "<Figure", "<History", "<matplotlib")


def kernel_env(**extra):
    """The kernel's environment: the tests', the checkout first on PYTHONPATH, no MPLBACKEND."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def execute(notebook, cwd, env=None, timeout=600):
    """Executes `notebook` (an `nbformat` notebook) in place in a new kernel.

    Raises:
        nbclient.exceptions.CellExecutionError: on the first cell that raises.
    """
    from nbclient import NotebookClient

    client = NotebookClient(
        notebook, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env or kernel_env())
    return notebook


def code_cells(sources):
    """A new notebook of code cells with `sources`."""
    import nbformat

    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def images(cell):
    """The PNG images a cell's outputs show, in order."""
    return [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def texts(cell):
    """Every text of a cell's outputs: streams, errors, and each data's non-image forms."""
    found = []
    for output in cell.get("outputs", []):
        found += [output.get("text", ""), *output.get("traceback", [])]
        found += [v for k, v in output.get("data", {}).items() if not k.startswith("image/")]
    return [t if isinstance(t, str) else "".join(t) for t in found]


def object_reprs(cell):
    """The reprs of figures, axes or histories shown in a cell's outputs (see `OBJECT_REPRS`)."""
    pattern = re.compile("|".join(re.escape(r) for r in OBJECT_REPRS))
    return [m.group(0) for text in texts(cell) for m in pattern.finditer(text)]
