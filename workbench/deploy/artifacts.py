"""A content-addressed artifact server and a resuming, verifying download client.

Model files never travel over MQTT (payloads are capped at 256 KiB): the workbench serves
them over HTTP by their sha256 and a device fetches them with :func:`fetch`, which resumes
an interrupted download with a Range request and only ever leaves a verified file behind.
Only the standard library is used, so the agent's install stays small.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, WorkbenchError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 16


class ArtifactError(WorkbenchError):
    """An artifact could not be served, downloaded or verified."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"; _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:12]
        'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactServer:
    """Serve files by sha256 over HTTP, with Range support, from one directory.

    Files are stored (copied) under ``directory/<sha256>`` and served at
    ``http://host:port/artifacts/<sha256>``. ``port=0`` picks a free port.

    Example:
        >>> with ArtifactServer("/tmp/wb-artifacts") as server:     # doctest: +SKIP
        ...     sha = server.add("model.onnx")
        ...     fetch(server.url(sha), sha, "/tmp/copy.onnx")
    """

    def __init__(self, directory: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.requests = 0  # served requests and body bytes: tests and benchmarks read them
        self.bytes_served = 0
        handler = _make_handler(self)
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ArtifactError(f"cannot serve artifacts on {host}:{port}: {exc}; choose another host or port "
                                "(port 0 picks a free one)") from exc
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> ArtifactServer:
        """Start serving in a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="artifact-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, path: str | os.PathLike[str]) -> str:
        """Copy a file into the store (if not there yet) and return its sha256."""
        source = Path(path)
        if not source.is_file():
            raise ConfigError(f"cannot serve {source}: not a file; pass the path of an existing file")
        sha = sha256_file(source)
        target = self.directory / sha
        if not target.exists():
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        return sha

    def path(self, sha256: str) -> Path | None:
        """The stored file for ``sha256``, or None."""
        if not _SHA256.match(sha256):
            return None
        target = self.directory / sha256
        return target if target.is_file() else None

    def url(self, sha256: str) -> str:
        """The download URL of a stored artifact."""
        if self.path(sha256) is None:
            raise ConfigError(f"artifact {sha256[:12]} is not in {self.directory}; add() it first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/artifacts/{sha256}"


def _make_handler(server: ArtifactServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a download per candidate would flood the notebook's log

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, *, body: bool) -> None:
            server.requests += 1
            name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
            target = server.path(name) if self.path.startswith("/artifacts/") else None
            if target is None:
                self._error(HTTPStatus.NOT_FOUND, f"no artifact {name[:64]!r}")
                return
            size = target.stat().st_size
            start, end = 0, size - 1
            status = HTTPStatus.OK
            header = self.headers.get("Range")
            if header:
                match = _RANGE.match(header.strip())
                if not match or (not match.group(1) and not match.group(2)):
                    self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"bad range {header!r}", size)
                    return
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(0, size - int(match.group(2)))
                if start >= size or start > end:
                    self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"range {header!r} outside {size}", size)
                    return
                status = HTTPStatus.PARTIAL_CONTENT
            length = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{name}"')
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return
            with open(target, "rb") as handle:
                handle.seek(start)
                remaining = length
                while remaining > 0:
                    block = handle.read(min(_CHUNK, remaining))
                    if not block:
                        break
                    try:
                        self.wfile.write(block)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client went away; it resumes with a Range request
                    remaining -= len(block)
                    server.bytes_served += len(block)

        def _error(self, status: HTTPStatus, message: str, size: int | None = None) -> None:
            data = message.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            if size is not None:
                self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            self.wfile.write(data)

    return Handler


def fetch(
    url: str,
    sha256: str,
    dest: str | os.PathLike[str],
    *,
    size: int | None = None,
    timeout: float = 30.0,
    max_bytes: int | None = None,
    attempts: int = 3,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial download, and verify its sha256.

    The bytes land in ``dest + ".part"`` first; a later call resumes from there with an HTTP
    Range request. Only a file whose hash matches is moved to ``dest`` (atomically). If
    ``dest`` already holds the right bytes nothing is downloaded.

    Example:
        >>> fetch("http://127.0.0.1:8765/artifacts/" + "0" * 64, "0" * 64, "/tmp/m.onnx")  # doctest: +SKIP
    """
    if not _SHA256.match(sha256):
        raise ConfigError(f"sha256 {sha256!r} is not 64 lowercase hex digits; pass the artifact's sha256")
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and sha256_file(target) == sha256:
        return target
    part = target.with_name(target.name + ".part")
    last_error: Exception | None = None
    for _ in range(max(1, attempts)):
        try:
            _download(url, part, size=size, timeout=timeout, max_bytes=max_bytes)
            break
        except (OSError, urllib.error.URLError) as exc:
            last_error = exc  # keep the partial file: the next attempt resumes
    else:
        raise ArtifactError(f"cannot download {url}: {last_error}; check that the artifact server is reachable "
                            "from this device, then retry (the partial download resumes)")
    actual = sha256_file(part)
    if actual != sha256:
        part.unlink(missing_ok=True)
        raise ArtifactError(f"downloaded {url} but its sha256 is {actual[:12]}…, expected {sha256[:12]}…; "
                            "the partial file was discarded, retry the download")
    os.replace(part, target)
    return target


def _download(url: str, part: Path, *, size: int | None, timeout: float, max_bytes: int | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    if max_bytes is not None and size is not None and size > max_bytes:
        raise ArtifactError(f"artifact at {url} is {size} bytes, over the {max_bytes}-byte limit")
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        if exc.code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and have:
            part.unlink()  # stale partial file larger than the artifact: start over
            raise
        raise ArtifactError(f"artifact server answered {exc.code} for {url}: {exc.reason}; "
                            "check the URL and sha256") from exc
    with response:
        resumed = response.status == HTTPStatus.PARTIAL_CONTENT
        mode = "ab" if resumed else "wb"  # a server without Range support sends it all again
        written = have if resumed else 0
        with open(part, mode) as handle:
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                written += len(block)
                if max_bytes is not None and written > max_bytes:
                    raise ArtifactError(f"artifact at {url} exceeds the {max_bytes}-byte limit")
                handle.write(block)
    if size is not None and written < size:
        raise ConnectionError(f"download of {url} stopped at {written} of {size} bytes")
