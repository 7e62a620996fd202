"""A device's periodic work as a task on the process's shared threads, not a thread of its own.

The timer lives on the process's :class:`~workbench.agent._netloop.NetLoop`; each run goes to a small
pool of worker threads shared by every device of the process, since a run may block (SQLite, a
publish waiting for the link). A task never runs twice at once, and a wake-up during a run makes it
run again right after, so nothing that woke it is missed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from workbench.agent._netloop import NetLoop, Timer

log = logging.getLogger("workbench.agent")

# Enough that a few slow runs (a publish waiting for a slow link, a model load) do not hold up the
# rest; few enough that a hundred idle devices cost a handful of threads.
POOL_WORKERS = max(4, min(8, (os.cpu_count() or 2) * 2))

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def shared_pool() -> ThreadPoolExecutor:
    """The process's worker pool for the devices' blocking jobs (made on first use).

    Example:
        >>> shared_pool().submit(sum, [1, 2]).result()
        3
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="wb-job")
        return _pool


class Task:
    """Runs ``run`` on the shared pool, again after the seconds it returns (None: only when woken).

    Example:
        >>> ticks = []
        >>> task = Task("tick", lambda: ticks.append(1) or None)
        >>> task.start(); task.stop()
    """

    def __init__(self, name: str, run: Callable[[], float | None], *, retry_s: float = 0.5) -> None:
        self.name = name
        self._run = run
        self._retry_s = retry_s  # the pause after a run that raised: a bug must not spin
        self._lock = threading.Lock()
        self._timer: Timer | None = None
        self._running = False
        self._again = False
        self._stopped = False
        self._started = False
        self._idle = threading.Event()
        self._idle.set()
        self._worker: int | None = None

    def start(self, delay: float = 0.0) -> None:
        """Schedule the first run ``delay`` seconds from now."""
        with self._lock:
            if self._stopped or self._started:
                return
            self._started = True
            self._timer = NetLoop.get().call_later(delay, self._submit)

    def wake(self) -> None:
        """Run as soon as possible (after the current run, if one is going on); safe from any thread."""
        with self._lock:
            if self._stopped or not self._started:
                return
            if self._running:
                self._again = True
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = NetLoop.get().call_later(0.0, self._submit)

    def stop(self, timeout: float = 5.0) -> None:
        """No more runs; wait up to ``timeout`` s for one in progress (not when called from the run itself)."""
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._worker != threading.get_ident():
            self._idle.wait(timeout)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _submit(self) -> None:
        with self._lock:
            self._timer = None
            if self._stopped:
                return
            if self._running:
                self._again = True
                return
            self._running = True
            self._idle.clear()
        try:
            shared_pool().submit(self._execute)
        except RuntimeError:  # the pool is shut down: the interpreter is exiting
            with self._lock:
                self._running = False
                self._idle.set()

    def _execute(self) -> None:
        self._worker = threading.get_ident()
        delay: float | None
        try:
            delay = self._run()
        except Exception:  # one device's bug must not end its periodic work
            log.exception("%s: a run failed; retrying in %g s", self.name, self._retry_s)
            delay = self._retry_s
        finally:
            self._worker = None
        with self._lock:
            self._running = False
            self._idle.set()
            if self._stopped:
                return
            if self._again:
                self._again, delay = False, 0.0
            if delay is not None:
                self._timer = NetLoop.get().call_later(delay, self._submit)
