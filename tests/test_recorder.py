"""The plots of what fits record: data first, plot second, on the axes given."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from kertransfer.recorder import FitRecord
from kertransfer.recorder import plot_history
from kertransfer.recorder import plot_schedules

pytestmark = pytest.mark.one_backend  # matplotlib and numpy only


def test_plot_schedules_and_history_draw_on_the_axes_given():
    head = FitRecord(np.full((4, 1), 0.01), ["head"], [1.0] * 4, 2, stage="head")
    unfrozen = FitRecord([[1e-4, 1e-3, 1e-2]] * 3, ["group0", "group1", "head"], [0.5] * 3, 3, stage="unfrozen")
    ax = Figure().subplots()
    assert plot_schedules([head, unfrozen], ax=ax) is ax
    lines = {(line.get_label(), tuple(line.get_xdata())): line.get_ydata() for line in ax.get_lines()}
    np.testing.assert_allclose(lines[("head", (0, 1, 2, 3))], 0.01)
    np.testing.assert_allclose(lines[("group0", (4, 5, 6))], 1e-4)  # after the first stage's 4 batches
    history = [
        {"epoch": 1, "stage": "head", "loss": 0.9, "val_loss": 0.8, "val_accuracy": 0.6},
        {"epoch": 2, "stage": "unfrozen", "loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.7},
    ]
    ax = Figure().subplots()
    assert plot_history(history, ax=ax) is ax
    train, valid = ax.get_lines()[:2]
    np.testing.assert_allclose(train.get_ydata(), [0.9, 0.5])
    np.testing.assert_allclose(valid.get_ydata(), [0.8, 0.6])
