"""One selector thread per agent process: it drives every device's paho client and runs their timers.

paho's own ``loop_start`` costs a thread (and a wake-up socket pair) per client; a process of 100
simulated devices then had 100 network threads contending for one GIL, each hand-over a context
switch. Here one thread waits on every client's socket at once, calls ``loop_read``/``loop_write``
when a socket is ready and ``loop_misc`` (keepalive pings) once a second for all of them, and runs
timers (reconnect backoff, claim timeouts, the services' periodic work) between. Timer callbacks must
be quick: blocking work (SQLite, ONNX Runtime, files) goes to the process's shared worker pool.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import paho.mqtt.client as mqtt

log = logging.getLogger("workbench.agent")

_T = TypeVar("_T")

# loop_misc sends keepalive pings and notices a dead broker; paho's own loop calls it about once a second.
MISC_INTERVAL_S = 1.0
# Devices of one process between CONNECT and SUBACK at once. On NATS each is a JetStream session look-up
# and a consumer create: a fleet's every device at once queued them past NATS's 5 s timeout (docs/scaling.md).
CONNECTS_IN_FLIGHT = 10


@dataclass(order=True)
class Timer:
    """A callback due at ``when`` (monotonic seconds) on the loop thread; :meth:`cancel` drops it."""

    when: float
    seq: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    # Ordered by due time for the heap, but kept in sets by identity (a link's pending deliveries).
    __hash__ = object.__hash__

    def cancel(self) -> None:
        """Drop the timer if it has not run yet (safe from any thread).

        Example:
            >>> NetLoop.get().call_later(60, print).cancel()
        """
        self.cancelled = True


@dataclass
class _Link:
    client: mqtt.Client
    # Called on the loop thread with the exception when a client's read/write/misc raised: the
    # client's callbacks let a bug escape, which would have ended paho's own network thread.
    on_crash: Callable[[BaseException], None]
    sock: Any = None
    want_write: bool = False


class NetLoop:
    """The process's network and timer thread; :meth:`get` returns the one instance, started on first use.

    Example:
        >>> loop = NetLoop.get()
        >>> loop.call_soon_wait(lambda: 1 + 1, timeout=5)
        2
    """

    _instance: ClassVar[NetLoop | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: deque[Callable[[], object]] = deque()
        self._timers: list[Timer] = []
        self._timer_lock = threading.Lock()
        self._seq = itertools.count()
        self._links: dict[mqtt.Client, _Link] = {}
        self._by_fd: dict[int, _Link] = {}
        self._woken = False
        self._in_flight = 0
        self._gate_queue: deque[Callable[[], object]] = deque()
        self.wakeups = 0  # selector returns: the benchmark reads it per device
        self._thread = threading.Thread(target=self._run, name="wb-netloop", daemon=True)
        self._thread.start()

    @classmethod
    def get(cls) -> NetLoop:
        """The process's loop, started (again, if its thread ended) on first use.

        Example:
            >>> NetLoop.get() is NetLoop.get()
            True
        """
        with cls._instance_lock:
            if cls._instance is None or not cls._instance.alive:
                cls._instance = NetLoop()
            return cls._instance

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    # -- scheduling (any thread) ------------------------------------------------------

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop thread as soon as it is free.

        Example:
            >>> NetLoop.get().call_soon(lambda: None)
        """
        self._calls.append(callback)
        self._wake()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` on the loop thread after ``delay`` seconds; returns a cancellable :class:`Timer`.

        Example:
            >>> NetLoop.get().call_later(0.01, lambda: None).cancel()
        """
        timer = Timer(time.monotonic() + max(delay, 0.0), next(self._seq), callback)
        with self._timer_lock:
            heapq.heappush(self._timers, timer)
            earliest = self._timers[0] is timer
        if earliest and not self.in_loop():
            self._wake()
        return timer

    def call_soon_wait(self, callback: Callable[[], _T], *, timeout: float) -> _T:
        """Run ``callback`` on the loop thread and return its result (directly when already on it).

        Raises ``TimeoutError`` if the loop did not run it within ``timeout`` seconds.

        Example:
            >>> NetLoop.get().call_soon_wait(lambda: "done", timeout=5)
            'done'
        """
        if self.in_loop():
            return callback()
        future: Future[_T] = Future()

        def run() -> None:
            try:
                future.set_result(callback())
            except BaseException as exc:
                future.set_exception(exc)

        self.call_soon(run)
        return future.result(timeout)

    def _wake(self) -> None:
        if self._woken:
            return  # one byte is already waiting: the loop will see every queued call
        self._woken = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # -- connection pacing (loop thread) ---------------------------------------------------

    def gate(self, connect: Callable[[], object]) -> None:
        """Run ``connect`` now if fewer than :data:`CONNECTS_IN_FLIGHT` connects are in flight, else in turn.

        Each run must be matched by one :meth:`release` (the connection subscribed, failed or was lost).

        Example:
            >>> loop.gate(agent._connect)   # doctest: +SKIP
        """
        if self._in_flight < CONNECTS_IN_FLIGHT:
            self._in_flight += 1
            connect()
        else:
            self._gate_queue.append(connect)

    def release(self) -> None:
        """One gated connect is done: let the next waiting one run."""
        self._in_flight = max(0, self._in_flight - 1)
        if self._gate_queue and self._in_flight < CONNECTS_IN_FLIGHT:
            self._in_flight += 1
            self.call_soon(self._gate_queue.popleft())

    # -- clients (loop thread) ---------------------------------------------------------

    def attach(self, client: mqtt.Client, on_crash: Callable[[BaseException], None]) -> None:
        """Drive ``client`` from this loop: its sockets are watched here from its next connect on.

        Must be called before ``client.connect``; chains ``on_socket_open`` and friends.

        Example:
            >>> loop.attach(client, on_crash=lambda exc: None)   # doctest: +SKIP
        """
        link = _Link(client, on_crash)
        self._links[client] = link
        previous_open = client.on_socket_open

        def on_open(c: mqtt.Client, userdata: Any, sock: Any) -> None:
            if previous_open is not None:
                previous_open(c, userdata, sock)
            self.call_soon_or_now(lambda: self._watch(link, sock))

        def on_close(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            self.call_soon_or_now(lambda: self._unwatch(link, sock))

        def on_register_write(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            self.call_soon_or_now(lambda: self._set_write(link, sock, True))

        def on_unregister_write(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            self.call_soon_or_now(lambda: self._set_write(link, sock, False))

        client.on_socket_open = on_open
        client.on_socket_close = on_close
        client.on_socket_register_write = on_register_write
        client.on_socket_unregister_write = on_unregister_write

    def detach(self, client: mqtt.Client) -> None:
        """Stop driving ``client`` (loop thread); its socket, if any, is no longer watched."""
        link = self._links.pop(client, None)
        if link is not None and link.sock is not None:
            self._unwatch(link, link.sock)

    def call_soon_or_now(self, callback: Callable[[], object]) -> None:
        if self.in_loop():
            callback()
        else:
            self.call_soon(callback)

    def _watch(self, link: _Link, sock: Any) -> None:
        if link.sock is not None and link.sock is not sock:
            self._unwatch(link, link.sock)
        if self._links.get(link.client) is not link or sock.fileno() < 0:
            return
        link.sock = sock
        link.want_write = link.client.want_write()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.want_write else 0)
        try:
            self._selector.register(sock, events, link)
        except (KeyError, ValueError):
            self._selector.modify(sock, events, link)
        self._by_fd[sock.fileno()] = link

    def _unwatch(self, link: _Link, sock: Any) -> None:
        if link.sock is not sock:
            return
        link.sock = None
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _set_write(self, link: _Link, sock: Any, want: bool) -> None:
        if link.sock is not sock or link.want_write == want:
            return
        link.want_write = want
        try:
            self._selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), link)
        except (KeyError, ValueError):
            link.sock = None

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while True:
            try:
                now = time.monotonic()
                with self._timer_lock:
                    due = self._timers[0].when if self._timers else now + 60
                timeout = max(0.0, min(due, next_misc) - now) if not self._calls else 0.0
                events = self._selector.select(timeout)
                self.wakeups += 1
                for key, mask in events:
                    link = key.data
                    if link is None:
                        self._drain_wake()
                        continue
                    self._serve(link, mask)
                self._run_calls()
                self._run_timers()
                if time.monotonic() >= next_misc:
                    next_misc = time.monotonic() + MISC_INTERVAL_S
                    for link in list(self._links.values()):
                        if link.sock is not None:
                            self._guarded(link, link.client.loop_misc)
            except Exception:  # the loop serves every device of the process: it must outlive any one bug
                log.exception("network loop: unexpected error; continuing")

    def _drain_wake(self) -> None:
        self._woken = False
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _serve(self, link: _Link, mask: int) -> None:
        if mask & selectors.EVENT_READ and link.sock is not None:
            self._guarded(link, link.client.loop_read)
        if mask & selectors.EVENT_WRITE and link.sock is not None:
            self._guarded(link, link.client.loop_write)

    def _guarded(self, link: _Link, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:
            try:
                link.on_crash(exc)
            except Exception:
                log.exception("network loop: crash handler failed")

    def _run_calls(self) -> None:
        for _ in range(len(self._calls)):
            callback = self._calls.popleft()
            try:
                callback()
            except Exception:
                log.exception("network loop: a queued call failed")

    def _run_timers(self) -> None:
        now = time.monotonic()
        while True:
            with self._timer_lock:
                if not self._timers or self._timers[0].when > now:
                    return
                timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            try:
                timer.callback()
            except Exception:
                log.exception("network loop: a timer failed")
