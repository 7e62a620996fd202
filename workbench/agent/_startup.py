"""What a starting agent checks, and how it waits: a writable data dir, its TLS files, the broker.

A service must not crash-loop on a condition that time or an operator fixes (a broker that
is still booting, a certificate not yet copied): it logs one clear line and retries with
backoff. A condition only a person can fix (a data dir it may not write) ends the process
with :data:`EXIT_NO_PERMISSION` and the path and the permission it lacks.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from workbench.errors import ConfigError

log = logging.getLogger("workbench.agent")

EXIT_NO_PERMISSION = 77  # sysexits' EX_NOPERM: a restart will not help until someone fixes the permission


class DataDirError(ConfigError):
    """The agent cannot write its data directory."""


def _user() -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _describe(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return ""
    try:
        import pwd

        owner = pwd.getpwuid(info.st_uid).pw_name
    except (ImportError, KeyError):
        owner = str(info.st_uid)
    return f" (owner {owner}, mode {stat.filemode(info.st_mode)})"


def check_data_dir(path: Path) -> None:
    """Create ``path`` if needed and prove this process can write files in it.

    Raises :class:`DataDirError` naming the directory and the permission it lacks.

    Example:
        >>> import tempfile; check_data_dir(Path(tempfile.mkdtemp()) / "device")
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    parent = path.parents[len(missing) - 1] if missing else path
    if missing and not os.access(parent, os.W_OK | os.X_OK):
        raise DataDirError(
            f"cannot create the data dir {path}: {_user()} lacks write permission on {parent}{_describe(parent)}; "
            f"create {path} and chown it to this user, or choose another --data-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create the data dir {path}: {exc.strerror or exc}; choose another --data-dir") \
            from None
    if not path.is_dir():
        raise DataDirError(f"the data dir {path} is not a directory; choose another --data-dir")
    lacking = [name for name, flag in (("read", os.R_OK), ("write", os.W_OK), ("execute (search)", os.X_OK))
               if not os.access(path, flag)]
    if lacking:
        raise DataDirError(
            f"cannot use the data dir {path}: {_user()} lacks {' and '.join(lacking)} permission on it"
            f"{_describe(path)}; chown it to this user (the unit's StateDirectory= does) or choose another --data-dir")
    probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = "it is on a read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise DataDirError(f"cannot write in the data dir {path}: {why}; give the agent a writable --data-dir "
                           "(ReadWritePaths= under ProtectSystem=strict)") from None


def _problem(kind: str, path: Path, load: Callable[[Path], object] | None) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        if load is not None:
            load(path)
    except FileNotFoundError:
        return f"the {kind} {path} is missing"
    except PermissionError:
        return f"the {kind} {path} is not readable by {_user()}{_describe(path)}"
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"the {kind} {path} cannot be used: {exc}"
    return None


def _load_ca(path: Path) -> object:
    return ssl.create_default_context(cafile=str(path))


CA_FILE = "TLS CA file"
PASSWORD_FILE = "broker password file"
# A file of these kinds must also load, not just open: a CA file that is not a certificate waits too.
_LOADERS: dict[str, Callable[[Path], object]] = {CA_FILE: _load_ca}


def wait_for_files(files: list[tuple[str, Path]], stop: threading.Event, *, min_delay: float = 1.0,
                   max_delay: float = 60.0, on_problem: Callable[[str], object] | None = None,
                   tick: Callable[[], object] | None = None, tick_every: float = 0.2) -> bool:
    """Wait until every ``(kind, path)`` can be read (CA certificates: loaded); False if ``stop`` came first.

    Logs one line per new problem (and passes it to ``on_problem``), and one when all are
    resolved; retries with doubling delays between ``min_delay`` and ``max_delay`` seconds,
    calling ``tick`` every ``tick_every`` seconds meanwhile (the service watchdog's ping).

    Example:
        >>> wait_for_files([], threading.Event())
        True
    """
    delay, reported = min_delay, ""
    while True:
        problems = [p for kind, path in files if (p := _problem(kind, path, _LOADERS.get(kind))) is not None]
        if not problems:
            if reported:
                log.warning("%s: now readable; starting", ", ".join(str(path) for _, path in files))
            return True
        text = "; ".join(problems)
        if text != reported:
            log.error("%s; retrying with backoff (%g s up to %g s)", text, min_delay, max_delay)
            reported = text
            if on_problem is not None:
                on_problem(text)
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            if stop.wait(min(remaining, tick_every)):
                return False
            if tick is not None:
                tick()
        delay = min(delay * 2, max_delay)


class ConnectFailureLog:
    """One clear log line when the broker cannot be reached, not one per retry; one more when it can.

    Example:
        >>> failures = ConnectFailureLog("pi-1", "mqtt://gw:1883")
    """

    def __init__(self, device_id: str, url: str) -> None:
        self.device_id, self.url = device_id, url
        self.failures = 0
        self._reported = ""

    def failed(self) -> None:
        # paho calls on_connect_fail inside its `except OSError`: the exception is the current one.
        error = sys.exc_info()[1]
        reason = f"{type(error).__name__}: {error}" if error is not None else "connection failed"
        self.failures += 1
        if reason != self._reported:
            log.error("%s: cannot reach the MQTT broker at %s (%s); retrying with backoff (1 s up to 30 s)",
                      self.device_id, self.url, reason)
            self._reported = reason

    def connected(self) -> None:
        if self.failures:
            log.warning("%s: reached the broker at %s after %d failed attempts", self.device_id, self.url,
                        self.failures)
        self.failures, self._reported = 0, ""
