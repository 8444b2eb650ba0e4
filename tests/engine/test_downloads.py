"""Downloads of weights from URLs (`maskrcnn.download`): cache, checksums, failures.

The URLs are file:// URLs of files the tests write, so every test runs offline; resolve_weights does not
read the content, so the files are plain bytes (tests/engine/test_checkpoint.py loads real checkpoints).
"""

from __future__ import annotations

import hashlib
import os

import pytest

from maskrcnn.checkpoints import cache_dir, cached_path, resolve_weights

PAYLOAD = os.urandom(3 << 20)  # 3 MiB: several of torch hub's read chunks
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch):
    root = tmp_path / "home"
    monkeypatch.setenv("MASKRCNN_HOME", str(root))
    return root


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "served" / "weights.pt"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def cache_listing(home) -> list[str]:
    """The name of every file in the cache (in its URLs' folders), hidden temporary files included."""
    folder = home / "checkpoints"
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_cache_dir_follows_maskrcnn_home(home, monkeypatch, tmp_path):
    assert cache_dir() == home / "checkpoints"
    monkeypatch.delenv("MASKRCNN_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "maskrcnn" / "checkpoints"


def test_download_once_then_the_cache_is_used(home, source):
    path = resolve_weights(source.as_uri(), sha256=DIGEST, progress=False)
    assert path == cached_path(source.as_uri()) and path.parent.parent == home / "checkpoints"
    assert path.read_bytes() == PAYLOAD
    assert cache_listing(home) == ["weights.pt"]
    stat = path.stat()
    # a second call does not download: the source is gone and the cached file is the same inode,
    # unmodified; a prefix of the digest (any case) is enough
    source.unlink()
    for sha in (DIGEST, DIGEST[:8].upper(), None):
        again = resolve_weights(source.as_uri(), sha256=sha, progress=False)
        assert again == path
        assert (again.stat().st_ino, again.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert cache_listing(home) == ["weights.pt"]


def test_corrupted_download_names_url_and_hashes_and_leaves_nothing(home, source):
    source.write_bytes(PAYLOAD[:-1] + b"\0")  # the served file differs by its last byte
    actual = hashlib.sha256(source.read_bytes()).hexdigest()
    url = source.as_uri()
    with pytest.raises(ValueError) as info:
        resolve_weights(url, sha256=DIGEST, progress=False)
    message = str(info.value)
    assert message.startswith(f"checksum mismatch for {url}: expected sha256 {DIGEST}..., got {actual}")
    assert cache_listing(home) == []  # no partial or temporary file is left behind
    # a stale cached file that no longer matches is downloaded again (and replaced atomically)
    source.write_bytes(PAYLOAD)
    stale = cached_path(url)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    assert resolve_weights(url, sha256=DIGEST[:16], progress=False).read_bytes() == PAYLOAD
    assert cache_listing(home) == ["weights.pt"]


def test_hub_style_name_is_checked_without_sha256(home, source):
    good = source.with_name(f"resnet-{DIGEST[:8]}.pth")
    source.rename(good)
    assert resolve_weights(good.as_uri(), progress=False).read_bytes() == PAYLOAD
    wrong = "0" * 8 if not DIGEST.startswith("0") else "1" * 8
    bad = good.with_name(f"resnet-{wrong}.pth")
    good.rename(bad)
    with pytest.raises(
        ValueError, match=rf"checksum mismatch for .*resnet-{wrong}\.pth: expected sha256 {wrong}"
    ):
        resolve_weights(bad.as_uri(), progress=False)
    assert cache_listing(home) == [good.name]


def test_bad_sha256_and_missing_url_are_clear_errors(home, source, tmp_path):
    with pytest.raises(
        ValueError, match=r"sha256 for file://.*weights\.pt must be 8 to 64 hex digits.*'abc'"
    ):
        resolve_weights(source.as_uri(), sha256="abc", progress=False)
    with pytest.raises(ValueError, match=r"must be 8 to 64 hex digits.*'not-hex-at-all'"):
        resolve_weights(str(source), sha256="not-hex-at-all")
    missing = (tmp_path / "nowhere" / "gone.pt").as_uri()
    with pytest.raises(ValueError, match=rf"could not download {missing}: .*No such file"):
        resolve_weights(missing, progress=False)
    assert cache_listing(home) == []
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        resolve_weights(str(tmp_path / "missing.pt"), sha256=DIGEST)
