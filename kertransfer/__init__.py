"""kertransfer: the fast.ai transfer-learning workflow on Keras 3."""

__version__ = "0.1.0"
