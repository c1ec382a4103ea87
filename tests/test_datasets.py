"""`untar_data`: where sample data is found, and pinned downloads.

The downloads are real `keras.utils.get_file` calls on `file://` URLs (no
network): a tar.gz built here, checked against its md5.
"""

import hashlib
import tarfile

import pytest
from PIL import Image

from kertransfer import datasets
from kertransfer.datasets import untar_data

pytestmark = pytest.mark.one_backend


@pytest.fixture
def archive(tmp_path):
    """A dogscats-shaped `.tgz` (one photo per class and split), its md5."""
    src = tmp_path / "src" / "dogscats"
    for split in ("train", "valid"):
        for c in ("cats", "dogs"):
            (src / split / c).mkdir(parents=True)
            Image.new("RGB", (24, 16), (200 if c == "cats" else 20, 90, 30)).save(src / split / c / "0.jpg")
    path = tmp_path / "dogscats.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="dogscats")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def _serve(monkeypatch, tmp_path, archive_path, md5):
    home = tmp_path / "keras-home"
    monkeypatch.delenv("KERTRANSFER_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(home))
    sample = dict(datasets.SAMPLES["dogscats"], url=archive_path.as_uri(), file_hash=md5)
    monkeypatch.setitem(datasets.SAMPLES, "dogscats", sample)
    return home / "datasets" / "dogscats"


def test_pins_are_full_digests_over_https():
    for name, sample in datasets.SAMPLES.items():
        assert sample["url"].startswith("https://"), name
        if sample["file_hash"] is not None:
            assert len(sample["file_hash"]) == {"md5": 32, "sha256": 64}[sample["hash_algorithm"]]
    assert datasets.SAMPLES["dogscats"]["file_hash"] is not None


def test_download_matching_its_pin_is_extracted_and_found_again(monkeypatch, tmp_path, archive):
    folder = _serve(monkeypatch, tmp_path, *archive)
    found = untar_data("dogscats")
    assert sorted(p.name for p in (tmp_path / found).joinpath("train").iterdir()) == ["cats", "dogs"]
    assert str(folder) in found
    # Found in the cache next time, without downloading.
    assert untar_data("dogscats", download=False) == found


def test_download_not_matching_its_pin_is_deleted_with_a_clear_error(monkeypatch, tmp_path, archive):
    folder = _serve(monkeypatch, tmp_path, archive[0], "0" * 32)
    with pytest.raises(ValueError, match=r"dogscats\.tgz does not match its pinned md5 0{32}.*deleted"):
        untar_data("dogscats")
    assert not (folder / "dogscats.tgz").exists()
    assert not any(p.is_dir() and (p / "train").exists() for p in folder.rglob("*"))


def test_not_found_without_download_names_the_places_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("KERTRANSFER_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/dogscats.*KERTRANSFER_DATA"):
        untar_data("dogscats", download=False)
