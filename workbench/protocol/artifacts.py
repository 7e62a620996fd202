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
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from workbench.errors import ArtifactError, ConfigError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 16
_LOG_LOCK = threading.Lock()


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


class ArtifactStore:
    """A directory of files named by their sha256, served by some HTTP server at ``base_url``.

    ``base_url/artifacts/<sha256>`` must serve ``directory/<sha256>``: the artifact server that
    ``workbench up`` starts, an :class:`ArtifactServer` in this process, or any static file
    server or object store laid out that way. Adding writes to a temporary file and renames it,
    so a server never serves a half-written artifact.

    Example:
        >>> store = ArtifactStore("/tmp/wb-store", "http://127.0.0.1:8765")
        >>> store.url("0" * 64)
        'http://127.0.0.1:8765/artifacts/0000000000000000000000000000000000000000000000000000000000000000'
    """

    def __init__(self, directory: str | os.PathLike[str], base_url: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"artifact base URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")

    def add(self, path: str | os.PathLike[str]) -> str:
        """Copy a file into the store (if not there yet) and return its sha256."""
        source = Path(path)
        if not source.is_file():
            raise ConfigError(f"cannot serve {source}: not a file; pass the path of an existing file")
        sha = sha256_file(source)
        target = self.directory / sha
        if not target.exists():
            tmp = target.with_name(f".{sha}.tmp{os.getpid()}")
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
        """The download URL of an artifact."""
        return f"{self.base_url}/artifacts/{sha256}"


class ArtifactServer(ArtifactStore):
    """Serve files by sha256 over HTTP, with Range support, from one directory.

    Files are stored (copied) under ``directory/<sha256>`` and served at
    ``http://host:port/artifacts/<sha256>``. ``port=0`` picks a free port. ``rate`` caps each
    response at that many bytes per second (a slow link, for tests); ``log`` prints one line
    per request (the server process of ``workbench up`` logs them).

    Example:
        >>> with ArtifactServer("/tmp/wb-artifacts") as server:     # doctest: +SKIP
        ...     sha = server.add("model.onnx")
        ...     fetch(server.url(sha), sha, "/tmp/copy.onnx")
    """

    def __init__(self, directory: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0,
                 rate: float | None = None, log: bool = False) -> None:
        self.requests = 0  # served requests and body bytes: tests and benchmarks read them
        self.bytes_served = 0
        self.rate = rate
        self.log = log
        handler = _make_handler(self)
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ArtifactError(f"cannot serve artifacts on {host}:{port}: {exc}; choose another host or port "
                                "(port 0 picks a free one)") from exc
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        super().__init__(directory, f"http://{shown}:{self.port}")
        self._thread: threading.Thread | None = None
        self._foreground = False

    def start(self) -> ArtifactServer:
        """Start serving in a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="artifact-server", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` is called from another one (or a signal ends the process)."""
        self._foreground = True
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        elif self._foreground:
            self._httpd.shutdown()
            self._foreground = False
        self._httpd.server_close()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, sha256: str) -> str:
        """The download URL of a stored artifact; raises :class:`ConfigError` for one not stored."""
        if self.path(sha256) is None:
            raise ConfigError(f"artifact {sha256[:12]} is not in {self.directory}; add() it first")
        return super().url(sha256)


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
            sent = 0
            began = time.monotonic()
            with open(target, "rb") as handle:
                handle.seek(start)
                remaining = length
                while remaining > 0:
                    if server.rate:  # pace to the rate: sleep until the bytes sent so far are due
                        time.sleep(max(0.0, began + sent / server.rate - time.monotonic()))
                    block = handle.read(min(_CHUNK, remaining))
                    if not block:
                        break
                    try:
                        self.wfile.write(block)
                    except (BrokenPipeError, ConnectionResetError):
                        break  # the client went away; it resumes with a Range request
                    remaining -= len(block)
                    sent += len(block)
                    server.bytes_served += len(block)
            if server.log:
                # One write per line: print() writes the newline separately, so threads would interleave.
                with _LOG_LOCK:
                    sys.stdout.write(f"GET {name[:12]} range={header or '-'} status={int(status)} bytes={sent}\n")
                    sys.stdout.flush()

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

    Only ``http://`` and ``https://`` URLs are fetched. ``size`` (the manifest's) is enforced
    while streaming: a server that sends more is cut off after ``size`` bytes, and the partial
    file is discarded.

    Example:
        >>> fetch("http://127.0.0.1:8765/artifacts/" + "0" * 64, "0" * 64, "/tmp/m.onnx")  # doctest: +SKIP
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError("artifact URLs must be http:// or https:// (the fleet's artifact server); "
                          "file:// and other schemes are refused")
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
        except _LocalWriteError as exc:
            raise exc.error from None  # a full disk is not the server's fault, and retrying does not help
        except (OSError, urllib.error.URLError) as exc:
            last_error = exc  # keep the partial file: the next attempt resumes
    else:
        raise ArtifactError(f"cannot download {url}: {last_error}; check that the artifact server is reachable "
                            "from this device, then retry (the partial download resumes)")
    actual = sha256_file(part)
    if actual != sha256:
        part.unlink(missing_ok=True)
        # The hash of what arrived is not echoed: it would tell a caller something about any file it can point to.
        raise ArtifactError(f"downloaded {url} but its sha256 is not the expected {sha256[:12]}…; "
                            "the partial file was discarded, retry the download")
    os.replace(part, target)
    return target


class _LocalWriteError(Exception):
    """Writing the partial file failed (disk full, file too large): kept apart from network errors."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


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
        try:
            handle = open(part, mode)  # noqa: SIM115  (closed by the with below; only open errors are local here)
        except OSError as exc:
            raise _LocalWriteError(exc) from exc
        limits = [n for n in (size, max_bytes) if n is not None]
        limit = min(limits) if limits else None
        with handle:
            while True:
                # Never more than one byte past the limit is read: a server's Content-Length is not trusted.
                block = response.read(_CHUNK if limit is None else max(min(_CHUNK, limit + 1 - written), 1))
                if not block:
                    break
                written += len(block)
                if limit is not None and written > limit:
                    handle.close()
                    part.unlink(missing_ok=True)
                    if size is not None and written > size:
                        raise ArtifactError(f"artifact at {url} is larger than the {size} bytes its manifest "
                                            "says; the download was stopped and discarded")
                    raise ArtifactError(f"artifact at {url} exceeds the {max_bytes}-byte limit")
                try:
                    handle.write(block)
                    handle.flush()  # a full disk shows here, not later when closing
                except OSError as exc:
                    raise _LocalWriteError(exc) from exc
    if size is not None and written < size:
        raise ConnectionError(f"download of {url} stopped at {written} of {size} bytes")
