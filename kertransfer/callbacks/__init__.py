"""Thin Keras callbacks for the fast.ai training loop."""

from kertransfer.callbacks.batch_losses import BatchLosses
from kertransfer.callbacks.best import KeepBestWeights
from kertransfer.callbacks.checkpoint import FitCheckpoint
from kertransfer.callbacks.history import FitHistory
from kertransfer.callbacks.lr_finder import LRFinder
from kertransfer.callbacks.lr_finder import raw_batch_losses
from kertransfer.callbacks.one_cycle import OneCycle
from kertransfer.callbacks.run_progbar import RunProgbarLogger
from kertransfer.callbacks.sgdr import SGDR
from kertransfer.callbacks.step_schedule import StepSchedule
from kertransfer.callbacks.tensorboard import TensorBoardLogger

__all__ = [
    "SGDR",
    "BatchLosses",
    "FitCheckpoint",
    "FitHistory",
    "KeepBestWeights",
    "LRFinder",
    "OneCycle",
    "RunProgbarLogger",
    "StepSchedule",
    "TensorBoardLogger",
    "raw_batch_losses",
]
