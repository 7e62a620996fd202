"""Hub replicas on a NATS broker: the devices' outboxes shared through a NATS queue group.

NATS's MQTT listener (nats-server 2.15) accepts an MQTT shared subscription (``$share/<group>/...``) and
delivers nothing to it. Its own protocol shares messages natively: every subscriber of a *queue group*
on a subject gets its share, each message going to one member. A device's MQTT publish to
``wb/v1/dev/<device>/outbox`` is the NATS subject ``wb.v1.dev.<device>.outbox`` (``.`` inside a device id
is ``//`` there), so each replica subscribes ``wb.v1.dev.*.outbox`` in the queue named for its group, turns
each subject back into the MQTT topic and hands the message to its :class:`SyncReceiver`, which stores
and acknowledges it over MQTT as for any other message.

A core NATS subscription delivers at most once: a message in flight to a replica that dies is gone, but
it was never acknowledged, so its device sends it again, to whichever member is alive.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from workbench._listen import is_loopback
from workbench.errors import BrokerError, BrokerUnreachableError, ConfigError
from workbench.protocol import topics

log = logging.getLogger("workbench.hub")

OUTBOX_SUBJECT = "wb.v1.dev.*.outbox"
# What the NATS client may hold for this replica before the receiver takes it: past either, NATS drops
# messages ("slow consumer"), which are counted here; their devices send them again, unacknowledged.
PENDING_MESSAGES = 20_000
PENDING_BYTES = 256 * 2**20


def mqtt_topic(subject: str) -> str:
    """The MQTT topic a NATS subject carries, as the NATS server's MQTT layer maps them (``//`` is ``.``).

    Example:
        >>> mqtt_topic("wb.v1.dev.pi//4.outbox")
        'wb/v1/dev/pi.4/outbox'
    """
    return "/".join(token.replace("//", ".") for token in subject.split("."))


def parse_nats_urls(url: str) -> list[str]:
    """The servers of a ``--nats`` value: one or more ``nats://host:port`` (or ``tls://``), comma-separated.

    Plain ``nats://`` carries the hub's password in clear text, so it is refused beyond loopback
    (:class:`ConfigError`): use ``tls://`` there.

    Example:
        >>> parse_nats_urls("nats://127.0.0.1:4222,nats://127.0.0.1:4223")
        ['nats://127.0.0.1:4222', 'nats://127.0.0.1:4223']
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ConfigError("--nats needs a URL, e.g. nats://127.0.0.1:4222 (`broker.nats_url` in the fleet's "
                          "fleet.json)")
    for server in servers:
        try:
            parts = urlsplit(server)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--nats {server!r} is not a URL ({exc}): give nats://host:port") from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
            raise ConfigError(f"--nats {server!r} is not a NATS server URL: give nats://host:port (or tls://host:port)")
        if parts.username or parts.password:
            raise ConfigError(f"--nats {parts.hostname}:{port} carries credentials in the URL, where process lists "
                              "show them: give --nats-user and --nats-password-file instead")
        if parts.scheme == "nats" and not is_loopback(parts.hostname):
            raise ConfigError(f"--nats {server} is plain NATS beyond loopback: the hub's password would cross the "
                              "network in clear text; use tls://")
    return servers


class NatsQueue:
    """One replica's member of the NATS queue group ``group`` on every device's outbox subject.

    ``deliver(topic, payload)`` runs on this object's thread (an asyncio loop) for each message; it must
    not block (:meth:`SyncReceiver.receive` only queues). Connecting raises :class:`BrokerUnreachableError`
    when no server answers within ``timeout``, and :class:`BrokerError` when the server refuses the
    user or the subscription. Afterwards the client reconnects by itself; :attr:`counters` says what
    happened (messages, slow-consumer drops, disconnects).

    Example:
        >>> queue = NatsQueue("nats://127.0.0.1:4222", "hubs", receiver.receive)   # doctest: +SKIP
        >>> queue.counters["messages"]                                             # doctest: +SKIP
        1200
    """

    def __init__(self, url: str, group: str, deliver: Callable[[str, bytes], None], *, user: str | None = None,
                 password: str | None = None, timeout: float = 10.0) -> None:
        self.servers = parse_nats_urls(url)
        self.group = group
        self.counters: Counter[str] = Counter()
        self._deliver = deliver
        self._user, self._password = user, password
        self._nc: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wb-hub-nats", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(timeout), self._loop).result(timeout + 5)
        except BaseException:
            self.close()
            raise

    async def _start(self, timeout: float) -> None:
        import nats
        from nats.errors import Error as NatsError

        tls = ssl.create_default_context() if any(s.startswith("tls://") for s in self.servers) else None
        first_error: list[str] = []

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self.counters["dropped_slow_consumer"] += 1
            else:
                self.counters["errors"] += 1
                if not first_error:
                    first_error.append(str(exc) or type(exc).__name__)
                log.warning("NATS queue %s: %s", self.group, exc)

        async def on_disconnected() -> None:
            self.counters["disconnects"] += 1

        try:
            self._nc = await asyncio.wait_for(nats.connect(
                servers=self.servers, user=self._user, password=self._password, tls=tls, name="workbench-hub",
                connect_timeout=min(timeout, 5.0), max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                error_cb=on_error, disconnected_cb=on_disconnected), timeout)
        except (asyncio.TimeoutError, OSError, NatsError) as exc:
            # A refused user shows as an error callback, then a connect that never completes.
            why = first_error[0] if first_error else (str(exc) or type(exc).__name__)
            raise BrokerUnreachableError(
                f"hub replica could not connect to the NATS server at {','.join(self.servers)} within {timeout:g} s "
                f"({why}); give --nats the broker's NATS client URL (`broker.nats_url` in fleet.json) and, on a "
                "secure fleet, --nats-user/--nats-password-file (`secure.hub_nats` in fleet.json)") from None
        try:
            await self._nc.subscribe(OUTBOX_SUBJECT, queue=self.group, cb=self._on_message,
                                     pending_msgs_limit=PENDING_MESSAGES, pending_bytes_limit=PENDING_BYTES)
            await self._nc.flush(timeout)
        except (asyncio.TimeoutError, NatsError) as exc:
            raise BrokerError(f"the NATS server at {','.join(self.servers)} did not take the subscription "
                              f"{OUTBOX_SUBJECT} (queue {self.group}): {exc or type(exc).__name__}") from None
        if first_error:  # a permissions violation arrives as an error, asynchronously, after the flush
            raise BrokerError(f"the NATS server at {','.join(self.servers)} refused the subscription "
                              f"{OUTBOX_SUBJECT} (queue {self.group}): {first_error[0]}; the hub's NATS user needs "
                              f"permission to subscribe {OUTBOX_SUBJECT}")

    async def _on_message(self, msg: Any) -> None:
        self.counters["messages"] += 1
        try:
            self._deliver(mqtt_topic(msg.subject), bytes(msg.data))
        except Exception:  # one message must not end the subscription
            self.counters["deliver_errors"] += 1
            log.exception("NATS queue %s: handing a message on failed", self.group)

    @property
    def connected(self) -> bool:
        """True while the NATS client is connected."""
        return self._nc is not None and bool(self._nc.is_connected)

    def close(self) -> None:
        """Leave the queue group (undelivered messages go to the other members) and stop the thread."""
        if self._loop.is_closed():
            return
        if self._nc is not None and not self._nc.is_closed:
            try:
                asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(10)
            except Exception:  # closing a broken connection: nothing left to give back
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def check_group_name(group: str) -> str:
    """``group`` if it names both an MQTT shared subscription and a NATS queue; else :class:`ConfigError`.

    Example:
        >>> check_group_name("hubs")
        'hubs'
    """
    topics.shared_filter(group, "x")
    if any(ch.isspace() for ch in group) or "*" in group or ">" in group:
        raise ConfigError(f"invalid replica group {group!r} for a NATS queue: no spaces, '*' or '>'")
    return group
