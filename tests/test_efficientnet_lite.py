"""EfficientNet-Lite0/1/2: exact ports of the packaged ImageNet weights."""

import math

import numpy as np
import pytest

from kertransfer.backbones import assign_layer_groups
from kertransfer.backbones import build_backbone
from kertransfer.backbones import efficientnet_lite0
from kertransfer.backbones import get_backbone
from kertransfer.backbones.efficientnet_lite_presets import LITE_PRESETS
from kertransfer.backbones.torch_weights import load_torch_state_dict
from kertransfer.backbones.weights import preset_file
from kertransfer.data import ImageClassifierData
from kertransfer.transforms import ImageTransforms

torch = pytest.importorskip("torch", reason="torch is part of the test environment (pip install torch==2.13.0)")

ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# The checkpoints' parameters, BN statistics excluded (Google: 4.7, 5.4, 6.1 M).
PARAMS = {"efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680, "efficientnet_lite2": 6_092_072}
# EfficientNet's stage strides (paper, table 1). A stage starts with the block
# that changes the channel count; only that block may have stride > 1.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
# Zero-shot top-1 of Lite0 on hymenoptera val at 224 px, measured 2026-12-03
# (TensorFlow): 126 of 153 photos (ants 57/70, bees 69/83).
LITE0_ZERO_SHOT = 126 / 153


def _packaged_checkpoint(arch):
    """The PyTorch checkpoint in the weights package of `arch`."""
    return preset_file(arch, LITE_PRESETS[arch]["weights"], "a .pth file")


def _torch_reference(state, x):
    """Independent functional PyTorch Lite logits (TF 'same' padding by hand).

    The blocks (count, kernels, channels, expansion) are read off the state
    dict's shapes; only the stage strides come from the paper.
    """
    F = torch.nn.functional
    sd = {k: torch.tensor(v) for k, v in state.items()}

    def same(x, k, s):
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0, 1e-3)

    def conv(x, p, s=1, groups=1):
        w = sd[p + ".weight"]
        return F.conv2d(same(x, w.shape[-1], s), w, stride=s, groups=groups)

    x = ((torch.tensor(x) - 127) / 128).permute(0, 3, 1, 2)
    x = F.relu6(bn(conv(x, "_conv_stem", 2), "_bn0"))
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stage = -1
    for i in range(n_blocks):
        p, inp = f"_blocks.{i}.", x
        changes_channels = sd[p + "_project_conv.weight"].shape[0] != x.shape[1]
        stage += changes_channels
        s = STAGE_STRIDES[stage] if changes_channels else 1
        if p + "_expand_conv.weight" in sd:
            x = F.relu6(bn(conv(x, p + "_expand_conv"), p + "_bn0"))
        x = F.relu6(bn(conv(x, p + "_depthwise_conv", s, groups=x.shape[1]), p + "_bn1"))
        x = bn(conv(x, p + "_project_conv"), p + "_bn2")
        if not changes_channels:
            x = x + inp
    assert stage == len(STAGE_STRIDES) - 1
    x = F.relu6(bn(conv(x, "_conv_head"), "_bn1")).mean((2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"]).numpy()


# Lite1 and Lite2 are Lite0's blocks (the same layers: 3x3 and 5x5
# depthwise, strides 1 and 2, odd sizes at 67 px) in other numbers and
# widths; the weights port is numpy. Lite0 runs on every backend, the three
# ports in the TensorFlow pass (under JAX Lite1 and Lite2 cost about 15 s).
@pytest.mark.parametrize(
    "arch, sizes",
    [
        ("efficientnet_lite0", (64, 67)),  # even and odd: TF "same" pads differ
        pytest.param("efficientnet_lite1", (64,), marks=pytest.mark.one_backend),
        pytest.param("efficientnet_lite2", (64,), marks=pytest.mark.one_backend),
    ],
)
def test_port_matches_pytorch_reference(arch, sizes):
    state = load_torch_state_dict(_packaged_checkpoint(arch))
    # One model for every size (built once: under JAX each new weight shape
    # compiles its initializer).
    model = get_backbone(arch).builder(
        weights="imagenet", input_shape=(None, None, 3), include_top=True, classifier_activation=None
    )
    for size in sizes:
        x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
        np.testing.assert_allclose(
            model.predict(x, verbose=0), _torch_reference(state, x), rtol=0, atol=1e-4, err_msg=f"{size} px"
        )
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == PARAMS[arch]


# Layer names and groups, and argument checks: backend-independent.
@pytest.mark.one_backend
@pytest.mark.parametrize(
    "arch, last_early, first_late",
    [
        ("efficientnet_lite0", "block7_project_bn", "block8_expand_conv"),
        ("efficientnet_lite1", "block10_project_bn", "block11_expand_conv"),
        ("efficientnet_lite2", "block10_project_bn", "block11_expand_conv"),
    ],
    ids=ARCHS,
)
def test_layer_groups_cover_the_body(arch, last_early, first_late):
    """Early body: stem and stages 0-3 (to stride 16); late: the rest."""
    model = build_backbone(arch, weights=None, input_shape=(32, 32, 3))
    early, late = assign_layer_groups(model, get_backbone(arch).layer_groups)
    assert early[0].name == "stem_conv" and early[-1].name == last_early
    assert late[0].name == first_late and late[-1].name == "head_bn"
    assert model.get_layer(last_early).output.shape[1] == 2  # 32 px / 16


@pytest.mark.one_backend
def test_native_image_sizes():
    assert [get_backbone(arch).default_image_size for arch in ARCHS] == [224, 240, 260]


@pytest.mark.one_backend
def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        efficientnet_lite0(weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="same EfficientNet-Lite variant"):
        efficientnet_lite0(weights=_packaged_checkpoint("efficientnet_lite1"), input_shape=(32, 32, 3))


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, min_accuracy",
    [("efficientnet_lite0", 0.80), ("efficientnet_lite1", LITE0_ZERO_SHOT), ("efficientnet_lite2", LITE0_ZERO_SHOT)],
    ids=ARCHS,
)
def test_zero_shot_imagenet_accuracy_on_real_photos(hymenoptera, arch, min_accuracy):
    """Each port at its native size, ImageNet 310 ant, 309 bee: Lite0 0.82, Lite1 0.88, Lite2 0.89."""
    size = get_backbone(arch).default_image_size
    data = ImageClassifierData.from_paths(
        hymenoptera, batch_size=32, tfms=(ImageTransforms(size, random_crop=True), ImageTransforms(size)),
        cache=None,  # streamed: only the validation photos are decoded
    )
    model = build_backbone(arch, weights="imagenet", input_shape=(size, size, 3), include_top=True)
    probs = model.predict(data.valid_batches(), verbose=0)
    pred, y = probs.argmax(1), data.valid_labels
    ants = (pred[y == 0] == 310).mean()
    bees = (pred[y == 1] == 309).mean()
    accuracy = (pred == np.where(y == 0, 310, 309)).mean()
    assert ants >= 0.80 and bees >= 0.80 and accuracy >= min_accuracy, (ants, bees, accuracy)
