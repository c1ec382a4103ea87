"""The one image path: open a file, resize its short side, center-crop.

Training, validation, TTA, `kertransfer predict`, interpretation thumbnails,
int8 calibration and the export checks all read images through this module,
and the deployed graphs (`kertransfer.export`'s SavedModel, the LiteRT
runner, the Android snippet) reproduce the same steps from the `Framing`
they are given as data (`preprocessing.json`), so the pixels a deployed
model sees are the pixels validation saw:

1. **Open** (`open_image`): the first frame (GIF), EXIF orientation applied,
   transparent pixels composited onto white, 16-bit, palette, grayscale and
   CMYK images converted to 8-bit RGB.
2. **Resize** (`decode_image`): the short side to `Framing.decode_size` =
   `round(image_size / crop_pct)` pixels (ImageNet's standard evaluation,
   256 for 224), the long side in proportion, with Pillow's antialiased
   bilinear filter (a triangle kernel widened by the scale factor, as
   TensorFlow's `tf.image.resize(..., "bilinear", antialias=True)`). Large
   JPEGs are first decoded at 1/2, 1/4 or 1/8 scale by libjpeg (Pillow's
   `draft`; `tf.io.decode_jpeg(ratio=...)` in the SavedModel) while the
   short side stays at least `decode_size`.
3. **Center crop** (`center_crop`): the middle `image_size` square.

This module needs only NumPy and Pillow (no Keras, no kertransfer imports),
so the deployment kit's runner can use it as it is.

Sources: the 0.875 center crop of ImageNet evaluation (Szegedy et al. 2015,
"Going deeper with convolutions"; timm's `crop_pct`); fast.ai v0.7
`tfms_from_model` (`CropType.CENTER` for validation).
"""

import dataclasses
import json
import os

import numpy as np
from PIL import Image
from PIL import ImageOps

from kertransfer.files import atomic_path

__all__ = [
    "DEFAULT_CROP_PCT",
    "IMAGE_EXTENSIONS",
    "Framing",
    "center_crop",
    "decode_image",
    "find_images",
    "frame_image",
    "frame_images",
    "jpeg_draft_scale",
    "load_thumbnail",
    "open_image",
    "probe_image",
]

# Searched for in folders (same list as `keras.utils.image_dataset_from_directory`);
# a file named explicitly is tried whatever its extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_CROP_PCT = 0.875
PREPROCESSING_FILE = "preprocessing.json"
# Bumped whenever decoded pixels change, so caches keyed on it are rebuilt.
DECODE_VERSION = 2
_SCHEMA = "kertransfer.framing/1"


@dataclasses.dataclass(frozen=True)
class Framing:
    """How a photo becomes a model input: the data every reader follows.

    Args:
        image_size: side of the square model input, pixels.
        crop_pct: fraction of the resized short side kept by the center
            crop, in `(0, 1]` (0.875: short side 256, crop 224).

    Attributes:
        decode_size: short side, pixels, after resizing:
            `round(image_size / crop_pct)`.

    Raises:
        ValueError: on an `image_size` that is not an integer >= 8, or a
            `crop_pct` outside `(0, 1]`.

    Example:

    >>> Framing(224).decode_size
    256
    >>> Framing(224).resized_shape(480, 640)
    (256, 341)
    """

    image_size: int
    crop_pct: float = DEFAULT_CROP_PCT

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, bool) or int(size) != size or size < 8:
            raise ValueError(
                f"image_size must be an integer >= 8 pixels. Received image_size={size!r}."
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(
                f"crop_pct must be in (0, 1] (0.875 keeps the middle 224 of 256 "
                f"pixels). Received crop_pct={self.crop_pct!r}."
            )
        object.__setattr__(self, "image_size", int(size))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    @property
    def decode_size(self):
        return int(round(self.image_size / self.crop_pct))

    def resized_shape(self, height, width):
        """`(height, width)` in pixels after resizing the short side.

        The short side becomes `decode_size`; the long side is scaled in
        proportion and rounded half to even (Python's `round`, TF's
        `tf.round`), never below `decode_size`.
        """
        return resized_shape(height, width, self.decode_size)

    def to_dict(self):
        """The framing as plain data (`preprocessing.json`)."""
        return {
            "schema": _SCHEMA,
            "image_size": self.image_size,
            "crop_pct": self.crop_pct,
            "decode_size": self.decode_size,
            "resize": "short side to decode_size, antialiased bilinear (triangle filter)",
            "crop": "center image_size x image_size; offsets (h - s) // 2, (w - s) // 2",
            "jpeg_draft": "decode at 1/8, 1/4 or 1/2 scale when min(w, h) // decode_size >= 8, 4, 2",
            "exif_orientation": True,
            "alpha": "composited onto white",
            "input": "float32 RGB pixels in [0, 255], shape (batch, image_size, image_size, 3)",
        }

    @classmethod
    def from_dict(cls, config):
        """A `Framing` from `to_dict()`'s output (extra keys ignored).

        Raises:
            ValueError: if `image_size` is missing.
        """
        if "image_size" not in config:
            raise ValueError(
                f"A framing needs 'image_size' (and optionally 'crop_pct'). Received keys "
                f"{sorted(config)}."
            )
        return cls(int(config["image_size"]), float(config.get("crop_pct", DEFAULT_CROP_PCT)))

    def save(self, folder):
        """Writes `preprocessing.json` into `folder`; returns its path."""
        path = os.path.join(os.fspath(folder), PREPROCESSING_FILE)
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, path):
        """Reads a `preprocessing.json` file (or the folder holding one).

        Raises:
            FileNotFoundError: if there is no such file.
            ValueError: if it is not a framing written by `save`.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, PREPROCESSING_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {PREPROCESSING_FILE} at {path!r}. `kertransfer export` writes it "
                "beside the .tflite file and into the SavedModel's assets."
            )
        with open(path) as f:
            try:
                return cls.from_dict(json.load(f))
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{path} is not a framing file ({e}).") from e


def resized_shape(height, width, short_side):
    """`(height, width)` with the short side `short_side` pixels (see `Framing`)."""
    scale = short_side / min(height, width)
    return (
        max(short_side, int(round(height * scale))),
        max(short_side, int(round(width * scale))),
    )


def jpeg_draft_scale(width, height, short_side):
    """The libjpeg reduction (1, 2, 4 or 8) used for a JPEG of this size.

    Pillow's `JpegImageFile.draft(mode, (s, s))` rule: the largest of 8, 4,
    2, 1 that is at most `min(width, height) // short_side`, so the decoded
    short side stays at least `short_side`.
    """
    scale = min(width // short_side, height // short_side)
    for s in (8, 4, 2, 1):
        if scale >= s:
            return s
    return 1


def _to_rgb(image):
    """8-bit RGB from any Pillow mode (alpha onto white, 16-bit scaled)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: Pillow's convert("RGB") clips values > 255 to
        # white; keep the high byte instead (what libpng's strip-16 and
        # `tf.io.decode_png(dtype=tf.uint8)` do).
        array = np.asarray(image, dtype=np.int64)
        array = np.clip(array >> 8 if array.max() > 255 else array, 0, 255)
        image = Image.fromarray(array.astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _check_pixel_budget(image, path):
    """Raises if `image` (opened, drafted) would decode to too many pixels.

    The budget is Pillow's own knob, `PIL.Image.MAX_IMAGE_PIXELS` (default
    89,478,485 pixels: where Pillow only warns; it refuses at twice that).
    None turns the check off, as it does in Pillow.
    """
    budget = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if budget is not None and width * height > budget:
        raise Image.DecompressionBombError(
            f"{os.fspath(path)!r} would decode to {width}x{height} = {width * height:,} "
            f"pixels, over the pixel budget of {budget:,} (PIL.Image.MAX_IMAGE_PIXELS; "
            "JPEGs count at the reduced scale they are decoded at). Shrink the image, or "
            "raise PIL.Image.MAX_IMAGE_PIXELS if you trust it and have the memory."
        )


def open_image(path, draft_short_side=None):
    """Opens an image file as an 8-bit RGB Pillow image.

    The first frame of animated files (GIF) is used, EXIF orientation is
    applied, transparent pixels are composited onto white, and grayscale,
    palette, CMYK and 16-bit images are converted to 8-bit RGB (16-bit
    values keep their high byte).

    Never decodes more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (Pillow's
    decompression-bomb threshold, default about 89.5 Mpixels; set it to
    change the budget): a JPEG counts at its reduced decoding scale, so a
    144-Mpixel JPEG read with `draft_short_side=256` decodes at 1/8
    (2.25 Mpixels); a 144-Mpixel PNG is refused before any pixel is read.

    Args:
        path: image file (JPEG, PNG, GIF, BMP, or anything Pillow opens).
        draft_short_side: for a JPEG, let libjpeg decode at 1/2, 1/4 or 1/8
            scale while both sides stay at least this many pixels
            (`jpeg_draft_scale`); None decodes at full size.

    Returns:
        `PIL.Image.Image` in mode `"RGB"`.

    Raises:
        OSError: if Pillow cannot decode the file (`PIL.UnidentifiedImageError`
            is a subclass).
        PIL.Image.DecompressionBombError: for an image over the pixel budget
            (over twice the budget Pillow raises it itself, at `open`).
    """
    with Image.open(path) as image:
        image.seek(0)
        if draft_short_side and image.format == "JPEG":
            image.draft("RGB", (int(draft_short_side), int(draft_short_side)))
        _check_pixel_budget(image, path)
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        image.load()
    return image


def decode_image(path, short_side):
    """Decodes `path` with its short side resized to `short_side` pixels.

    Opens the file with `open_image` (JPEGs decoded at reduced scale when
    at least twice as large, see `jpeg_draft_scale`), then resizes with
    Pillow's antialiased bilinear filter to `resized_shape`.

    Args:
        path: image file.
        short_side: short side of the result, pixels.

    Returns:
        uint8 numpy array `(height, width, 3)` with `min(height, width) ==
        short_side`.

    Raises:
        OSError: as `open_image`.
    """
    image = open_image(path, draft_short_side=short_side)
    width, height = image.size
    new_height, new_width = resized_shape(height, width, short_side)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def center_crop(image, size):
    """The middle `size x size` square of an `(h, w, c)` array.

    Offsets are `(h - size) // 2` and `(w - size) // 2` (the extra pixel of
    an odd margin goes to the bottom/right).

    Raises:
        ValueError: if the image is smaller than `size` on a side.
    """
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(
            f"Cannot center-crop {size}x{size} pixels from an image of {height}x{width}."
        )
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def frame_image(path, framing):
    """One file as the model sees it in validation: decode, resize, crop.

    Args:
        path: image file.
        framing: a `Framing`.

    Returns:
        uint8 array `(image_size, image_size, 3)`.

    Raises:
        OSError: as `open_image`.
    """
    return center_crop(decode_image(path, framing.decode_size), framing.image_size)


def frame_images(paths, framing):
    """Files as a float32 batch `(len(paths), image_size, image_size, 3)`.

    Pixels in `[0, 255]` (whole numbers), the validation framing of each
    file (`frame_image`).

    Raises:
        FileNotFoundError: if a path does not exist.
        ValueError: if a file cannot be read as an image (names the file).
    """
    size = framing.image_size
    batch = np.empty((len(paths), size, size, 3), np.float32)
    for i, path in enumerate(paths):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path!r}.")
        try:
            batch[i] = frame_image(path, framing)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(
                f"Cannot read {path!r} as an image ({type(e).__name__}: {e}). Remove it "
                "from the image list or folder."
            ) from e
    return batch


def probe_image(path, draft_short_side=None):
    """`(width, height)` of an image file, from its header alone.

    Cheap (no pixel decoding): used to scan large folders. A file whose
    header reads may still fail to decode later (a truncated JPEG).

    Args:
        path: image file.
        draft_short_side: the short side it will be decoded at (see
            `open_image`), so that the pixel budget counts a large JPEG at
            its reduced decoding scale; None counts every file in full.

    Returns:
        `(width, height)` of the full image, pixels.

    Raises:
        OSError: if Pillow cannot identify the file as an image.
        PIL.Image.DecompressionBombError: for an image over the pixel budget
            (`PIL.Image.MAX_IMAGE_PIXELS`, see `open_image`).
    """
    with Image.open(path) as image:
        size = image.size
        if draft_short_side and image.format == "JPEG":
            image.draft("RGB", (int(draft_short_side), int(draft_short_side)))
        _check_pixel_budget(image, path)
        return size


def load_thumbnail(path, size):
    """RGB uint8 array of the image at `path`, at most `size` pixels a side.

    Opened like every other image here (`open_image`: EXIF, alpha, frames),
    then shrunk with Pillow's `thumbnail` (aspect ratio kept), for plots.
    """
    image = open_image(path, draft_short_side=size)
    image.thumbnail((size, size))
    return np.asarray(image)


def is_image_name(name):
    """True for a visible file name with an extension in `IMAGE_EXTENSIONS`."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder):
    """Image files under `folder`, searched recursively, in sorted order.

    Hidden files and folders (a leading `.`) are skipped; files count when
    their extension is in `IMAGE_EXTENSIONS` (any case).

    Returns:
        list of paths (str), possibly empty.
    """
    found = []
    for root, dirs, names in os.walk(os.fspath(folder)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in names if is_image_name(n)]
    return sorted(found)
