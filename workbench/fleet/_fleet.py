"""The workbench's view of a fleet: devices, their events, and commands to them."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from workbench.errors import (
    CommandTimeoutError,
    ConfigError,
    DeviceOfflineError,
    FleetTimeoutError,
    PayloadError,
    RemoteCommandError,
    UnknownDeviceError,
)
from workbench.fleet._device import Device
from workbench.fleet._inventory import COLUMNS, InventoryRows, check_inventory
from workbench.protocol import schema, topics
from workbench.protocol._bus import Bus
from workbench.protocol._mqtt import BrokerAddress
from workbench.protocol._rejects import RejectLog

if TYPE_CHECKING:
    import pandas as pd

    from workbench.hub import HubClient
    from workbench.sync._client import Sync
    from workbench.telemetry._client import TelemetryViews

log = logging.getLogger("workbench.fleet")

Listener = Callable[[str, Device], None]
EVENTS = ("online", "offline", "inventory", "change")


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    response: dict[str, Any] | None = None


class Fleet:
    """A live connection to a fleet of devices through an MQTT broker.

    Created by :func:`workbench.connect`. Device state arrives on paho's network thread;
    listeners registered with :meth:`on` are called there, so UI code should hand the
    event to its own loop.

    Example:
        >>> fleet = workbench.connect()          # doctest: +SKIP
        >>> fleet.wait_for(3, timeout=30)        # doctest: +SKIP
        >>> fleet.inventory()[["device_id", "online", "profile"]]   # doctest: +SKIP
    """

    local_record: dict[str, Any] | None = None  # the fleet.json of a local fleet (set by connect)
    # Started on first use (see the properties); declared for the type checker.
    _telemetry: TelemetryViews | None
    _sync: Sync | None
    _hub: HubClient | None

    def __init__(
        self,
        address: BrokerAddress,
        *,
        timeout: float = 10.0,
        keepalive: int = 10,
        client_prefix: str = "wb-ctl",
        bus: Bus | None = None,
    ) -> None:
        self.address = address
        # The process's one MQTT connection: this fleet's own, or the one its owner passes in (the hub's).
        self._owns_bus = bus is None
        self.bus = bus if bus is not None else Bus(address, client_prefix=client_prefix, keepalive=keepalive,
                                                   timeout=timeout)
        self.client_id = self.bus.client_id
        self.rejected = schema.PayloadCounters()
        self.reject_log = RejectLog(log, what="message")
        self._devices: dict[str, Device] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, _Pending] = {}
        self._listeners: list[Listener] = []
        self.revision = 0  # bumped on every change, so pollers can tell cheaply
        self._rows = InventoryRows()
        self._closed = False
        # Inventory first: brokers send retained messages filter by filter, so a device's
        # inventory then arrives before its online status.
        self._unsubscribe = [
            self.bus.subscribe(topic_filter, self._on_message, on_error=self._on_message_failed)
            for topic_filter in (topics.device_topic("+", "inventory"), topics.device_topic("+", "status"),
                                 topics.reply_topic("+", self.client_id))
        ]

    # -- container protocol ----------------------------------------------------------

    def __getitem__(self, device_id: str) -> Device:
        with self._lock:
            try:
                return self._devices[device_id]
            except KeyError:
                known = ", ".join(sorted(self._devices)[:10]) or "none yet"
                raise UnknownDeviceError(
                    f"no device {device_id!r} in the fleet at {self.address.url} (known: {known}); "
                    "check the id, or wait for it with fleet.wait_for()"
                ) from None

    def __contains__(self, device_id: object) -> bool:
        with self._lock:
            return device_id in self._devices

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices)

    def __len__(self) -> int:
        with self._lock:
            return len(self._devices)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Fleet {self.address.url}: {len(self.online())} of {len(self)} devices online>"

    @property
    def devices(self) -> list[Device]:
        """Every device seen, online or not, sorted by id."""
        with self._lock:
            return [self._devices[key] for key in sorted(self._devices)]

    def online(self) -> list[Device]:
        """The devices online now."""
        return [device for device in self.devices if device.online]

    def where(self, *, profile: str | None = None, online: bool | None = True) -> list[Device]:
        """Devices matching a profile and online state.

        Example:
            >>> [d.device_id for d in fleet.where(profile="raspberry-pi-5")]   # doctest: +SKIP
            ['sim-02']
        """
        return [
            device
            for device in self.devices
            if (profile is None or device.profile == profile) and (online is None or device.online == online)
        ]

    # -- waiting and events --------------------------------------------------------------

    def wait_for(self, count: int, *, timeout: float = 30.0) -> list[Device]:
        """Block until at least ``count`` devices are online and have sent their inventory; return them.

        Raises :class:`FleetTimeoutError` naming how many came.

        Example:
            >>> len(fleet.wait_for(3, timeout=30))   # doctest: +SKIP
            3
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                online = [d for d in self._devices.values() if d.online and d.inventory_data]
                if len(online) >= count:
                    return sorted(online, key=lambda d: d.device_id)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = ", ".join(sorted(d.device_id for d in online)[:10]) or "none"
                    raise FleetTimeoutError(
                        f"only {len(online)} of {count} devices online at {self.address.url} after {timeout:g} s "
                        f"(online: {names}); start more with `workbench up --devices {count}` or wait longer"
                    )
                self._changed.wait(remaining)

    def wait_until(self, predicate: Callable[[Fleet], bool], *, timeout: float = 30.0) -> None:
        """Block until ``predicate(fleet)`` holds, re-checked on every change."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FleetTimeoutError(f"condition not met within {timeout:g} s at {self.address.url}")
                self._changed.wait(remaining)

    def on(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event, device)`` on every event (online, offline, inventory, change).

        Returns a function that removes the listener. Listeners run on the MQTT network
        thread: keep them short, and hand UI updates to your own event loop.

        Example:
            >>> remove = fleet.on(lambda event, device: print(event, device.device_id))  # doctest: +SKIP
        """
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    # -- inventory -------------------------------------------------------------------------

    def inventory(self, *, wide: bool = False) -> pd.DataFrame:
        """One row per device: online state, profile, hardware, software, active model.

        Shown compactly (device, online, profile, model, arch, limits, providers, last seen);
        every column stays readable by code, and ``wide=True`` (or ``.full()``) shows them all.

        Example:
            >>> fleet.inventory().set_index("device_id").loc["sim-01", "profile"]   # doctest: +SKIP
            'raspberry-pi-4'
        """
        import pandas as pd

        # Tuples from the per-device cache, read under the lock in one pass: at 2,000 devices, flattening every
        # inventory and building the frame from dicts was most of the call's time.
        with self._lock:
            rows = [self._rows.row(key, device.online, device.last_seen, device.inventory_data)
                    for key, device in sorted(self._devices.items())]
        frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
        frame["last_seen"] = pd.to_datetime(frame["last_seen"], unit="s", utc=True)
        if wide:
            return frame
        from workbench._table import Column, Table, View, epoch_seconds

        return Table.of(frame, View((
            Column("device_id", "device"), Column("online", "online"), Column("profile", "profile"),
            Column("active_model", "active model"), Column("arch", "arch"), Column("threads_limit", "threads"),
            Column("memory_limit_mb", "memory limit (MB)"), Column("execution_providers", "execution providers"),
            Column("last_seen", "last seen (UTC)", epoch_seconds))))

    # -- commands ----------------------------------------------------------------------------

    def call(
        self, device_id: str, command: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a command to one device and wait for its result (see :meth:`Device.call`)."""
        device = self[device_id]
        if not device.online:
            raise DeviceOfflineError(
                f"device {device_id!r} is offline ({device.offline_reason or 'no status yet'}); "
                "start its agent or wait for it with fleet.wait_for()"
            )
        request_id = uuid.uuid4().hex
        pending = _Pending()
        with self._lock:
            self._pending[request_id] = pending
        try:
            payload = schema.encode(
                {"id": request_id, "reply_to": self.client_id, "args": args or {}, "sent": time.time(),
                 "timeout": timeout}
            )
            self.bus.publish(topics.command_topic(device_id, command), payload, qos=1)
            if not pending.done.wait(timeout):
                raise CommandTimeoutError(
                    f"device {device_id!r} did not answer {command!r} within {timeout:g} s; "
                    "it may be overloaded or its link down: retry with a longer timeout"
                )
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        response = pending.response or {}
        if not response.get("ok"):
            error = response.get("error") or {}
            raise RemoteCommandError(
                f"device {device_id!r} failed {command!r}: {error.get('message', 'no reason given')}",
                device_id=device_id,
                code=str(error.get("code", "error")),
            )
        result = response.get("result")
        return result if isinstance(result, dict) else {"result": result}

    @property
    def telemetry(self) -> TelemetryViews:
        """The fleet's telemetry (store, queries, alerts), started on first use; see workbench.telemetry."""
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is None:
            if self.has_hub:
                from workbench.hub._telemetry import HubTelemetry

                telemetry = HubTelemetry(self, self.hub)
            else:
                from workbench.telemetry._client import Telemetry

                telemetry = Telemetry(self)
            self._telemetry = telemetry
        return telemetry

    def attach_telemetry(self, views: TelemetryViews) -> None:
        """Answer ``fleet.telemetry`` with ``views`` (the hub's own store, for the rollouts the hub runs).

        Example:
            >>> fleet.attach_telemetry(HubViews(fleet, hub))   # doctest: +SKIP
        """
        if getattr(self, "_telemetry", None) is not None:
            raise ConfigError("this fleet's telemetry is already running; attach views before first use")
        self._telemetry = views

    def attach_sync(self, sync: Sync) -> None:
        """Answer ``fleet.sync`` with ``sync`` (one started by the telemetry that feeds on it).

        Example:
            >>> fleet.attach_sync(Sync(fleet, telemetry=telemetry))   # doctest: +SKIP
        """
        if getattr(self, "_sync", None) is not None:
            raise ConfigError("this fleet's sync is already running; attach a sync before first use")
        self._sync = sync

    @property
    def connected(self) -> bool:
        """Whether this client is connected to the broker now: False after :meth:`close` or while the link is lost.

        Example:
            >>> fleet.connected   # doctest: +SKIP
            True
        """
        return not self._closed and self.bus.is_connected()

    @property
    def running_telemetry(self) -> TelemetryViews | None:
        """``fleet.telemetry`` if something has started it, else None (views that must not start it ask this)."""
        return getattr(self, "_telemetry", None)

    @property
    def running_sync(self) -> Sync | None:
        """``fleet.sync`` if something has started it, else None."""
        return getattr(self, "_sync", None)

    @property
    def hub(self) -> HubClient:
        """The fleet's hub (``workbench up`` runs it): the same stored history for every client.

        Raises :class:`~workbench.errors.HubError` when the fleet runs no hub.

        Example:
            >>> fleet.hub.query("latency_p95_ms", since="1h", every="1m")   # doctest: +SKIP
        """
        hub = getattr(self, "_hub", None)
        if hub is None:
            from workbench.hub import HubClient

            hub = self._hub = HubClient.for_record(self.local_record or {})
        return hub

    @property
    def has_hub(self) -> bool:
        """Whether this fleet's hub receives its data (a local fleet started with a hub, or connected by hub URL)."""
        return getattr(self, "_hub", None) is not None or bool(((self.local_record or {}).get("hub") or {}).get("url"))

    def attach_hub(self, hub: HubClient) -> None:
        """Make ``hub`` this fleet's hub: its history, rollouts and stores answer ``fleet.telemetry`` and the rest.

        Example:
            >>> fleet.attach_hub(HubClient("https://hub.example:8443", token=token))   # doctest: +SKIP
        """
        if getattr(self, "_hub", None) is not None or self.running_telemetry is not None or self.running_sync:
            raise ConfigError("attach the hub before this fleet's hub, telemetry or sync is first used")
        self._hub = hub

    def refuse_receiving_beside_hub(self, what: str) -> None:
        """Raise :class:`~workbench.errors.HubError` when this fleet's hub is its receiver: a second receiver in this
        process would acknowledge devices' items against it."""
        from workbench.errors import HubError

        if self.has_hub:
            raise HubError(f"this fleet runs a hub, which receives and stores its {what}: fleet.telemetry and "
                           "fleet.sync read it; a receiver in this process as well would acknowledge devices' "
                           "items against it")

    def deploy(self, package: Any, devices: Any = None, **options: Any) -> Any:
        """Deploy a model package to devices; returns the running rollout (see :func:`workbench.deploy.deploy`).

        Example:
            >>> fleet.deploy("out/digits-int8", strategy=workbench.Canary(first=1)).wait()   # doctest: +SKIP
        """
        if self.has_hub:  # the hub runs it: it outlives this process, and any client can follow it
            from workbench.hub._remote_rollout import deploy_via_hub

            return deploy_via_hub(self, package, devices, **options)
        from workbench.deploy._rollout import deploy

        return deploy(self, package, devices, **options)

    def rollouts(self) -> pd.DataFrame:
        """The rollouts the fleet's hub ran or runs, newest first (a fleet without a hub has only its history).

        Example:
            >>> fleet.rollouts()[["rollout_id", "package", "status"]].head(3)   # doctest: +SKIP
        """
        from workbench.hub._remote_rollout import rollouts_frame

        return rollouts_frame(self.hub)

    def rollout(self, rollout_id: str) -> Any:
        """Follow a rollout the hub runs, started by this or any other client.

        Example:
            >>> workbench.connect().rollout("3f2a9c1b7d").wait().status   # doctest: +SKIP
            'succeeded'
        """
        from workbench.hub._remote_rollout import HubRollout

        return HubRollout(self.hub, self.hub.rollout(rollout_id))

    def history(self) -> pd.DataFrame:
        """Every deployment to this fleet: who, what, when, result (see :func:`workbench.deploy.history`)."""
        from workbench.deploy._rollout import history

        return history(self)

    @property
    def sync(self) -> Sync:
        """The fleet's sync (receiver, store, devices' sync state), started on first use; see workbench.sync."""
        sync = getattr(self, "_sync", None)
        if sync is None:
            from workbench.sync._client import Sync

            sync = self._sync = Sync(self, receive=False, hub=self.hub) if self.has_hub else Sync(self)
        return sync

    def sync_state(self, *, wide: bool = False) -> pd.DataFrame:
        """Per device and priority: backlog, oldest unsent age, last sync, throughput, ratios, drops, dedups.

        Shown compactly with units in the headers and the last sync as a UTC time; every column
        stays readable by code, and ``wide=True`` (or ``.full()``) shows them all.

        Example:
            >>> fleet.sync_state()[["device_id", "queued_items"]]   # doctest: +SKIP
        """
        frame = self.sync.state()
        if wide:
            return frame
        from workbench._table import Column, Table, View, bytes_to_kb, epoch_seconds

        return Table.of(frame, View((
            Column("device_id", "device"), Column("priority", "priority"), Column("queued_items", "queued items"),
            Column("queued_bytes", "queued (kB)", bytes_to_kb), Column("oldest_unsent_age_s", "oldest unsent (s)"),
            Column("last_sync", "last sync (UTC)", epoch_seconds),
            Column("throughput_bps", "throughput (kB/s)", bytes_to_kb), Column("dropped", "dropped"),
            Column("link", "link"))))

    def partition(self, device_id: str, seconds: float = 30.0) -> AbstractContextManager[None]:
        """Cut a device's sync link for ``seconds`` (a context manager; healed when the block ends)."""
        return self.sync.partition(device_id, seconds)

    def close(self) -> None:
        """Disconnect from the broker. The devices keep running."""
        if not getattr(self, "_closed", True):
            self._closed = True
            for part in (getattr(self, "_sync", None), getattr(self, "_telemetry", None), getattr(self, "_hub", None)):
                if part is not None:  # the hub's client last: the telemetry's streams are its own
                    part.close()
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            if self._owns_bus:
                self.bus.close()

    def network_alive(self) -> bool:
        """True while the MQTT network thread that receives device state runs.

        Example:
            >>> fleet.network_alive()   # doctest: +SKIP
            True
        """
        return self.bus.network_alive()

    def rejects(self) -> dict[str, dict[str, int]]:
        """Messages rejected so far, per device and kind (``(unknown)`` where the topic named no valid device).

        Example:
            >>> fleet.rejects()   # doctest: +SKIP
            {'sim-01': {'too_deep': 3}}
        """
        return self.reject_log.by_device()

    # -- MQTT callbacks (network thread) ------------------------------------------------------

    def _on_message_failed(self, message: mqtt.MQTTMessage, exc: Exception) -> None:
        self.rejected["internal"] += 1
        self.reject_log.count(_topic_device(message.topic), "internal", f"on {message.topic}: {exc!r}")

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            device_id, kind, _ = topics.parse_device_topic(message.topic)
            topics.check_device_id(device_id)
            body = schema.decode(bytes(message.payload))
            if kind == "inventory":
                check_inventory(body)  # every view reads its fields: one of the wrong type would break them all
        except (ValueError, PayloadError) as exc:
            if isinstance(exc, PayloadError):
                kind_name = self.rejected.reject(exc)
            else:
                kind_name = "bad_topic"
                self.rejected[kind_name] += 1
            self.reject_log.count(_topic_device(message.topic), kind_name, f"on {message.topic[:200]}: {exc}")
            return
        if kind == "reply":
            with self._lock:
                pending = self._pending.get(str(body.get("id")))
            if pending is not None:
                pending.response = body
                pending.done.set()
            return
        events: list[str] = []
        with self._changed:
            device = self._devices.get(device_id)
            if device is None:
                device = self._devices[device_id] = Device(device_id, self)
            device.last_seen = time.time()
            if kind == "status":
                events = self._apply_status(device, body)
            elif kind == "inventory":
                device.inventory_data = body
                events = ["inventory"]
            self.revision += 1
            self._changed.notify_all()
            listeners = list(self._listeners)
        for event in (*events, "change"):
            for listener in listeners:
                try:
                    listener(event, device)
                except Exception:  # a UI bug must not stop the fleet's updates
                    log.exception("fleet listener failed on %s", event)

    @staticmethod
    def _apply_status(device: Device, body: dict[str, Any]) -> list[str]:
        state, instance = body.get("state"), body.get("instance")
        if state == "online":
            same = device.online and instance == device.instance
            device.online, device.instance, device.offline_reason = True, instance, None
            return [] if same else ["online"]
        if state == "offline":
            # The late will of a replaced instance says nothing about the live one.
            if device.online and instance != device.instance:
                return []
            was_online = device.online
            device.online, device.offline_reason = False, str(body.get("reason") or "offline")
            return ["offline"] if was_online else []
        return []


def _topic_device(topic: str) -> str:
    try:
        device_id, _, _ = topics.parse_device_topic(topic)
        topics.check_device_id(device_id)
        return device_id
    except ValueError:
        return "(unknown)"
