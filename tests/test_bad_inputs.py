"""Issue 17 item 7: a corpus of awkward and broken inputs, each with its outcome.

Every file is generated here. Each one is either decoded, with the pixels
an independent construction says it must have (Pillow's own drawing, a
hand-made colour), or skipped at the scan with its reason named; hidden
files are ignored. Nothing vanishes silently.
"""

import os
import re

import numpy as np
import pytest
from PIL import Image

from kertransfer import images
from kertransfer.data import ImageClassifierData
from kertransfer.transforms import tfms_from_model

from conftest import write_bomb_png
from conftest import write_synthetic_images

pytestmark = pytest.mark.one_backend

RED = (220, 20, 30)


def _corpus(folder):
    """Writes the corpus into class folder `folder`.

    Returns:
        `(kept, skipped_at_scan, decoded_only_later)`: `kept` maps file name
        to a check of its decoded RGB array; `skipped_at_scan` maps file name
        to a regex its reason must match in every mode; `decoded_only_later`
        the same for files whose header reads but whose pixels do not.
    """
    folder.mkdir(parents=True)
    real = Image.new("RGB", (64, 48), RED)
    real.save(folder / "plain.jpg", quality=95)

    # Decoded, with known pixels.
    gray16 = np.full((30, 40), 200 * 257, np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    Image.new("RGBA", (40, 30), (0, 0, 255, 0)).save(folder / "transparent.png")
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette.save(folder / "palette.png")
    frames = [Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    # EXIF orientation 6 (rotate 90 clockwise to display): stored 40 wide,
    # 20 high, left half red; upright it is 20 wide, 40 high, top half red.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    Image.new("RGB", (1, 1), RED).save(folder / "one_pixel.png")
    real.save(folder / "fourmi é 蟻.jpg", quality=95)
    real.save(folder / "with space.jpg", quality=95)
    kept = {
        "plain.jpg": lambda a: np.abs(a.astype(int) - RED).max() <= 6,
        "gray16.png": lambda a: (a == 200).all(),
        "cmyk.jpg": lambda a: a[..., 0].min() > 240 and a[..., 1:].max() < 15,
        "transparent.png": lambda a: (a == 255).all(),
        "palette.png": lambda a: (a == RED).all(),
        "animated.gif": lambda a: (a == RED).all(),
        "exif_rotated.jpg": lambda a: a.shape[:2] == (40, 20)
        and np.abs(a[:18].astype(int) - RED).max() <= 12
        and a[22:].max() <= 12,
        "one_pixel.png": lambda a: a.shape == (1, 1, 3) and (a == RED).all(),
        "fourmi é 蟻.jpg": lambda a: np.abs(a.astype(int) - RED).max() <= 6,
        "with space.jpg": lambda a: np.abs(a.astype(int) - RED).max() <= 6,
    }

    # Skipped, whatever the cache: nothing in them reads as an image.
    (folder / "zero_bytes.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image, just text\n")
    write_bomb_png(folder / "huge.png")
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    (folder / "a_folder").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a_folder" / "inside.jpg")
    skipped = {
        "zero_bytes.jpg": r"UnidentifiedImageError",
        "text.jpg": r"UnidentifiedImageError",
        "huge.png": r"DecompressionBombError",
        "dangling.jpg": r"broken symbolic link",
        "a_folder": r"folder inside a class folder",
    }
    # The header reads; the pixels stop half-way.
    noise = np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "truncated.jpg", quality=90)
    jpeg = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    later = {"truncated.jpg": r"truncated"}

    # Ignored: hidden files (macOS `._` forks, `.DS_Store`).
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / "._plain.jpg").write_bytes(b"\0\5\0\7")
    return kept, skipped, later


def _dataset(root):
    write_synthetic_images(root, {"train/b": 2, "valid/a": 2, "valid/b": 2}, size=40)
    return _corpus(root / "train" / "a")


def test_every_corpus_file_decodes_correctly_on_its_own(tmp_path):
    kept, skipped, later = _corpus(tmp_path / "c")
    for name, check in kept.items():
        array = np.asarray(images.open_image(tmp_path / "c" / name))
        assert check(array), name
    for name in list(skipped) + list(later):
        if name in ("a_folder", "dangling.jpg"):
            continue
        with pytest.raises((OSError, Image.DecompressionBombError)):
            images.open_image(tmp_path / "c" / name)


@pytest.mark.parametrize("cache", ["memory", None])
def test_scan_keeps_decodable_files_and_names_every_skipped_one(tmp_path, cache):
    root = tmp_path / "data"
    kept, skipped, later = _dataset(root)
    if cache == "memory":  # decoded now: the truncated file is caught at the scan
        skipped, later = {**skipped, **later}, {}
    folder = root / "train" / "a"
    with pytest.warns(UserWarning, match=rf"Skipped {len(skipped)} file"):
        data = ImageClassifierData.from_paths(root, tfms=tfms_from_model("tiny_cnn", 32), cache=cache)

    listed = {os.path.relpath(p, folder): reason for p, reason in data.skipped}
    assert sorted(listed) == sorted(skipped)
    for name, pattern in skipped.items():
        assert re.search(pattern, listed[name]), (name, listed[name])
    train_a = sorted(os.path.relpath(p, folder) for p in data.train_paths if p.startswith(str(folder)))
    assert train_a == sorted(list(kept) + list(later))

    # Every kept file reaches a batch; one that breaks mid-epoch is named.
    batches = data.fixed_batches("train")
    if later:
        with pytest.warns(UserWarning, match=r"truncated\.jpg any more"):
            for i in range(len(batches)):
                batches[i]
        listed = {os.path.relpath(p, folder): reason for p, reason in data.skipped}
        assert sorted(listed) == sorted({**skipped, **later})
        assert re.search(later["truncated.jpg"], listed["truncated.jpg"])
    else:
        for i in range(len(batches)):
            x, _ = batches[i]
            assert np.isfinite(np.asarray(x)).all()
