"""The plots of what fits record: data first, plot second, on the axes given."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from kertransfer.recorder import FitRecord
from kertransfer.recorder import plot_schedules

pytestmark = pytest.mark.one_backend  # matplotlib and numpy only


def test_plot_schedules_draws_on_the_axes_given():
    head = FitRecord(np.full((4, 1), 0.01), ["head"], [1.0] * 4, 2, stage="head")
    unfrozen = FitRecord([[1e-4, 1e-3, 1e-2]] * 3, ["group0", "group1", "head"], [0.5] * 3, 3, stage="unfrozen")
    ax = Figure().subplots()
    assert plot_schedules([head, unfrozen], ax=ax) is ax
    lines = {(line.get_label(), tuple(line.get_xdata())): line.get_ydata() for line in ax.get_lines()}
    np.testing.assert_allclose(lines[("head", (0, 1, 2, 3))], 0.01)
    np.testing.assert_allclose(lines[("group0", (4, 5, 6))], 1e-4)  # after the first stage's 4 batches

