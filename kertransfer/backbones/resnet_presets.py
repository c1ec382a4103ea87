"""ResNet/ResNeXt presets: plain data, read by `resnet.py` and the registry.

Each preset: `config`, the `build_resnet` arguments of the architecture;
`weights`, torchvision's ImageNet file (a weights source, see
`kertransfer.backbones.weights`; torchvision publishes the first 8 hex
digits of each file's sha256 in its name, and those are checked); the
preprocessing (torchvision's ImageNet mean and std, in pixel units, RGB);
torchvision's evaluation framing (resize 256, center crop 224:
`crop_pct=0.875`, native size 224); and the layer groups: fast.ai's split
into the stem with `layer1`-`layer2` (to stride 8) and `layer3`-`layer4`
(strides 16 and 32); the learner adds the head as the last group.
"""

__all__ = ["RESNET_PRESETS", "TORCHVISION_MEAN", "TORCHVISION_STD", "TORCHVISION_URL"]

TORCHVISION_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
TORCHVISION_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
TORCHVISION_URL = "https://download.pytorch.org/models/"
LAYER_GROUPS = {
    "group0": r"preprocess|conv1|bn1|layer[12]_.*",
    "group1": r"layer[34]_.*",
}


def _preset(config, weights_file):
    return {
        "config": config,
        "weights": {
            "file": weights_file,
            "base_url": TORCHVISION_URL,
            "sha256": weights_file.rsplit(".", 1)[0].rsplit("-", 1)[1],
        },
        "preprocessing": {"mean": TORCHVISION_MEAN, "std": TORCHVISION_STD},
        "crop_pct": 0.875,
        "image_size": 224,
        "layer_groups": LAYER_GROUPS,
    }


RESNET_PRESETS = {
    "resnet18": _preset(
        {"block": "basic", "stage_depths": (2, 2, 2, 2)}, "resnet18-f37072fd.pth"
    ),
    "resnet34": _preset(
        {"block": "basic", "stage_depths": (3, 4, 6, 3)}, "resnet34-b627a593.pth"
    ),
    "tv_resnet50": _preset(
        {"block": "bottleneck", "stage_depths": (3, 4, 6, 3)}, "resnet50-0676ba61.pth"
    ),
    "resnext50_32x4d": _preset(
        {"block": "bottleneck", "stage_depths": (3, 4, 6, 3), "cardinality": 32, "base_width": 4},
        "resnext50_32x4d-7cdf4587.pth",
    ),
    "resnext101_32x8d": _preset(
        {"block": "bottleneck", "stage_depths": (3, 4, 23, 3), "cardinality": 32, "base_width": 8},
        "resnext101_32x8d-8ba56ff5.pth",
    ),
}
