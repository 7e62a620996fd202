"""The content-addressed artifact server and the resuming, verifying client, over real HTTP."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.deploy import ArtifactError, ArtifactServer, fetch, sha256_file
from workbench.errors import ConfigError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactServer]:
    with ArtifactServer(tmp_path / "store") as srv:
        yield srv


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(300_000))
    return path


def test_fetch_downloads_identical_bytes_when_artifact_is_served(server: ArtifactServer, blob: Path,
                                                                 tmp_path: Path) -> None:
    sha = server.add(blob)
    out = fetch(server.url(sha), sha, tmp_path / "dl" / "model.bin", size=blob.stat().st_size)
    assert out.read_bytes() == blob.read_bytes()
    assert sha == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert not (tmp_path / "dl" / "model.bin.part").exists()


def test_fetch_resumes_with_range_when_partial_file_exists(server: ArtifactServer, blob: Path, tmp_path: Path) -> None:
    sha = server.add(blob)
    data = blob.read_bytes()
    dest = tmp_path / "dl" / "model.bin"
    dest.parent.mkdir()
    (dest.parent / "model.bin.part").write_bytes(data[:100_000])
    fetch(server.url(sha), sha, dest, size=len(data))
    assert dest.read_bytes() == data
    # The server counts a block after writing it, so its count can trail the client's last read briefly.
    deadline = time.monotonic() + 5
    while server.bytes_served < len(data) - 100_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.bytes_served == len(data) - 100_000


def test_fetch_skips_download_when_destination_already_verified(server: ArtifactServer, blob: Path,
                                                                tmp_path: Path) -> None:
    sha = server.add(blob)
    dest = tmp_path / "copy.bin"
    dest.write_bytes(blob.read_bytes())
    fetch(server.url(sha), sha, dest)
    assert server.bytes_served == 0


def test_fetch_raises_and_discards_when_hash_does_not_match(server: ArtifactServer, blob: Path,
                                                            tmp_path: Path) -> None:
    sha = server.add(blob)
    dest = tmp_path / "dl.bin"
    wrong = "f" * 64
    with pytest.raises(ArtifactError, match="sha256"):
        fetch(server.url(sha), wrong, dest)
    assert not dest.exists()
    assert not (tmp_path / "dl.bin.part").exists()


def test_fetch_raises_when_artifact_is_unknown(server: ArtifactServer, tmp_path: Path) -> None:
    missing = "a" * 64
    url = f"http://127.0.0.1:{server.port}/artifacts/{missing}"
    with pytest.raises(ArtifactError, match="404"):
        fetch(url, missing, tmp_path / "x.bin")


def test_fetch_rejects_malformed_sha_when_called(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        fetch("http://127.0.0.1:1/artifacts/x", "xyz", tmp_path / "x.bin")


def test_server_answers_206_with_content_range_when_range_requested(server: ArtifactServer, blob: Path) -> None:
    sha = server.add(blob)
    request = urllib.request.Request(server.url(sha), headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 10-19/{blob.stat().st_size}"
        assert response.read() == blob.read_bytes()[10:20]


def test_server_answers_416_when_range_is_outside_file(server: ArtifactServer, blob: Path) -> None:
    sha = server.add(blob)
    request = urllib.request.Request(server.url(sha), headers={"Range": "bytes=999999999-"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    info.value.close()
    assert info.value.code == 416


def test_add_stores_file_by_hash_when_added(server: ArtifactServer, blob: Path) -> None:
    sha = server.add(blob)
    stored = server.path(sha)
    assert stored is not None and sha256_file(stored) == sha


def test_url_raises_when_artifact_not_added(server: ArtifactServer) -> None:
    with pytest.raises(ConfigError, match="add"):
        server.url("b" * 64)
