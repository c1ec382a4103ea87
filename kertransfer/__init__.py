"""kertransfer: the fast.ai transfer-learning workflow on Keras 3.

Works under the TensorFlow, JAX and torch Keras backends. TensorFlow is
imported only by `kertransfer.export`.
"""

from kertransfer import backbones
from kertransfer.balance import balanced_accuracy
from kertransfer.balance import balanced_class_weights
from kertransfer.callbacks import SGDR
from kertransfer.callbacks import KeepBestWeights
from kertransfer.callbacks import LRFinder
from kertransfer.callbacks import TensorBoardLogger
from kertransfer.data import ImageClassifierData
from kertransfer.datasets import untar_data
from kertransfer.fbeta_score import SamplesFBetaScore
from kertransfer.groups import group_optimizer
from kertransfer.interpret import ClassificationInterpretation
from kertransfer.interpret import MultiLabelInterpretation
from kertransfer.learner import ConvLearner
from kertransfer.metrics import fbeta
from kertransfer.metrics import opt_th
from kertransfer.predict import predict_images
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
    "SamplesFBetaScore",
    "SGDR",
    "TensorBoardLogger",
    "balanced_accuracy",
    "balanced_class_weights",
    "fbeta",
    "group_optimizer",
    "opt_th",
    "predict_images",
    "sgdr_total_epochs",
    "tfms_from_model",
    "transforms_side_on",
    "transforms_top_down",
    "untar_data",
    "write_report",
]
