"""Figures that show once in a notebook.

Every plot of kertransfer (`learn.sched.plot()`, `interp.plot_top_losses()`,
`data.plot_augmented()`, ...) draws on a figure made by `subplots` here
and returns its axes or the figure, so that scripts can save, change or
close it. In Jupyter such a return value used to show the plot twice: once
as the cell's value (the figure's PNG) and once more by the inline backend,
which shows every figure still open when the cell ends; a returned axes
showed as a `<Axes: ...>` line besides. The `NotebookFigure` and
`NotebookAxes` made here show as their figure's PNG, once:

- inline backend (`%matplotlib inline`, Jupyter's default): the figure is
  shown when the cell's value is displayed, after the figures of this kind
  opened before it (so plots keep their order), and closed, so the backend
  does not show it again when the cell ends;
- another interactive backend (a window, ipympl's widget) shows the figure
  itself: the cell's value shows nothing;
- a backend that shows nothing (Agg), or a figure already closed: the PNG.

In scripts nothing changes: they are matplotlib's `Figure` and `Axes`.
Nothing here switches the matplotlib backend. Importing this module imports
matplotlib (not pyplot); the plot methods import it when they draw.
"""

import io
import sys

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["NotebookAxes", "NotebookFigure", "axes_or_new", "show_once", "subplots"]


def _open_figures():
    """The figures open in pyplot, in the order the backend shows them."""
    if sys.modules.get("matplotlib.pyplot") is None:
        return []
    # pyplot's registry of open figures, in the order backends show them
    # (matplotlib_inline reads it the same way); `backend_bases` exports it
    # for the backends. pyplot itself has no accessor that keeps the order.
    from matplotlib.backend_bases import Gcf

    return [manager.canvas.figure for manager in Gcf.get_all_fig_managers()]


def _is_inline_backend():
    backend = str(matplotlib.get_backend())
    return backend == "inline" or "matplotlib_inline" in backend


def _describe(fig):
    """`figure 640x480 px: <title>`, what a terminal shows instead of the PNG."""
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    title = fig.get_suptitle() or next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
    return f"figure {width}x{height} px" + (f": {title}" if title else "")


def _publish(fig):
    """Displays `fig` as a PNG (its description where images do not show: a terminal)."""
    from IPython.display import display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    display({"image/png": buffer.getvalue(), "text/plain": _describe(fig)}, raw=True)


def show_once(fig):
    """Displays `fig` in IPython so that it shows once (see the module).

    `NotebookFigure` and `NotebookAxes` call it when IPython displays them
    (a cell's value, `display(...)`, or the inline backend at a cell's end).
    """
    from matplotlib.backend_bases import FigureManagerBase

    opened = _open_figures()
    if fig in opened and _is_inline_backend():
        import matplotlib.pyplot as plt

        for other in opened[: opened.index(fig) + 1]:
            if isinstance(other, NotebookFigure):
                _publish(other)
                plt.close(other)
    elif fig in opened and type(fig.canvas.manager) is not FigureManagerBase:
        pass  # a window or a widget (ipympl) shows it
    else:  # closed, or open under a backend that shows nothing (Agg)
        _publish(fig)


class NotebookFigure(Figure):
    """A matplotlib `Figure` that a notebook shows once (see the module)."""

    def _ipython_display_(self):
        show_once(self)


class NotebookAxes(Axes):
    """A matplotlib `Axes` that a notebook shows once, as its figure (see the module)."""

    def _ipython_display_(self):
        show_once(self.figure)


def subplots(nrows=1, ncols=1, figsize=None, squeeze=True):
    """`plt.subplots` with a `NotebookFigure` of `NotebookAxes`.

    Args:
        nrows, ncols: grid of axes.
        figsize: `(width, height)` in inches, or None for matplotlib's default.
        squeeze: as `plt.subplots` (a single axes, not an array, for 1x1).

    Returns:
        `(figure, axes)`, as `plt.subplots`.
    """
    import matplotlib.pyplot as plt

    return plt.subplots(
        nrows, ncols, figsize=figsize, squeeze=squeeze, FigureClass=NotebookFigure,
        subplot_kw={"axes_class": NotebookAxes},
    )


def axes_or_new(ax=None, figsize=None):
    """`ax`, or the axes of a new `NotebookFigure` of size `figsize`."""
    if ax is not None:
        return ax
    return subplots(figsize=figsize)[1]
