"""kertransfer: the fast.ai transfer-learning workflow on Keras 3.

Works under the TensorFlow, JAX and torch Keras backends. TensorFlow is
imported only by `kertransfer.export` (and by Keras itself under its
TensorFlow backend). The public names below are imported on first use.
"""

import importlib

# Public name -> the module that defines it. Imported on first use (PEP 562),
# so that `import kertransfer` (and `kertransfer --help`) does not pay for
# Keras and its backend until a name is used.
_EXPORTS = {
    "backbones": "kertransfer.backbones",
    "balanced_accuracy": "kertransfer.balance",
    "balanced_class_weights": "kertransfer.balance",
    "SGDR": "kertransfer.callbacks",
    "KeepBestWeights": "kertransfer.callbacks",
    "LRFinder": "kertransfer.callbacks",
    "OneCycle": "kertransfer.callbacks",
    "TensorBoardLogger": "kertransfer.callbacks",
    "TrainConfig": "kertransfer.config",
    "ImageClassifierData": "kertransfer.data",
    "untar_data": "kertransfer.datasets",
    "SamplesFBetaScore": "kertransfer.fbeta_score",
    "group_optimizer": "kertransfer.groups",
    "ClassificationInterpretation": "kertransfer.interpret",
    "MultiLabelInterpretation": "kertransfer.interpret",
    "ConvLearner": "kertransfer.learner",
    "fbeta": "kertransfer.metrics",
    "opt_th": "kertransfer.metrics",
    "predict_images": "kertransfer.predict",
    "register_keras_backbone": "kertransfer.backbones",
    "write_report": "kertransfer.report",
    "set_seed": "kertransfer.no_tensorflow",
    "sgdr_total_epochs": "kertransfer.schedules",
    "tfms_from_model": "kertransfer.transforms",
    "transforms_side_on": "kertransfer.transforms",
    "transforms_top_down": "kertransfer.transforms",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kertransfer' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module == f"kertransfer.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "backbones",
    "ClassificationInterpretation",
    "ConvLearner",
    "ImageClassifierData",
    "KeepBestWeights",
    "LRFinder",
    "MultiLabelInterpretation",
    "OneCycle",
    "SamplesFBetaScore",
    "SGDR",
    "TensorBoardLogger",
    "TrainConfig",
    "balanced_accuracy",
    "balanced_class_weights",
    "fbeta",
    "group_optimizer",
    "opt_th",
    "predict_images",
    "register_keras_backbone",
    "set_seed",
    "sgdr_total_epochs",
    "tfms_from_model",
    "transforms_side_on",
    "transforms_top_down",
    "untar_data",
    "write_report",
]
