"""`keras.applications` presets: plain data, read by `keras_apps.py`.

Each preset: the application (`keras.applications.<application>`, with
`app_kwargs`); its own `preprocess_input` in pixel units, as
`ImagePreprocessing` arguments; Keras' ImageNet files, `weights` (with the
classifier) and `weights_notop`, as weights sources (see
`kertransfer.backbones.weights`; the md5 hashes Keras publishes, copied
from keras/src/applications/*.py, Keras 3.15); the ImageNet framing
(224 px, `crop_pct=0.875`); and the layer groups, matched against whole
layer names: fast.ai's split into early body (to stride 8) and late body
(strides 16 and 32); the learner adds the head as the last group.
"""

from kertransfer.backbones.resnet_presets import TORCHVISION_MEAN
from kertransfer.backbones.resnet_presets import TORCHVISION_STD

__all__ = [
    "CAFFE",
    "IDENTITY",
    "KERAS_APP_PRESETS",
    "MINUS_ONE_TO_ONE",
    "PREPROCESSING_MODES",
    "TORCH",
]

CAFFE = {
    "mean": (103.939, 116.779, 123.68),  # BGR order
    "std": (1.0, 1.0, 1.0),
    "channel_order": "bgr",
}
MINUS_ONE_TO_ONE = {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
TORCH = {"mean": TORCHVISION_MEAN, "std": TORCHVISION_STD}
# By the names of `keras.applications.imagenet_utils.preprocess_input(mode=)`
# ("caffe", "tf", "torch"), and "raw" for models that scale inside (their
# `preprocess_input` is the identity: EfficientNet, ConvNeXt, or
# MobileNetV3 with its own `Rescaling`).
PREPROCESSING_MODES = {"caffe": CAFFE, "tf": MINUS_ONE_TO_ONE, "torch": TORCH, "raw": IDENTITY}

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
_RESNET_GROUPS = {
    "group0": r"preprocess|(conv1|pool1|conv2|conv3)_.*",
    "group1": r"(conv4|conv5)_.*",
}
_MOBILENET_V2 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels"


def _preset(application, preprocessing, base_url, top, notop, layer_groups, **app_kwargs):
    """One preset; `top`, `notop`: `(file name, md5)` of Keras' two files."""
    return {
        "application": application,
        "app_kwargs": app_kwargs,
        "preprocessing": preprocessing,
        "weights": {"file": top[0], "base_url": base_url, "md5": top[1]},
        "weights_notop": {"file": notop[0], "base_url": base_url, "md5": notop[1]},
        "image_size": 224,
        "crop_pct": 0.875,
        "layer_groups": layer_groups,
    }


def _resnet(application, name, top_md5, notop_md5):
    stem = f"{name}_weights_tf_dim_ordering_tf_kernels"
    return _preset(
        application, CAFFE, _KERAS_URL + "resnet/",
        (f"{stem}.h5", top_md5), (f"{stem}_notop.h5", notop_md5), _RESNET_GROUPS,
    )


KERAS_APP_PRESETS = {
    "resnet50": _resnet(
        "ResNet50", "resnet50",
        "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "resnet101": _resnet(
        "ResNet101", "resnet101",
        "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21",
    ),
    "resnet152": _resnet(
        "ResNet152", "resnet152",
        "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c",
    ),
    # `{rows}`: Keras has one file per training size, and no hashes.
    "mobilenet_v2": _preset(
        "MobileNetV2", MINUS_ONE_TO_ONE, _KERAS_URL + "mobilenet_v2/",
        (_MOBILENET_V2 + "_1.0_{rows}.h5", None),
        (_MOBILENET_V2 + "_1.0_{rows}_no_top.h5", None),
        {
            "group0": r"preprocess|Conv1|bn_Conv1|expanded_conv_.*|block_[1-5]_.*",
            "group1": r"block_([6-9]|1[0-6])_.*|Conv_1|Conv_1_bn",
        },
    ),
    # Its own Rescaling is off: the scaling lives in `preprocess`.
    "mobilenet_v3_small": _preset(
        "MobileNetV3Small", MINUS_ONE_TO_ONE, _KERAS_URL + "mobilenet_v3/",
        ("weights_mobilenet_v3_small_224_1.0_float.h5", "8768d4c2e7dee89b9d02b2d03d65d862"),
        (
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            "d3e8ec802a04aa4fc771ee12a9a9b836",
        ),
        {
            # `expanded_conv_<not a digit>`: block 0's layers.
            "group0": r"preprocess|conv|conv_bn|expanded_conv_(\D.*|[12]_.*)",
            "group1": r"expanded_conv_([3-9]|10)_.*|conv_1|conv_1_bn",
        },
        include_preprocessing=False,
    ),
    "efficientnet_b0": _preset(
        "EfficientNetB0", IDENTITY, "https://storage.googleapis.com/keras-applications/",
        ("efficientnetb0.h5", "902e53a9f72be733fc0bcb005b3ebbac"),
        ("efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"),
        {
            "group0": r"preprocess|rescaling.*|normalization.*|stem_.*|block[1-3][a-z]_.*",
            "group1": r"block[4-7][a-z]_.*|top_.*",
        },
    ),
}
