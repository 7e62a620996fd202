"""The workbench's view of desired and reported deployment state, on the process's MQTT connection.

It subscribes to ``wb/v1/dev/+/deploy`` (what devices report) and ``wb/v1/desired/+/model`` (what
was asked of them, retained) on the bus it is given, and publishes desired state through it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from workbench.errors import PayloadError
from workbench.protocol import schema, topics
from workbench.protocol._bus import Bus
from workbench.protocol._rejects import RejectLog

log = logging.getLogger("workbench.deploy.state")

Listener = Callable[[str, dict[str, Any]], None]


class DeployState:
    """Latest reported and desired deployment state of every device.

    Example:
        >>> state = DeployState(fleet.bus)                             # doctest: +SKIP
        >>> state.wait(lambda s: s.reported("sim-01").get("state") == "active", timeout=30)   # doctest: +SKIP
    """

    def __init__(self, bus: Bus) -> None:
        self._reported: dict[str, dict[str, Any]] = {}
        self._desired: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._listeners: list[Listener] = []
        self._last_message = time.monotonic()
        self.reject_log = RejectLog(log, what="deployment state")
        self._bus = bus
        self._unsubscribe = [bus.subscribe(topics.device_topic("+", "deploy"), self._on_message),
                             bus.subscribe(topics.desired_topic("+", "model"), self._on_message)]

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) != 5:
            self.reject_log.count("(unknown)", "bad_topic", message.topic[:200])
            return
        device = parts[3]
        try:
            body = schema.decode(bytes(message.payload)) if message.payload else {}
        except PayloadError as exc:
            self.reject_log.count(device, exc.kind, f"on {message.topic[:200]}: {exc}")
            return
        with self._changed:
            self._last_message = time.monotonic()
            if parts[2] == "dev":
                self._reported[device] = body
            else:
                self._desired[device] = body
            self._changed.notify_all()
            listeners = list(self._listeners)
        if parts[2] == "dev":
            for listener in listeners:
                listener(device, body)

    def settle(self, quiet: float = 0.3, timeout: float = 3.0) -> None:
        """Wait until retained messages stopped arriving (after connecting), at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while time.monotonic() < deadline and time.monotonic() - self._last_message < quiet:
                self._changed.wait(quiet)

    def reported(self, device_id: str) -> dict[str, Any]:
        with self._changed:
            return dict(self._reported.get(device_id) or {})

    def desired(self, device_id: str) -> dict[str, Any]:
        with self._changed:
            return dict(self._desired.get(device_id) or {})

    def on(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(device_id, report)`` on every reported transition (MQTT thread)."""
        with self._changed:
            self._listeners.append(listener)

        def remove() -> None:
            with self._changed:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def set_desired(self, device_id: str, body: dict[str, Any]) -> None:
        """Publish a device's desired model, retained, and wait until the broker has it."""
        self._bus.publish_state(topics.desired_topic(device_id, "model"), schema.encode(body), timeout=10)

    def wait(self, predicate: Callable[[DeployState], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (re-checked on every message); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
        return True

    def close(self) -> None:
        """Stop following deployment state (the connection stays up for its other users)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
