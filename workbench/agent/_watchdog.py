"""systemd's notify protocol: READY, STATUS and watchdog pings, sent only while the agent can hear.

The protocol is one datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(``@name`` is an abstract socket), so it needs no library. Under ``WatchdogSec=`` systemd
kills and restarts a service whose pings stop; the agent stops pinging when a device's
network thread has died, because such an agent still runs but no longer hears commands.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("workbench.agent")

_MAX_MESSAGE = 4096  # systemd reads notify datagrams into a buffer of this order; a status line is short


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``) to systemd; False when not under systemd.

    Example:
        >>> notify("READY=1", environ={})
        False
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    data = message.encode("utf-8", "replace")[:_MAX_MESSAGE]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(data, target)
    except OSError as exc:
        # systemd gone or the socket not ours: the agent keeps running; systemd will judge it by its absence.
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings asked by systemd (half of ``WatchdogSec=``), or None when none is due.

    Example:
        >>> watchdog_interval({"WATCHDOG_USEC": "30000000"})
        15.0
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # the watchdog belongs to another process of the unit
    return usec / 2e6


class Watchdog:
    """Tells systemd the agent is ready, and pings its watchdog while every network thread lives.

    ``deaf`` returns the devices whose network thread died (empty when all are well).

    Example:
        >>> dog = Watchdog(lambda: [], environ={})
        >>> dog.ready("2 devices connecting")
        False
    """

    def __init__(self, deaf: Callable[[], list[str]], *, environ: Mapping[str, str] | None = None) -> None:
        self._deaf = deaf
        self._env = dict(os.environ if environ is None else environ)
        self.interval = watchdog_interval(self._env)
        self._last_ping = 0.0
        self.stopped_pinging: str | None = None

    @property
    def poll_seconds(self) -> float:
        """How often the main loop should call :meth:`tick` (often enough to ping in time)."""
        return 0.2 if self.interval is None else min(0.2, self.interval / 2)

    def ready(self, status: str) -> bool:
        return notify(f"READY=1\nSTATUS={status}", self._env)

    def status(self, status: str) -> bool:
        return notify(f"STATUS={status}", self._env)

    def tick(self, now: float | None = None) -> None:
        """Ping when due, unless a network thread died: then say so once and never ping again."""
        if self.interval is None or self.stopped_pinging is not None:
            return
        deaf = self._deaf()
        if deaf:
            self.stopped_pinging = (f"network thread of {', '.join(deaf)} died; stopped the watchdog pings so "
                                    "systemd restarts the agent")
            log.error(self.stopped_pinging)
            self.status(self.stopped_pinging)
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.interval and notify("WATCHDOG=1", self._env):
            self._last_ping = now

    def stopping(self) -> None:
        notify("STOPPING=1", self._env)
