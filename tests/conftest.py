import os
import pathlib
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from kertransfer.backbones import BackboneSpec
from kertransfer.backbones import register_backbone
from kertransfer.layers import ImagePreprocessing
from kertransfer.no_tensorflow import set_seed

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name):
    """Path of a sample dataset in ../shared/data; a missing one is an error."""
    path = SHARED / name
    if not (path / "train").is_dir():
        raise FileNotFoundError(
            f"Test data {path} is missing: the tests need ../shared/data beside "
            "the checkout (CI provides it)."
        )
    return path


@pytest.fixture(scope="session")
def hymenoptera():
    return shared_data("hymenoptera")


@pytest.fixture(scope="session")
def dogscats():
    return shared_data("dogscats")


@pytest.fixture(autouse=True)
def _keras_home(tmp_path_factory, monkeypatch):
    # Keep converted weights and precompute caches out of ~/.keras, but share
    # them across tests of one session unless KERAS_HOME is set (Makefile).
    if "KERAS_HOME" not in os.environ:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras_home"))


@pytest.fixture(autouse=True)
def _seeded():
    # Every test starts from the same generator states (Python, NumPy, the
    # backend, Keras's global seed): results do not depend on test order. A
    # test's own `set_seed` then takes effect (tiny_cnn does not reseed).
    set_seed(0)


def tiny_cnn(weights=None, input_shape=(None, None, 3), include_top=False):
    """A 2-group CNN for fast learner tests (random init, the same every build).

    Its kernels come from seeded initializers, so every build is the same
    body without touching the global generators: a caller's seed still
    decides the head, the batches and the augmentation.
    """
    inputs = keras.Input(input_shape)
    x = ImagePreprocessing((127.5,) * 3, (127.5,) * 3, name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=0))(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="late_conv",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=1))(x)
    x = keras.layers.BatchNormalization(name="late_bn")(x)
    x = keras.layers.ReLU(name="late_relu")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


register_backbone(
    BackboneSpec(
        name="tiny_cnn",
        builder=tiny_cnn,
        layer_groups=(r"(preprocess|stem_)", r"late_"),
        default_image_size=32,
    )
)


# Base colour of each synthetic class (others get one from their name).
CLASS_COLOURS = {
    "ants": (190, 80, 60),
    "bees": (70, 100, 190),
    "cats": (90, 170, 80),
    "dogs": (180, 170, 60),
}


def synthetic_image(cls, index, size=48, seed=0):
    """A deterministic textured RGB image (uint8 array) of class `cls`.

    The class sets the mean colour (so a tiny model can tell the classes
    apart); smooth blobs, pixel noise and an off-centre rectangle give the
    texture and asymmetry that crops, flips, rotations and lighting change.
    Width and height vary around `size`.
    """
    rng = np.random.default_rng([seed, zlib.crc32(cls.encode()), index])
    colour = CLASS_COLOURS.get(cls)
    if colour is None:
        colour = np.random.default_rng(zlib.crc32(cls.encode())).integers(40, 216, 3)
    w, h = (int(size + d) for d in rng.integers(-size // 6, size // 6 + 1, 2))
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(colour, "float64") + rng.normal(0, 15, 3)
    pixels = pixels + (np.asarray(coarse, "float64") - 127.5) * 0.4 + rng.normal(0, 10, (h, w, 3))
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    x1, y1 = x0 + rng.integers(w // 5, w // 2), y0 + rng.integers(h // 5, h // 2)
    pixels[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    return np.clip(pixels, 0, 255).astype("uint8")


def write_synthetic_images(root, layout, size=48, seed=0, formats=("jpg", "png")):
    """Writes `{"train/ants": n, ...}` synthetic images under `root`.

    Files are `<folder>/<i>.<ext>`, the extension cycling through
    `formats` (JPEG quality 90 or PNG). Returns `root`.
    """
    root = pathlib.Path(root)
    for folder, n in layout.items():
        cls = pathlib.PurePath(folder).name
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = Image.fromarray(synthetic_image(cls, i + 1000 * ("val" in folder), size, seed))
            ext = formats[i % len(formats)]
            image.save(root / folder / f"{i:03d}.{ext}", **({"quality": 90} if ext == "jpg" else {}))
    return root


def write_bomb_png(path, side=20000):
    """A small PNG whose header claims `side` x `side` pixels (over Pillow's limit)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path = pathlib.Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory):
    """fast.ai layout of small synthetic images: 48 train and 8 valid per class."""
    return write_synthetic_images(
        tmp_path_factory.mktemp("synthetic"),
        {"train/ants": 48, "train/bees": 48, "valid/ants": 8, "valid/bees": 8},
    )


@pytest.fixture(scope="session")
def tiny_data(synthetic_folder):
    """Data for unit tests with `tiny_cnn` at 32 px, on `synthetic_folder`.

    Its classes are named "ants" and "bees" like hymenoptera's, so tests may
    mix it with real photos of those classes (`learn.set_data`).
    """
    from kertransfer.data import ImageClassifierData
    from kertransfer.transforms import tfms_from_model

    tfms = tfms_from_model("tiny_cnn", 32)
    return ImageClassifierData.from_paths(synthetic_folder, batch_size=16, tfms=tfms)


def tensorboard_scalars(log_dir):
    """`{tag: [(step, value)]}` read back from the event files of `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
        for tag in events.Tags()["tensors"]
    }
