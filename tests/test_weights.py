"""The one weights resolver (`kertransfer.backbones.weights`), on local files only.

Nothing here reaches the network: downloads come from `file://` URLs or
servers on 127.0.0.1 (tests/local_servers.py). Pure file handling, so every
test runs in the TensorFlow pass only.
"""

import hashlib
import os
import socket

import pytest
from local_servers import closed_port_url
from local_servers import file_server
from local_servers import silent_server

from kertransfer.backbones import weights
from kertransfer.backbones.efficientnet_lite_presets import LITE_PRESETS

pytestmark = pytest.mark.one_backend

CONTENT = b"pretend these are weights\n" * 100


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def origin_file(tmp_path):
    folder = tmp_path / "origin"
    folder.mkdir()
    path = folder / "model-abc.pth"
    path.write_bytes(CONTENT)
    return path


def test_file_url_download_is_checked_and_cached(keras_home, origin_file):
    sha256 = hashlib.sha256(CONTENT).hexdigest()
    path = weights.fetch_weights("model-abc.pth", origin_file.as_uri(), "arch", sha256)
    assert path == str(keras_home / "models" / "model-abc.pth")
    with open(path, "rb") as f:
        assert f.read() == CONTENT
    assert os.listdir(keras_home / "models") == ["model-abc.pth"]  # no .part left
    origin_file.unlink()  # the cached copy is used from now on
    again = weights.fetch_weights("model-abc.pth", origin_file.as_uri(), "arch", sha256[:8])
    assert again == path


def test_http_download_from_a_local_server(keras_home, origin_file):
    md5 = hashlib.md5(CONTENT).hexdigest()
    with file_server(origin_file.parent) as base_url:
        source = {"file": origin_file.name, "base_url": base_url, "md5": md5}
        path = weights.preset_file("arch", source, "a .pth file", timeout=10)
    with open(path, "rb") as f:
        assert f.read() == CONTENT


def test_wrong_hash_names_the_file_and_both_hashes_and_caches_nothing(keras_home, origin_file):
    actual = hashlib.sha256(CONTENT).hexdigest()
    wrong = "0" * 64
    with pytest.raises(OSError) as info:
        weights.fetch_weights("model-abc.pth", origin_file.as_uri(), "arch", wrong)
    message = str(info.value)
    assert "model-abc.pth" in message and wrong in message and actual in message
    assert "--weights PATH" in message
    assert not (keras_home / "models" / "model-abc.pth").exists()
    assert os.listdir(keras_home / "models") == []


def test_corrupt_cached_file_names_both_hashes(keras_home):
    cached = keras_home / "models" / "model-abc.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    actual_md5 = hashlib.md5(b"truncated").hexdigest()
    expected_md5 = hashlib.md5(CONTENT).hexdigest()
    with pytest.raises(OSError) as info:
        weights.fetch_weights("model-abc.pth", closed_port_url(), "arch", md5=expected_md5)
    message = str(info.value)
    assert str(cached) in message and expected_md5 in message and actual_md5 in message
    assert "Delete it" in message


def test_a_server_that_never_answers_times_out_with_a_clear_error(keras_home):
    before = socket.getdefaulttimeout()
    with silent_server() as base_url, pytest.raises(OSError) as info:
        weights.fetch_weights("model-abc.pth", base_url + "model-abc.pth", "arch", timeout=0.2)
    message = str(info.value)
    assert "timeout=0.2 s" in message and "model-abc.pth" in message
    assert "weights=PATH" in message
    # The timeout was the request's own: the process-wide default is untouched.
    assert socket.getdefaulttimeout() == before
    assert os.listdir(keras_home / "models") == []


def test_offline_fails_at_once_naming_the_file_and_the_fix(keras_home):
    url = closed_port_url("model-abc.pth")
    with pytest.raises(OSError) as info:
        weights.fetch_weights("model-abc.pth", url, "arch", formats="a .pth file")
    message = str(info.value)
    assert url in message and str(keras_home / "models") in message
    assert "a .pth file" in message and "--weights PATH" in message


def test_packaged_file_is_checked_against_its_whole_sha256():
    source = LITE_PRESETS["efficientnet_lite0"]["weights"]
    path = weights.preset_file("efficientnet_lite0", source, "a .pth file")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read())
    assert digest.hexdigest() == source["sha256"]
    tampered = dict(source, sha256=source["sha256"][:-1] + "0")
    with pytest.raises(OSError, match=f"expected sha256 {tampered['sha256']}, found sha256 {source['sha256']}"):
        weights.preset_file("efficientnet_lite0", tampered, "a .pth file")


def test_resolve_weights_arguments(keras_home, tmp_path):
    source = {"file": "x.pth", "base_url": closed_port_url(""), "sha256": "00000000"}
    suffixes = (".weights.h5", ".pth")
    assert weights.resolve_weights("arch", None, source, "a file", suffixes) is None
    local = tmp_path / "mine.weights.h5"
    local.write_bytes(b"")
    assert weights.resolve_weights("arch", local, source, "a file", suffixes) == (str(local), None)
    converted = tmp_path / "converted.weights.h5"
    converted.write_bytes(b"")
    # A cached conversion is used without looking for the source file.
    assert weights.resolve_weights("arch", "imagenet", source, "a file", suffixes, str(converted)) == (
        str(converted), None)
    other = tmp_path / "mine.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=r"mine\.npz: expected a \.pth or \.weights\.h5 file"):
        weights.resolve_weights("arch", other, source, "a .pth or .weights.h5 file", suffixes)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        weights.resolve_weights("arch", tmp_path / "missing.pth", source, "a file", suffixes)
