"""fast.ai's classifier head: concat pooling -> [BN, Dropout, Dense]* -> output."""

import keras
import numpy as np

__all__ = ["head_layers", "resolve_head_args"]


def resolve_head_args(dropout=None, hidden_units=None, ps=None, xtra_fc=None):
    """The head's `(dropout, hidden_units)` from Keras names or fast.ai aliases.

    `ps` is fast.ai v0.7's name for `dropout`, `xtra_fc` for
    `hidden_units`; either spelling works, not both.

    Returns:
        `(dropout, hidden_units)`, with the defaults `0.5` and `(512,)`.

    Raises:
        ValueError: if a value is given under both of its names.
    """
    for name, value, alias, alias_value in (
        ("dropout", dropout, "ps", ps), ("hidden_units", hidden_units, "xtra_fc", xtra_fc),
    ):
        if value is not None and alias_value is not None:
            raise ValueError(
                f"{alias} is fast.ai's name for {name}: pass one of them. Received "
                f"{name}={value!r}, {alias}={alias_value!r}."
            )
    dropout = ps if dropout is None else dropout
    hidden_units = xtra_fc if hidden_units is None else hidden_units
    return (0.5 if dropout is None else dropout), ((512,) if hidden_units is None else hidden_units)


def head_layers(num_classes, dropout=0.5, hidden_units=(512,), activation="softmax"):
    """The layers of fast.ai's head, to apply after concat pooling.

    fast.ai v0.7 `ConvnetBuilder`: for each width in `hidden_units`,
    `BatchNormalization -> Dropout -> Dense(width, relu)`; then
    `BatchNormalization -> Dropout -> Dense(num_classes, activation)`.
    Layers are named `head_bn<i>`, `head_drop<i>`, `head_fc<i>` and
    `head_out` (stable handles for layer groups and exports).

    Args:
        num_classes: output units.
        dropout: rate of the last dropout layer (the earlier ones get half
            of it), or a list with one rate per dense layer
            (`len(hidden_units) + 1`). fast.ai's `ps`.
        hidden_units: widths of the hidden dense layers. fast.ai's `xtra_fc`.
        activation: of the output: `"softmax"`, or `"sigmoid"` for
            multi-label.

    Returns:
        list of Keras layers.

    Raises:
        ValueError: if a list `dropout` has the wrong length.

    Example:

    ```python
    x = AdaptiveConcatPooling2D()(backbone(inputs))
    for layer in head_layers(2, dropout=0.5, hidden_units=(512,)):
        x = layer(x)
    ```
    """
    if np.ndim(dropout) == 0:
        dropout = [dropout / 2] * len(hidden_units) + [dropout]
    if len(dropout) != len(hidden_units) + 1:
        raise ValueError(
            f"dropout needs one rate per dense layer ({len(hidden_units) + 1}: one per hidden "
            f"unit count and the output). Received dropout={dropout}."
        )
    layers = []
    for i, units in enumerate(hidden_units):
        layers += [
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"head_bn{i}"),
            keras.layers.Dropout(dropout[i], name=f"head_drop{i}"),
            keras.layers.Dense(units, activation="relu", name=f"head_fc{i}"),
        ]
    n = len(hidden_units)
    layers += [
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"head_bn{n}"),
        keras.layers.Dropout(dropout[-1], name=f"head_drop{n}"),
        keras.layers.Dense(num_classes, activation=activation, name="head_out"),
    ]
    return layers
