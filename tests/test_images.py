"""`kertransfer.images`: the one decode path (Pillow, NumPy; no backend)."""

import json

import numpy as np
import pytest
from PIL import Image

from kertransfer import images
from kertransfer.images import Framing

from conftest import write_bomb_png
from conftest import write_synthetic_images

pytestmark = pytest.mark.one_backend


def _gradient(height, width):
    """A smooth, asymmetric RGB test picture (uint8)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], -1).astype(np.uint8)


def test_framing_sizes_by_hand():
    framing = Framing(224)
    assert framing.decode_size == 256  # 224 / 0.875
    # 480x640: scale 256/480, 640 * 0.5333 = 341.33 -> 341.
    assert framing.resized_shape(480, 640) == (256, 341)
    assert framing.resized_shape(640, 480) == (341, 256)
    # Half-way cases round to even, like TF's tf.round: 100x150 to 10 px
    # gives 15.0 exactly; 20x50 to 5 px gives 12.5 -> 12.
    assert images.resized_shape(100, 150, 10) == (10, 15)
    assert images.resized_shape(20, 50, 5) == (5, 12)
    assert Framing(64, crop_pct=1.0).decode_size == 64
    assert Framing(240, crop_pct=0.882).decode_size == 272


def test_framing_round_trips_through_json(tmp_path):
    framing = Framing(96, crop_pct=0.9)
    path = framing.save(tmp_path)
    assert json.loads(open(path).read())["decode_size"] == 107
    assert Framing.load(tmp_path) == framing
    assert Framing.load(path) == framing
    with pytest.raises(FileNotFoundError, match="preprocessing.json"):
        Framing.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="image_size"):
        Framing.from_dict({"crop_pct": 0.9})


@pytest.mark.parametrize(
    "kwargs, match",
    [({"image_size": 4}, "image_size"), ({"image_size": 32.5}, "image_size"),
     ({"image_size": 32, "crop_pct": 0}, "crop_pct"),
     ({"image_size": 32, "crop_pct": 1.5}, "crop_pct")],
)
def test_framing_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Framing(**kwargs)


def test_center_crop_offsets_by_hand():
    image = np.arange(5 * 8).reshape(5, 8, 1)
    crop = images.center_crop(image, 3)
    # top = (5 - 3) // 2 = 1, left = (8 - 3) // 2 = 2.
    np.testing.assert_array_equal(crop[..., 0], image[1:4, 2:5, 0])
    with pytest.raises(ValueError, match="3x8"):
        images.center_crop(image[:3], 4)


def test_open_image_applies_exif_and_converts_modes(tmp_path):
    rgb = np.zeros((20, 40, 3), dtype="uint8")
    rgb[:, :20] = 255  # left half white
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    out = images.open_image(tmp_path / "rot.jpg")
    assert out.mode == "RGB" and out.size == (20, 40)  # transposed
    arr = np.asarray(out)
    assert arr[:15].mean() > 200 and arr[-15:].mean() < 50  # white now on top
    for mode in ["L", "P", "CMYK", "RGBA", "LA", "I;16"]:
        path = tmp_path / f"m.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
        Image.new(mode, (8, 6)).save(path)
        assert images.open_image(path).mode == "RGB", mode
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.asarray(images.open_image(tmp_path / "clear.png")).min() == 255  # onto white


def test_sixteen_bit_png_keeps_its_high_byte(tmp_path):
    # Pillow's own convert("RGB") clips 16-bit values to 255 (all white).
    gray8 = _gradient(30, 40)[..., 0]
    Image.fromarray((gray8.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = np.asarray(images.open_image(tmp_path / "g16.png"))
    np.testing.assert_array_equal(out[..., 0], gray8)  # (v * 257) >> 8 == v
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_decode_image_resizes_the_short_side(tmp_path):
    Image.fromarray(_gradient(300, 500)).save(tmp_path / "a.png")
    out = images.decode_image(tmp_path / "a.png", 120)
    assert out.shape == (120, 200, 3) and out.dtype == np.uint8
    # Pillow's antialiased bilinear filter is the reference.
    expected = Image.fromarray(_gradient(300, 500)).resize((200, 120), Image.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(expected))
    small = images.decode_image(tmp_path / "a.png", 600)  # upscaled
    assert small.shape == (600, 1000, 3)


@pytest.mark.parametrize("factor, scale", [(1, 1), (2, 2), (5, 4), (9, 8)])
def test_large_jpegs_are_decoded_at_reduced_scale(hymenoptera, tmp_path, factor, scale):
    photo = Image.open(sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[0]).convert("RGB")
    big = photo.resize((photo.width * factor, photo.height * factor), Image.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=92)
    short = min(photo.size)
    assert images.jpeg_draft_scale(big.width, big.height, short) == scale
    out = images.decode_image(tmp_path / "big.jpg", short)
    assert min(out.shape[:2]) == short
    # The full-size decode and one resize, independent of draft: close.
    full = Image.open(tmp_path / "big.jpg").convert("RGB")
    height, width = images.resized_shape(full.height, full.width, short)
    reference = np.asarray(full.resize((width, height), Image.BILINEAR), np.float32)
    assert np.abs(out.astype(np.float32) - reference).mean() < 3.0


def test_frame_image_is_the_validation_crop(hymenoptera):
    path = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[0]
    framing = Framing(64)
    decoded = images.decode_image(path, framing.decode_size)
    np.testing.assert_array_equal(
        images.frame_image(path, framing), images.center_crop(decoded, 64)
    )
    batch = images.frame_images([path, path], framing)
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.float32


def test_frame_images_names_the_bad_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        images.frame_images([tmp_path / "bad.jpg"], Framing(32))
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        images.frame_images([tmp_path / "gone.jpg"], Framing(32))


def test_find_images_recursive_sorted_no_hidden(tmp_path):
    for name in ["b/2.JPG", "a/1.png", "a/notes.txt", ".hidden/3.jpg", "a/.4.jpg", "c.gif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p[len(str(tmp_path)) + 1:] for p in images.find_images(tmp_path)]
    assert found == ["a/1.png", "b/2.JPG", "c.gif"]


def test_thumbnail_is_upright_and_bounded(tmp_path):
    img = Image.fromarray(_gradient(60, 200))
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(tmp_path / "t.jpg", exif=exif)
    thumb = images.load_thumbnail(tmp_path / "t.jpg", 50)
    assert thumb.shape == (50, 15, 3)  # turned to portrait, then shrunk


def test_an_image_over_pillows_pixel_limit_is_skipped_and_named(tmp_path):
    from kertransfer.data import ImageClassifierData
    from kertransfer.transforms import tfms_from_model

    bomb = write_bomb_png(tmp_path / "bomb.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    # Export's reader (int8 calibration and validation skip on ValueError).
    with pytest.raises(ValueError, match=r"bomb\.png.*DecompressionBombError"):
        images.frame_images([str(bomb)], Framing(32))
    # Training's scan lists it as skipped.
    root = tmp_path / "data"
    write_synthetic_images(root, {"train/a": 2, "train/b": 2, "valid/a": 2, "valid/b": 2}, size=40)
    (root / "train" / "a" / "bomb.png").write_bytes(bomb.read_bytes())
    with pytest.warns(UserWarning, match=r"Skipped 1 file(.|\n)*bomb\.png"):
        data = ImageClassifierData.from_paths(root, tfms=tfms_from_model("tiny_cnn", 32), cache=None)
    assert [p for p, _ in data.skipped] == [str(root / "train" / "a" / "bomb.png")]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_budget_reduces_large_jpegs_and_refuses_other_formats(tmp_path, monkeypatch):
    """Item 5 of issue 17: never decode more than `Image.MAX_IMAGE_PIXELS`.

    With the budget lowered to 70,000 pixels, a 400x300 (120,000-pixel)
    image sits where Pillow itself only warns: the JPEG is decoded at 1/4
    scale (100x75) when 64 pixels are wanted, the PNG is refused, by name,
    and training's scan keeps the first and lists the second as skipped.
    """
    from kertransfer.data import ImageClassifierData
    from kertransfer.transforms import tfms_from_model

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 70_000)
    big = _gradient(300, 400)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(big).save(tmp_path / "big.png")

    opened = images.open_image(tmp_path / "big.jpg", draft_short_side=64)
    assert opened.size == (100, 75)
    assert images.probe_image(tmp_path / "big.jpg", draft_short_side=64) == (400, 300)
    for call in (
        lambda: images.open_image(tmp_path / "big.jpg"),  # no reduced scale asked
        lambda: images.open_image(tmp_path / "big.png", draft_short_side=64),
        lambda: images.probe_image(tmp_path / "big.png", draft_short_side=64),
    ):
        with pytest.raises(Image.DecompressionBombError, match=r"big\.(jpg|png).*400x300.*70,000"):
            call()
    with pytest.raises(ValueError, match=r"big\.png.*pixel budget"):
        images.frame_images([str(tmp_path / "big.png")], Framing(56))
    assert images.frame_images([str(tmp_path / "big.jpg")], Framing(56)).shape == (1, 56, 56, 3)

    root = tmp_path / "data"
    write_synthetic_images(root, {"train/a": 2, "train/b": 2, "valid/a": 2, "valid/b": 2}, size=40)
    (root / "train" / "a" / "big.jpg").write_bytes((tmp_path / "big.jpg").read_bytes())
    (root / "train" / "b" / "big.png").write_bytes((tmp_path / "big.png").read_bytes())
    with pytest.warns(UserWarning, match=r"Skipped 1 file(.|\n)*big\.png"):
        data = ImageClassifierData.from_paths(root, tfms=tfms_from_model("tiny_cnn", 32), cache=None)
    assert [p for p, _ in data.skipped] == [str(root / "train" / "b" / "big.png")]
    assert str(root / "train" / "a" / "big.jpg") in data.train_paths
