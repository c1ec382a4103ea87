"""Cached body activations: fast.ai's `precompute=True`, memory-mapped on disk."""

import hashlib
import logging
import os

import keras
import numpy as np

from kertransfer.callbacks.checkpoint import rng_state_kept
from kertransfer.console import progress_bar
from kertransfer.data.cache import load_checked
from kertransfer.data.cache import write_checksum
from kertransfer.distribute import predict_padded
from kertransfer.files import cache_dir

__all__ = ["ActivationCache"]

# Bumped when the precompute cache's layout or meaning changes.
_PRECOMPUTE_FORMAT = 3

logger = logging.getLogger(__name__)


class ActivationCache:
    """The body's activations of each split, computed once and kept on disk.

    Computed batch by batch into a memory-mapped `.npy` under
    `<cache_dir>/precompute/` (written under a temporary name, then
    renamed, with a checksum beside it) and read back memory-mapped, so no
    step holds all activations in RAM. The cache key covers a format
    version, the arch, the body's current weights, the image size, the
    decoder version and every file's path, size and mtime, taken before
    decoding; if a file changes while activations are computed, the result
    is used once but not cached. A damaged file is logged and rebuilt
    (`kertransfer.data.cache.load_checked`).

    Args:
        body_model: `keras.Model` from raw pixels to pooled activations
            `(batch, features)`.
        backbone: the body whose weights key the cache.
        arch: backbone name (part of the file name and key).
        weights: the weights the body was built with (part of the key).
        distribution: the `kertransfer.distribute.Replicas` to predict under.

    Attributes:
        features: `{key: array}` of the activations read in this process.
    """

    def __init__(self, body_model, backbone, arch, weights, distribution):
        self.body_model = body_model
        self.backbone = backbone
        self.arch = arch
        self.weights = weights
        self.distribution = distribution
        self.features = {}

    def get(self, data, split):
        """Activations `(n, features)` of `split` of `data` (an `ImageClassifierData`)."""
        key = self._key(data, split)
        if key in self.features:
            return self.features[key]
        folder = os.path.join(cache_dir(), "precompute")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.arch}_{data.image_size}_{split}_{key}.npy")
        shape = (len(data.split(split)), self.body_model.output_shape[-1])
        feats = load_checked(path, shape)  # None when missing or damaged (logged)
        if feats is None:
            logger.info("Precomputing %s activations -> %s", split, path)
            with rng_state_kept():  # a seeded run goes on as if they were cached
                feats = self._compute(data, split, path)
            if self._key(data, split) != key:
                logger.warning(
                    "Files of the %s split changed while their activations were "
                    "computed; not caching them.", split)
                feats = np.array(feats)
                os.remove(path)
                os.remove(path + ".sum")
        self.features[key] = feats
        return feats

    def _body_fingerprint(self):
        digest = hashlib.sha1(f"{self.arch}|{self.weights}".encode())
        for w in self.backbone.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
        return digest.hexdigest()

    def _key(self, data, split):
        return hashlib.sha1(
            f"{_PRECOMPUTE_FORMAT}|{self._body_fingerprint()}|"
            f"{data.fingerprint(split)}".encode()
        ).hexdigest()[:20]

    def _compute(self, data, split, path, chunk=8):
        """Writes the body's activations of `split` to `path`, a few batches at a time."""
        batches = data.fixed_batches(split)
        n = len(data.split(split))
        dim = self.body_model.output_shape[-1]
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype="float32", shape=(n, dim))
        row = 0
        bar = progress_bar(len(batches))  # within `kertransfer.console.progress_bars()`
        with self.distribution.scope():
            for start in range(0, len(batches), chunk):
                stop = min(start + chunk, len(batches))
                x = np.concatenate([batches[i][0] for i in range(start, stop)])
                out[row : row + len(x)] = predict_padded(self.body_model, x, batch_size=batches.batch_size)
                row += len(x)
                bar.update(stop)
        out.flush()
        del out
        os.replace(tmp, path)
        write_checksum(path)
        return np.load(path, mmap_mode="r")
