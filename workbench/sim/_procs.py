"""Start detached processes and stop exactly the ones we started."""

from __future__ import annotations

import atexit
import contextlib
import re
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import psutil

# Popen objects of the processes this Python started: kept so they are reaped when they exit
# (and not garbage-collected while running, which warns), even though they outlive us.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _release_children() -> None:
    # Reap the children that have exited; the ones still running are a fleet left up on purpose
    # (`workbench up` returns while it runs), so Popen's "still running" warning at exit is not a leak.
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is None:
            warnings.filterwarnings("ignore", message=re.escape(f"subprocess {pid} is still running"),
                                    category=ResourceWarning)
        else:
            del _CHILDREN[pid]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def spawn(argv: list[str], log_file: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> dict[str, Any]:
    """Start ``argv`` in its own session (it outlives this command); return its identity."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, cwd=cwd,
        )
    _CHILDREN[proc.pid] = proc
    return {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "argv": argv,
            "log": str(log_file)}


def _process(record: dict[str, Any]) -> psutil.Process | None:
    # A pid alone could have been reused by an unrelated process since: check its start time too.
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > 0.01:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, KeyError, ValueError, TypeError):
        return None


def is_alive(record: dict[str, Any]) -> bool:
    return _process(record) is not None


def reap(record: dict[str, Any]) -> None:
    """Collect an exited child so it does not linger as a zombie (no-op for others)."""
    child = _CHILDREN.get(int(record.get("pid", -1)))
    if child is not None and child.poll() is not None:
        del _CHILDREN[child.pid]


def stop(records: list[dict[str, Any]], *, grace: float = 5.0) -> None:
    """SIGTERM each recorded process that is still ours, then SIGKILL what outlives ``grace``."""
    procs = [proc for proc in map(_process, records) if proc is not None]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    for record in records:
        reap(record)


def wait_port(host: str, port: int, *, timeout: float, proc: dict[str, Any] | None = None) -> bool:
    """Wait until something listens on ``host:port``; False on timeout or if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if proc is not None and not is_alive(proc):
                return False
            time.sleep(0.05)
    return False


def spawn_listening(argv: list[str], log_file: Path, host: str, port: int, *, wait: float, what: str,
                    error: type[Exception]) -> dict[str, Any]:
    """:func:`spawn` a server and wait until it listens on ``host:port``; else stop it and raise ``error``.

    The error names ``what`` and quotes the end of its log, which is where a server says why it did not start.

    Example:
        >>> spawn_listening(argv, log, "127.0.0.1", 4222, wait=20, what="nats", error=BrokerError)  # doctest: +SKIP
    """
    proc = spawn(argv, log_file)
    if not wait_port(host, port, timeout=wait, proc=proc):
        stop([proc])
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise error(f"{what} did not start listening on {host}:{port} within {wait:g} s; its log ({log_file}) "
                    f"ends with:\n{tail}")
    return proc
