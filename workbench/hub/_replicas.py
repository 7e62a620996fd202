"""Hub replicas: who may share a PostgreSQL store, and which replica does the work that must run once.

A store has one owner: a single hub (an exclusive PostgreSQL advisory lock), or one *replica group*,
whose members each hold the same lock shared. A replica joins only when no single hub holds the lock and
every member already holding it names the same group (each member's lock connection carries
``application_name = workbench-hub/<group>``, which ``pg_stat_activity`` shows to the others). Joining
is serialised by a transaction-level advisory lock, so two groups starting at once cannot both get in.

The broker shares the devices' outbox messages among the members (MQTT ``$share/<group>/...``, or on
NATS a queue group: :mod:`workbench.hub._nats_queue`); the
stores deduplicate by (device, sequence) in the database, so which member stores a message does not
matter. What must run once (rollouts, which publish retained desired state) runs on the *leader*: the
member holding a second advisory lock. PostgreSQL drops a session's locks when its connection ends, so
when the leader dies (kill -9 included) the next member to try takes the lock over within
``poll_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from workbench.errors import ConfigError, HubAlreadyRunningError
from workbench.hub._store_url import StoreURL
from workbench.protocol import topics
from workbench.protocol._bus import Bus

log = logging.getLogger("workbench.hub")

# Any 64-bit numbers the workbench's hubs agree on: "a hub (or group) owns this database", "the leader".
HUB_LOCK_KEY = 0x5742_4855_4200_0001
LEADER_LOCK_KEY = 0x5742_4855_4200_0002
_JOIN_LOCK_KEY = 0x5742_4855_4200_0003
APPLICATION_PREFIX = "workbench-hub/"

_HOLDERS = """
SELECT l.mode, a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND a.pid <> pg_backend_pid()
"""


def _split(key: int) -> tuple[int, int]:
    return key >> 32, key & 0xFFFF_FFFF


def _holders(con: Any) -> list[tuple[str, str, int]]:
    """``(mode, application_name, pid)`` of the other sessions holding the hub lock of this database."""
    return [(str(m), str(a or ""), int(p)) for m, a, p in con.execute(_HOLDERS, _split(HUB_LOCK_KEY)).fetchall()]


def _describe(holders: list[tuple[str, str, int]]) -> str:
    groups = sorted({app[len(APPLICATION_PREFIX):] for mode, app, _ in holders
                     if mode == "ShareLock" and app.startswith(APPLICATION_PREFIX)})
    if any(mode == "ExclusiveLock" for mode, _, _ in holders):
        return "another hub"
    if groups:
        return f"the hub replica group {', '.join(repr(g) for g in groups)}"
    return "another hub"


def acquire_store(store: StoreURL, group: str | None) -> Any:
    """Open the connection whose advisory lock says this hub (or this member of ``group``) owns ``store``.

    Raises :class:`HubAlreadyRunningError` naming the owner when a single hub, or another group, has it.
    The lock lasts as long as the returned connection: close it to give the store up.

    Example:
        >>> con = acquire_store(StoreURL.parse("postgresql://postgres@127.0.0.1/wb"), "hubs")   # doctest: +SKIP
    """
    import psycopg

    name = f"{APPLICATION_PREFIX}{group}" if group is not None else "workbench-hub"
    con = psycopg.connect(str(store.dsn), autocommit=True, application_name=name)
    try:
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_JOIN_LOCK_KEY,))
            holders = _holders(con)
            if group is None:
                row = con.execute("SELECT pg_try_advisory_lock(%s)", (HUB_LOCK_KEY,)).fetchone()
                if not row or not row[0]:
                    raise HubAlreadyRunningError(
                        f"{_describe(holders)} already owns the store {store}: one hub (or one replica group) "
                        "receives and acknowledges a fleet's data; stop it, connect to it, or start this hub as "
                        "a member of that group (--group)")
            else:
                others = [h for h in holders if h[0] != "ShareLock" or h[1] != name]
                if others:
                    raise HubAlreadyRunningError(
                        f"{_describe(others)} already owns the store {store}, so this hub cannot join it as a "
                        f"replica of group {group!r}: stop that one, or start this hub with its --group")
                con.execute("SELECT pg_advisory_lock_shared(%s)", (HUB_LOCK_KEY,))
    except BaseException:
        con.close()
        raise
    return con


class Leadership:
    """Which replica of a group runs the once-only work: the holder of the leader advisory lock.

    A thread tries to take the lock every ``poll_s`` seconds on its own connection; ``on_elected``
    runs (in that thread) when this replica becomes leader. Losing the connection loses the lock:
    ``on_deposed`` runs and the thread connects again and competes once more.

    Example:
        >>> leader = Leadership("postgresql://postgres@127.0.0.1/wb", name="hub-a")   # doctest: +SKIP
        >>> leader.wait_leader(5.0), leader.is_leader                                # doctest: +SKIP
        (True, True)
    """

    def __init__(self, dsn: str, *, name: str, poll_s: float = 1.0, on_elected: Callable[[], None] | None = None,
                 on_deposed: Callable[[], None] | None = None) -> None:
        self.dsn = dsn
        self.name = name
        self.poll_s = poll_s
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.elections = 0  # times this replica became leader
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._con: Any = None
        self._thread = threading.Thread(target=self._run, name="wb-hub-leadership", daemon=True)
        self._thread.start()

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the leader lock."""
        return self._leader.is_set()

    def wait_leader(self, timeout: float) -> bool:
        """Block until this replica leads (True) or ``timeout`` passes (False)."""
        return self._leader.wait(timeout)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                if self._con is None or self._con.closed:
                    self._con = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                                application_name=f"{APPLICATION_PREFIX}{self.name}/leader")
                if self._leader.is_set():
                    self._con.execute("SELECT 1")  # the lock lives as long as this connection does
                else:
                    row = self._con.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone()
                    if row and row[0]:
                        self._leader.set()
                        self.elections += 1
                        log.info("hub replica %s is now the leader: it runs rollouts", self.name)
                        if self.on_elected is not None:
                            self.on_elected()
            except psycopg.Error as exc:
                self._lose(f"its PostgreSQL connection failed: {' '.join(str(exc).split())}")
            except Exception:  # the leader's own work failing must not end the election thread
                log.exception("hub replica %s: leader work failed", self.name)
            self._stop.wait(self.poll_s)

    def _lose(self, why: str) -> None:
        if self._con is not None:
            try:
                self._con.close()
            except Exception:
                pass
            self._con = None
        if self._leader.is_set():
            self._leader.clear()
            log.warning("hub replica %s is no longer the leader: %s", self.name, why)
            if self.on_deposed is not None:
                self.on_deposed()

    def close(self) -> None:
        """Stop competing and give the lock up (closing the connection releases it)."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._leader.clear()
        if self._con is not None:
            self._con.close()
            self._con = None


def check_shared_delivery(bus: Bus, group: str, *, timeout: float = 10.0) -> None:
    """Make sure the broker delivers MQTT shared subscriptions, by sending one to this replica through one.

    NATS's MQTT listener (nats-server 2.15) accepts a ``$share/...`` filter but delivers nothing to it: a
    replica there would receive no device's data and say nothing. Raises :class:`ConfigError` naming that.

    Example:
        >>> check_shared_delivery(hub.bus, "hubs")   # doctest: +SKIP
    """
    probe = f"{topics.DESIRED_PREFIX}/_replicas/{bus.client_id}"
    arrived = threading.Event()
    unsubscribe = bus.subscribe(topics.shared_filter(group, probe), lambda _message: arrived.set())
    try:
        deadline = time.monotonic() + timeout
        while not arrived.is_set() and time.monotonic() < deadline:
            bus.publish(probe, b"probe", qos=1)  # again until it arrives: the subscription may not be active yet
            arrived.wait(0.5)
    finally:
        unsubscribe()
    if not arrived.is_set():
        raise ConfigError(f"the broker at {bus.address.url} did not deliver a message through the MQTT shared "
                          f"subscription $share/{group}/... within {timeout:g} s, so hub replicas cannot share the "
                          "devices' data there; NATS's MQTT listener does not support shared subscriptions: on a "
                          "NATS broker pass --nats with its NATS client URL (`broker.nats_url` in fleet.json), so "
                          "the replicas share through a NATS queue group; or run replicas on Mosquitto or EMQX, or "
                          "one hub without --group")
