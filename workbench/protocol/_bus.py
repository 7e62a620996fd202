"""One MQTT connection per process, shared by everything in it that talks to the fleet.

The fleet client, the sync-state view, deployment state and the hub's receiver used to open a
connection each and find one another through private attributes. Now whoever owns the process's
connection (a :class:`~workbench.fleet.Fleet`, or the hub) makes one :class:`Bus` and passes it to
the others: each subscribes to its topic filters with its own handler and error counter, and
publishes through it.

Filters may not overlap: a message that matches two subscriptions of one connection arrives once
on some brokers and twice on others, so routing could not tell. Two parts that want the same
filter share its one subscription (each handler is called).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher

from workbench.errors import BrokerUnreachableError, ConfigError
from workbench.protocol._mqtt import (
    BrokerAddress,
    close_client,
    connect_blocking,
    jitter_reconnects,
    make_client,
    network_alive,
    new_client_id,
    refused_filters,
    subscribe_again_later,
)
from workbench.protocol.topics import unshared_filter

log = logging.getLogger("workbench.bus")

Handler = Callable[[mqtt.MQTTMessage], None]
ErrorHandler = Callable[[mqtt.MQTTMessage, Exception], None]


@dataclass
class _Route:
    topic_filter: str
    qos: int
    handlers: list[tuple[Handler, ErrorHandler | None]] = field(default_factory=list)


def filters_overlap(first: str, second: str) -> bool:
    """True when some topic matches both filters.

    Example:
        >>> filters_overlap("wb/v1/dev/+/status", "wb/v1/dev/pi-1/+")
        True
        >>> filters_overlap("wb/v1/dev/+/status", "wb/v1/dev/+/outbox")
        False
    """
    a, b = first.split("/"), second.split("/")
    for x, y in zip(a, b, strict=False):
        if x == "#" or y == "#":
            return True
        if x != y and "+" not in (x, y):
            return False
    return len(a) == len(b) or (len(a) == len(b) + 1 and a[-1] == "#") or (len(b) == len(a) + 1 and b[-1] == "#")


class Bus:
    """The process's MQTT connection: topic filters routed to handlers, publishing, liveness.

    It reconnects by itself (paho's loop, jittered backoff) and subscribes every filter again on each
    connect, so a broker restart is invisible to the parts that use it. Given a cluster's nodes
    (``mqtt://h1:p1,h2:p2,...``), each reconnect tries the next node: losing one node is a reconnect.
    A handler that raises goes to its ``on_error`` (count it there) and never ends the network thread.

    Example:
        >>> bus = Bus(BrokerAddress.parse("mqtt://127.0.0.1:1883"))             # doctest: +SKIP
        >>> stop = bus.subscribe("wb/v1/dev/+/status", lambda m: print(m.topic))  # doctest: +SKIP
        >>> bus.publish("wb/v1/cmd/sim-01/ping", b'{"v":1}').wait_for_publish(5)  # doctest: +SKIP
        >>> stop(); bus.close()                                                  # doctest: +SKIP
    """

    def __init__(self, address: BrokerAddress, *, client_prefix: str = "wb", keepalive: int = 10,
                 timeout: float = 10.0) -> None:
        self.address = address
        self.client_id = new_client_id(client_prefix)
        self._routes: dict[str, _Route] = {}  # in subscription order, which resubscribing keeps
        self._matcher = MQTTMatcher()  # paho's own MQTT filter matching, over the same routes
        self._lock = threading.Lock()
        self._closed = False
        self.undecodable_topics = 0  # messages whose topic was not UTF-8: routed nowhere, counted here
        self.subscriptions_refused = 0  # filters a SUBACK refused (0x80), each subscribed again shortly
        self._refused_in_a_row = 0
        self._client = make_client(address, self.client_id)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        jitter_reconnects(self._client)  # a hub and its clients reconnect with the devices after a broker restart
        # paho's own loop thread (loop_start): it alone writes to the socket, woken through paho's socket pair, so a
        # publish from any thread goes out at once and never beside the loop's writes on one TLS socket.
        connect_blocking(self._client, address, keepalive=keepalive, timeout=timeout)

    def __repr__(self) -> str:
        return f"<Bus {self.client_id} at {self.address.url}: {len(self._routes)} filters>"

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1,
                  on_error: ErrorHandler | None = None) -> Callable[[], None]:
        """Route messages matching ``topic_filter`` to ``handler`` (on the network thread); return the undo.

        Raises :class:`ConfigError` when the filter overlaps another one on this connection.

        Example:
            >>> stop = bus.subscribe("wb/v1/dev/+/inventory", on_inventory, on_error=count_reject)  # doctest: +SKIP
        """
        with self._lock:
            route = self._routes.get(topic_filter)
            if route is None:
                # A shared subscription ($share/<group>/<filter>) delivers topics of <filter>: route and check by it.
                matched = unshared_filter(topic_filter)
                clash = next((f for f in self._routes if filters_overlap(unshared_filter(f), matched)), None)
                if clash is not None:
                    raise ConfigError(f"MQTT filter {topic_filter!r} overlaps {clash!r} on the same connection; "
                                      "brokers differ in delivering such messages once or twice: use disjoint filters")
                route = self._routes[topic_filter] = self._matcher[matched] = _Route(topic_filter, qos)
                new = True
            else:
                new = False
            entry = (handler, on_error)
            route.handlers.append(entry)
        if new and self._client.is_connected():
            self._client.subscribe(topic_filter, qos=qos)

        def unsubscribe() -> None:
            with self._lock:
                current = self._routes.get(topic_filter)
                if current is None or entry not in current.handlers:
                    return
                current.handlers.remove(entry)
                last = not current.handlers
                if last:
                    del self._routes[topic_filter]
                    del self._matcher[unshared_filter(topic_filter)]
            if last and not self._closed:
                self._client.unsubscribe(topic_filter)

        return unsubscribe

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish on the shared connection; ``wait_for_publish`` on the result waits for the broker's PUBACK.

        Example:
            >>> info = bus.publish(topics.desired_topic("sim-01", "model"), body, retain=True)  # doctest: +SKIP
            >>> info.wait_for_publish(10)                                                      # doctest: +SKIP
        """
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_state(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        """Publish retained state at QoS 1 and wait for the broker's PUBACK, riding out a reconnect meanwhile.

        paho refuses a publish made while it reconnects ("not currently connected"), which at a broker
        restart or a node's failover would end a rollout mid-way. This waits for the connection, within
        ``timeout``. Retained state is idempotent, so a publish that raced a disconnect and goes out twice
        does no harm. Raises :class:`BrokerUnreachableError` when the broker has not taken it in time.

        Example:
            >>> bus.publish_state(topics.desired_topic("sim-01", "model"), body, timeout=10)  # doctest: +SKIP
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self._closed:
                raise BrokerUnreachableError(f"cannot publish {topic}: this connection to {self.address.url} is closed")
            if left <= 0:
                raise BrokerUnreachableError(
                    f"the broker at {self.address.url} did not take {topic} within {timeout:g} s (connected: "
                    f"{self._client.is_connected()}); check that the broker runs, then retry")
            if not self._client.is_connected():
                time.sleep(min(0.05, left))
                continue
            info = self._client.publish(topic, payload, qos=1, retain=True)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                continue  # lost between the check and the publish: wait for the reconnect
            try:
                info.wait_for_publish(timeout=left)
            except RuntimeError:
                continue  # the connection dropped before the PUBACK: publish again once back
            if info.is_published():
                return

    def is_connected(self) -> bool:
        """True while the broker connection is up."""
        return not self._closed and self._client.is_connected()

    def network_alive(self) -> bool:
        """True while the network thread runs (it reconnects by itself while it does).

        Example:
            >>> bus.network_alive()   # doctest: +SKIP
            True
        """
        return not self._closed and network_alive(self._client)

    def close(self) -> None:
        """Disconnect; every subscription ends with it."""
        if self._closed:
            return
        self._closed = True
        close_client(self._client)

    # -- network thread ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            return
        wanted = self._wanted()
        if wanted:
            # Insertion order: a fleet subscribes inventory before status, so a device's inventory
            # (retained, sent filter by filter) arrives before its online status.
            client.subscribe(wanted)

    def _wanted(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(route.topic_filter, route.qos) for route in self._routes.values()]

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reason_codes: list[Any], _p: Any) -> None:
        # NATS refuses a QoS 1 filter (0x80) when it cannot make its JetStream consumer, e.g. during the leader
        # election after a cluster node was lost. Left alone, this connection would stay up and deaf to it.
        refused = refused_filters(reason_codes)
        self._refused_in_a_row = self._refused_in_a_row + 1 if refused else 0
        if refused and not self._closed:
            self.subscriptions_refused += refused
            log.error("%s: the broker refused %d of %d filters (SUBACK 0x80); subscribing again in a few seconds",
                      self.client_id, refused, len(reason_codes))
            subscribe_again_later(self._client, self._wanted, attempt=self._refused_in_a_row)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a hostile publisher's topic bytes: nobody subscribed to those
            self.undecodable_topics += 1
            return
        with self._lock:
            handlers = [h for route in self._matcher.iter_match(topic) for h in route.handlers]
        for handler, on_error in handlers:
            try:
                handler(message)
            except Exception as exc:  # the network thread must outlive any handler
                try:
                    if on_error is not None:
                        on_error(message, exc)
                    else:
                        log.warning("handler for %s failed: %r", topic[:200], exc)
                except Exception:
                    pass
