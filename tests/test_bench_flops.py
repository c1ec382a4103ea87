"""`benchmarks/bench_backbones.py --flops`: the FLOPs counted from the layers."""

import importlib.util
import pathlib

import keras
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backbones.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_backbones", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resnet50_macs(size=224, stride_in_3x3=False):
    """ResNet-50 (He et al. 2016, Table 1) multiply-adds, written out.

    7x7/2 stem of 64, a 3x3/2 max pool, then stages of (width, blocks)
    (64, 3), (128, 4), (256, 6), (512, 3), each block 1x1 (w) -> 3x3 (w)
    -> 1x1 (4w), a stage's first block with a 1x1 projection shortcut. In
    v1 (Keras's `ResNet50`) a stage's first block strides in its first 1x1
    convolution; in v1.5 (torchvision's) in its 3x3, so that 1x1 runs at
    the stage's input size.
    """
    side = size // 2
    macs = side * side * 7 * 7 * 3 * 64
    side //= 2
    channels = 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        first_1x1 = side * side * channels * width if stride_in_3x3 else None
        side //= 1 if stage == 0 else 2
        area = side * side
        # First block: from `channels` in, with the projection shortcut.
        macs += first_1x1 or area * channels * width
        macs += area * (9 * width * width + width * 4 * width + channels * 4 * width)
        macs += (blocks - 1) * area * (4 * width * width + 9 * width * width + width * 4 * width)
        channels = 4 * width
    return macs


@pytest.mark.one_backend
def test_forward_flops_of_resnet50_v1_is_the_closed_form():
    flops = _bench().forward_flops(
        keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000)
    )
    want = _resnet50_macs(224) + 2048 * 1000  # and the classifier
    assert want == 3_857_973_248  # the paper's "3.8 x 10^9 FLOPs" (multiply-adds)
    assert flops == 2 * want


@pytest.mark.one_backend
def test_forward_flops_of_torchvision_resnet50_is_the_closed_form():
    from kertransfer.backbones.registry import build_backbone

    bench = _bench()  # registers the backbones
    body = build_backbone("tv_resnet50", weights=None, input_shape=(224, 224, 3))
    want = _resnet50_macs(224, stride_in_3x3=True)
    # torchvision's table: 4.09 GFLOPS (multiply-adds, with its 2048 x 1000 classifier).
    assert want + 2048 * 1000 == 4_089_184_256
    assert bench.forward_flops(body) == 2 * want


@pytest.mark.one_backend
def test_forward_flops_counts_grouped_depthwise_separable_and_dense_layers():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", groups=2)(inputs)  # 4x4 out
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)  # 12 channels
    x = keras.layers.SeparableConv2D(5, 3, padding="valid")(x)  # 2x2 out
    x = keras.layers.Dense(7)(x)  # per position
    model = keras.Model(inputs, x)
    want = (
        16 * 3 * 3 * 2 * 6  # 4x4 positions, each a 3x3 window of 4/2 channels, 6 filters
        + 16 * 3 * 3 * 6 * 2  # 4x4 positions, 6 channels, 2 outputs each
        + 4 * (3 * 3 * 12 + 12 * 5)  # 2x2 positions: depthwise, then pointwise
        + 4 * 5 * 7  # 2x2 positions, 5 -> 7
    )
    assert _bench().forward_flops(model) == 2 * want


@pytest.mark.one_backend
def test_forward_flops_needs_fixed_spatial_dimensions():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="fixed input_shape"):
        _bench().forward_flops(model)
