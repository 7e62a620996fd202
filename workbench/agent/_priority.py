"""Run install work in a thread the OS schedules after the serving threads.

Measured with benchmarks/deploy.py: while an install downloads, hashes and loads a model on
the same cores, a small model's serving throughput fell to about 0.6x; the same install in a
thread with niceness +10 left serving at about its full rate (the install itself took longer).
Linux sets niceness per thread (``setpriority`` on the thread id). A thread can lower its own
priority without privileges but not raise it again, so the work runs in a fresh thread that
ends with it. Elsewhere the work simply runs in that thread at normal priority.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
BACKGROUND_NICENESS = 10


def run_in_background(work: Callable[[], T], *, niceness: int = BACKGROUND_NICENESS) -> T:
    """Run ``work()`` in a new lower-priority thread, wait for it, return its result or raise its exception.

    Example:
        >>> run_in_background(lambda: 6 * 7)
        42
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            if niceness and hasattr(os, "setpriority"):
                try:
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
                except OSError:
                    pass  # not permitted here: run at normal priority
            outcome.append(work())
        except BaseException as exc:  # handed to the caller, who decides
            failure.append(exc)

    thread = threading.Thread(target=target, name="wb-install", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
