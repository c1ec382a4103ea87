"""kertransfer: the fast.ai transfer-learning workflow on Keras 3.

Works under the TensorFlow, JAX and torch Keras backends. TensorFlow is
imported only by `kertransfer.export`.
"""

from kertransfer import backbones
from kertransfer.callbacks import SGDR
from kertransfer.callbacks import KeepBestWeights
from kertransfer.callbacks import LRFinder
from kertransfer.data import ImageClassifierData
from kertransfer.datasets import untar_data
from kertransfer.groups import group_optimizer
from kertransfer.interpret import ClassificationInterpretation
from kertransfer.interpret import MultiLabelInterpretation
from kertransfer.learner import ConvLearner
from kertransfer.report import write_report
from kertransfer.schedules import sgdr_total_epochs
from kertransfer.transforms import tfms_from_model
from kertransfer.transforms import transforms_side_on
from kertransfer.transforms import transforms_top_down

__version__ = "0.1.0"

__all__ = [
    "backbones",
    "ClassificationInterpretation",
    "ConvLearner",
    "ImageClassifierData",
    "KeepBestWeights",
    "LRFinder",
    "MultiLabelInterpretation",
    "SGDR",
    "group_optimizer",
    "sgdr_total_epochs",
    "tfms_from_model",
    "transforms_side_on",
    "transforms_top_down",
    "untar_data",
    "write_report",
]
