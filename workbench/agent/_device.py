"""One device's agent: its MQTT connection, identity, inventory and command loop."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.client import topic_matches_sub

from workbench.agent._commands import command_names, get_command, is_inline
from workbench.agent._limits import DeviceLimits
from workbench.agent._netloop import NetLoop, Timer
from workbench.agent._runtime import ModelRuntime
from workbench.agent._services import AgentService, service_factories
from workbench.agent._startup import ConnectFailureLog
from workbench.errors import ConfigError, DuplicateDeviceError, PayloadError, WorkbenchError
from workbench.profiles import HardwareProfile, detect_hardware, device_providers, get_profile
from workbench.protocol import schema, topics
from workbench.protocol._mqtt import (
    RECONNECT_JITTER_S,
    BrokerAddress,
    close_client,
    guard_messages,
    is_auth_failure,
    make_client,
    new_client_id,
    refused_filters,
    subscribe_again_later,
)
from workbench.protocol._rejects import RejectLog

log = logging.getLogger("workbench.agent")

_S = TypeVar("_S")

_CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass
class AgentConfig:
    """How one device's agent runs.

    Example:
        >>> from workbench.protocol._mqtt import BrokerAddress
        >>> AgentConfig("sim-01", BrokerAddress.parse("mqtt://localhost:1883"), Path("/tmp/sim-01")).keepalive
        10
    """

    device_id: str
    broker: BrokerAddress
    data_dir: Path
    profile: str | None = None
    simulated: bool = False
    keepalive: int = 10
    # How long a starting agent listens for another instance holding its device id.
    claim_timeout: float = 1.5
    # A model to serve from the start (deployments replace it later).
    model: Path | None = None
    # The public keys whose signed packages it installs (None: $WORKBENCH_TRUSTED_KEYS or DATA_DIR/trusted_keys).
    trusted_keys: Path | None = None
    # More brokers of the same fleet (a cluster's other nodes): after a failed connect or a lost
    # connection the agent tries the next address, `broker` first.
    failover: tuple[BrokerAddress, ...] = ()

    @property
    def brokers(self) -> tuple[BrokerAddress, ...]:
        """Every address this agent may connect to, one node each, the preferred one first.

        A cluster's URL (``mqtts://h:p1,h:p2,h:p3``) names its nodes in the order this device tries them.

        Example:
            >>> config = AgentConfig("sim-01", BrokerAddress.parse("mqtt://127.0.0.1:1,127.0.0.1:2"), Path("/tmp/d"))
            >>> [b.port for b in config.brokers]
            [1, 2]
        """
        nodes = [*self.broker.nodes, *(n for b in self.failover for n in b.nodes)]
        return tuple(dict.fromkeys(nodes))

    def __post_init__(self) -> None:
        topics.check_device_id(self.device_id)
        if self.keepalive < 1:
            raise ValueError("keepalive must be at least 1 second")


@lru_cache(maxsize=1)
def _host_hardware() -> dict[str, Any]:
    # Every simulated device in a process shares one host: detect it once.
    return detect_hardware("/")


# After a broker restart every device of a fleet reconnects: without jitter (RECONNECT_JITTER_S, shared with
# the Bus) the backoff (1 s, 2 s, 4 s...) would send them all at the same instants.
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0


def reconnect_delay(attempt: int, *, jitter: float = RECONNECT_JITTER_S) -> float:
    """Seconds to wait before connect attempt ``attempt`` (0 = the first after a loss): doubling, capped, jittered.

    Example:
        >>> 1.0 <= reconnect_delay(0) <= 3.0 and 30.0 <= reconnect_delay(10) <= 32.0
        True
    """
    return min(RECONNECT_MIN_S * 2 ** min(attempt, 16), RECONNECT_MAX_S) + random.uniform(0.0, jitter)


def restart_network(client: mqtt.Client) -> None:
    """Drop ``client``'s connection after a step of its network loop failed; the agent then connects anew.

    The half-read packet of the failed step is dropped with the socket; ``on_connect`` subscribes and
    announces again, exactly as after a broker restart.

    Example:
        >>> restart_network(make_client(BrokerAddress.parse("localhost"), "sim-01-x"))
    """
    client.disconnect()


def device_subscriptions(device_id: str, service_topics: list[str]) -> list[tuple[str, int]]:
    """The (filter, QoS) pairs a device subscribes to on every connect: one QoS 1 filter, the rest QoS 0.

    On NATS every QoS 1 subscription is a JetStream consumer, made through the JetStream API on each
    connect: seven per device made a thousand connecting devices queue their session look-ups past
    NATS's 5 s timeout, and passed its consumer limit. Commands keep QoS 1 (nothing resends them).
    Desired state is retained, so every connect delivers it again, and the sync sender resends what
    was not acknowledged; with a clean session QoS 1 adds nothing across a reconnect anyway. Status and
    claim are the device's own liveness talk. A service topic outside the desired filter keeps QoS 1.

    Example:
        >>> device_subscriptions("sim-01", ["wb/v1/desired/sim-01/model"])
        [('wb/v1/cmd/sim-01/+', 1), ('wb/v1/dev/sim-01/status', 0), ('wb/v1/dev/sim-01/claim', 0), \
('wb/v1/desired/sim-01/+', 0)]
    """
    desired = topics.desired_filter(device_id)
    others = [(t, 1) for t in dict.fromkeys(service_topics) if not topic_matches_sub(desired, t)]
    return [(topics.command_filter(device_id), 1), (topics.status_topic(device_id), 0),
            (topics.claim_topic(device_id), 0), (desired, 0), *others]


@dataclass
class _Claim:
    event: threading.Event = field(default_factory=threading.Event)
    holder: dict[str, Any] | None = None


class DeviceAgent:
    """The agent of one device: connects, announces itself, answers commands.

    Example:
        >>> agent = DeviceAgent(config, executor)   # doctest: +SKIP
        >>> agent.start()                           # doctest: +SKIP
    """

    def __init__(self, config: AgentConfig, executor: Executor) -> None:
        from workbench._version import __version__

        self.config = config
        self.device_id = config.device_id
        self.instance = uuid.uuid4().hex[:12]
        self.agent_version = __version__
        self.profile: HardwareProfile | None = get_profile(config.profile) if config.profile else None
        self.limits = (
            DeviceLimits.for_profile(self.profile)
            if self.profile and config.simulated
            else DeviceLimits.for_host()
        )
        self.started_at = time.time()
        self.counters: Counter[str] = Counter()
        self.rejected = schema.PayloadCounters()
        self.reject_log = RejectLog(log, what="payload")
        self._executor = executor
        self._claim = _Claim()
        self._holding = False  # True once this instance owns the device id
        self._stopping = False
        self._fatal: str | None = None
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._state_file = config.data_dir / "state.json"
        self.state: dict[str, Any] = self._load_state()
        # The telemetry, sync and deploy services save from their own threads: one writer of state.tmp at a time.
        self._state_lock = threading.Lock()
        # One node: the agent's own reconnect picks the node (config.brokers), so paho's failover hook stays out.
        self._client = make_client(config.brokers[0], new_client_id(f"wb-dev-{self.device_id}"))
        self._client.will_set(
            topics.status_topic(self.device_id),
            self._status_payload("offline", reason="connection lost"),
            qos=1,
            retain=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = guard_messages(self._on_message, self._on_message_failed)
        self._guard_lock = threading.Lock()  # stop() and a restart never interleave
        self._refused_in_a_row = 0  # SUBACKs that refused a filter, since the last that refused none
        self._connect_log = ConnectFailureLog(self.device_id, config.broker.url)
        self._client.on_subscribe = self._on_subscribe
        self._loop: NetLoop | None = None
        self._retry: Timer | None = None  # the pending connect attempt, if any
        self._attempt = 0  # failed or lost connections since the last CONNACK: the backoff's exponent
        self._address = 0  # index into config.brokers of the address to connect to next
        self._network_dead = False  # a failed step whose restart failed too: deaf until the process restarts
        self._restart_now = False  # the next connect follows a crash of this device's network step: no backoff
        self._gated = False  # holds one of the process's connect slots until its SUBACK (or a failure)
        self._restarting = False  # from a crash of its network step until it is subscribed again
        self.runtime = ModelRuntime(self.limits)
        if config.model is not None:
            loaded = self.runtime.load(config.model, name=config.model.stem)
            self.runtime.activate(loaded)
            self.state["active_model"] = {k: v for k, v in loaded.describe().items() if k not in ("inputs", "outputs")}
        self.services: dict[str, AgentService] = {}
        for name, factory in service_factories().items():
            service = factory(self)
            if service is not None:
                self.services[name] = service

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start connecting, on the process's shared network loop (retrying with jittered backoff).

        :meth:`wait_claimed` then blocks until the device id is held, or says why not.
        """
        loop = self._loop = NetLoop.get()
        loop.call_soon_wait(lambda: loop.attach(self._client, self._on_network_crash), timeout=10)
        loop.call_soon(self._connect)

    def _connect(self) -> None:
        # Loop thread: wait for a turn among the process's connects in flight (paced for the broker).
        self._retry = None
        if self._stopping or self._fatal is not None or self._network_dead:
            return
        assert self._loop is not None
        self._loop.gate(self._connect_now)

    def _connect_now(self) -> None:
        # Loop thread. The one place a connection is made: failover only chooses `self._address`.
        self._gated = True
        if self._stopping or self._fatal is not None or self._network_dead:
            self._release_gate()
            return
        address = self.config.brokers[self._address]
        self._connect_log.url = address.url
        try:
            self._client.connect(address.host, address.port, keepalive=self.config.keepalive)
        except (OSError, ValueError):
            self._release_gate()
            self._connect_log.failed()
            self._schedule_connect()

    def _release_gate(self) -> None:
        if self._gated and self._loop is not None:
            self._gated = False
            self._loop.release()

    def _schedule_connect(self) -> None:
        # Loop thread: after a failed connect or a lost connection, the next address after a jittered backoff.
        if self._stopping or self._fatal is not None or self._network_dead or self._retry is not None:
            return
        assert self._loop is not None
        if self._restart_now:
            # This device's own network failed (not the broker's): at once and to the same broker, as
            # paho's restarted thread did; no herd to spread.
            self._restart_now = False
            self._retry = self._loop.call_later(0.0, self._connect)
            return
        self._address = (self._address + 1) % len(self.config.brokers)
        self._retry = self._loop.call_later(reconnect_delay(self._attempt), self._connect)
        self._attempt += 1

    def _on_network_crash(self, exc: BaseException) -> None:
        # Loop thread: a step of this client raised (a callback bug that escaped every guard). With
        # paho's own loop this ended the device's network thread; here the connection is dropped and
        # made anew, and counted.
        with self._guard_lock:
            if self._stopping or self._fatal is not None:
                return
            self.counters["network_restarts"] += 1
            log.error("%s: the MQTT network thread died (%s: %s); starting it again", self.device_id,
                      type(exc).__name__, exc)
            try:
                self._restart_now = self._restarting = True
                restart_network(self._client)
                if self._client.socket() is None:  # nothing left to disconnect: on_disconnect will not come
                    self._schedule_connect()
            except Exception:
                self._network_dead = True
                log.exception("%s: restarting the MQTT network failed; the device is deaf until restarted",
                              self.device_id)

    def network_alive(self) -> bool:
        """True while the process's network loop drives this agent (or it is stopping or refused on purpose).

        A supervisor (watchdog, health check) asks this: False means the agent cannot hear the
        fleet, and the restart after its network failed did not work.

        Example:
            >>> agent.network_alive()   # doctest: +SKIP
            True
        """
        if self._stopping or self._fatal is not None:
            return True
        return self._loop is not None and self._loop.alive and not self._network_dead and not self._restarting

    def wait_claimed(self, timeout: float | None = None) -> None:
        """Block until this agent owns its id and is online, or raise why it cannot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._holding:
            if self._fatal:
                raise DuplicateDeviceError(self._fatal) if "already online" in self._fatal else WorkbenchError(
                    self._fatal
                )
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.device_id}: not online after {timeout:g} s")
            time.sleep(0.05)

    def stop(self, reason: str = "shutdown") -> None:
        """Announce a clean shutdown and disconnect (so the broker does not send the will)."""
        with self._guard_lock:
            self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        for name, service in self.services.items():
            try:
                service.stop()
            except Exception:  # one service's bug must not keep the device from going offline cleanly
                log.exception("%s: service %s failed to stop", self.device_id, name)
        if self._holding:
            info = self._client.publish(
                topics.status_topic(self.device_id), self._status_payload("offline", reason=reason), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass  # not connected: the will says offline instead
        loop = self._loop
        if loop is not None and loop.alive:
            try:
                loop.call_soon_wait(self._close_on_loop, timeout=5)
                return
            except TimeoutError:
                log.warning("%s: the network loop did not close the connection in 5 s; closing it here",
                            self.device_id)
        close_client(self._client)

    def _close_on_loop(self) -> None:
        # Written now, while the socket is open: a clean DISCONNECT, so the broker does not send the will.
        if self._client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
            self._client.loop_write()
        assert self._loop is not None
        self._loop.detach(self._client)
        close_client(self._client)

    @property
    def fatal(self) -> str | None:
        return self._fatal

    # -- state ---------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_state(self) -> None:
        """Persist the device's state atomically: a crash leaves the old or the new file, never half."""
        tmp = self._state_file.with_suffix(".tmp")
        with self._state_lock:
            snapshot = dict(self.state)  # one C-level copy: a service adding a key meanwhile cannot break the dump
            with open(tmp, "w") as handle:
                json.dump(snapshot, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._state_file)

    def inventory(self, *, refresh: bool = False) -> dict[str, Any]:
        """What this device is and runs; published retained on every connect."""
        hardware = dict(_host_hardware())
        if refresh:
            hardware["disk_free_mb"] = detect_hardware(self.config.data_dir)["disk_free_mb"]
        if self.profile is not None and self.config.simulated:
            # A simulated Pi runs on this host's wheel, but must not offer what a Pi lacks (CUDA...).
            hardware["execution_providers"] = device_providers(hardware["execution_providers"], self.profile)
        return {
            "device_id": self.device_id,
            "instance": self.instance,
            "agent_version": self.agent_version,
            "simulated": self.config.simulated,
            "profile": self.profile.name if self.profile else None,
            "profile_spec": self.profile.to_dict() if self.profile else None,
            "hardware": hardware,
            "limits": self.limits.to_dict(),
            "active_model": self.state.get("active_model"),
            "commands": command_names(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
        }

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish for a service or command handler (queued by paho while reconnecting)."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_inventory(self) -> None:
        """Re-announce the inventory, e.g. after the active model changed."""
        self._client.publish(
            topics.inventory_topic(self.device_id), schema.encode(self.inventory()), qos=1, retain=True
        )

    def service(self, name: str, kind: type[_S]) -> _S:
        """The running service ``name`` (``sync``, ``telemetry``, ``deploy``...) of type ``kind``.

        Raises :class:`~workbench.errors.ConfigError` when this agent runs without it.

        Example:
            >>> agent.service("sync", SyncService).put(payload)   # doctest: +SKIP
        """
        service = self.services.get(name)
        if not isinstance(service, kind):
            raise ConfigError(f"{name} is not running on {self.device_id} (agent {self.agent_version}); "
                              "restart or upgrade the agent")
        return service

    @property
    def online(self) -> bool:
        return self._holding and self._client.is_connected()

    def stats(self) -> dict[str, Any]:
        return {
            "uptime_s": time.time() - self.started_at,
            "counters": dict(self.counters),
            "rejected_payloads": dict(self.rejected),
            "network_alive": self.network_alive(),
        }

    # -- MQTT callbacks (the process's shared network loop) ---------------------------

    def _status_payload(self, state: str, **extra: Any) -> bytes:
        return schema.encode({"state": state, "instance": self.instance, "ts": time.time(), **extra})

    def _publish_online(self) -> None:
        self.publish_inventory()
        self._client.publish(topics.status_topic(self.device_id), self._status_payload("online"), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            url = self.config.broker.url
            if is_auth_failure(reason_code):
                self._fatal = f"{self.device_id}: the broker at {url} refused the credentials ({reason_code})"
                log.error(self._fatal)
            else:
                log.warning("%s: broker at %s refused the connection: %s; retrying", self.device_id, url, reason_code)
            return
        self.counters["connects"] += 1
        if self.counters["connects"] > 1:
            self.counters["reconnects"] += 1
        self._attempt = 0
        self._connect_log.connected()
        device = self.device_id
        client.subscribe(self._subscriptions())
        if self._holding:
            log.info("%s: reconnected", device)
            self._publish_online()
        else:
            # Ask whether another live instance holds this id; a killed one cannot answer, so silence
            # for claim_timeout means ours.
            self._client.publish(
                topics.claim_topic(self.device_id),
                schema.encode({"op": "claim", "instance": self.instance}),
                qos=1,
            )
            assert self._loop is not None
            self._loop.call_later(self.config.claim_timeout, self._claim_decided)

    def _subscriptions(self) -> list[tuple[str, int]]:
        return device_subscriptions(self.device_id, [t for s in self.services.values() for t in s.topics()])

    def _claim_decided(self) -> None:
        # Loop thread: claim_timeout passed, or another instance said it holds the id.
        if self._holding or self._stopping or self._fatal is not None:
            return
        if self._claim.holder is not None:
            holder = self._claim.holder
            self._fatal = (
                f"device id {self.device_id!r} is already online: agent instance {holder.get('instance')} "
                f"(host {holder.get('hostname')}, pid {holder.get('pid')}) holds it. "
                "Stop that agent or start this one with another --device-id."
            )
            log.error(self._fatal)
            self._client.disconnect()  # clean: the broker must not publish our will over the holder's status
            return
        self._holding = True
        self._publish_online()
        log.info("%s: online (instance %s)", self.device_id, self.instance)
        # Starting a service may block (files, SQLite): not on the loop that serves every device.
        self._executor.submit(self._start_services)

    def _start_services(self) -> None:
        for name, service in self.services.items():
            try:
                service.start()
            except Exception:
                log.exception("%s: service %s failed to start", self.device_id, name)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reason_codes: list[Any], _p: Any) -> None:
        # A broker may grant the SUBACK but refuse a filter (0x80): NATS does when it cannot make the
        # JetStream consumer behind a QoS 1 subscription. The device would then be online but deaf.
        # On a NATS cluster that just lost a node, that is a JetStream election in progress: try again shortly.
        self._release_gate()
        self._restarting = False  # subscribed again: it hears commands
        refused = refused_filters(reason_codes)
        self._refused_in_a_row = self._refused_in_a_row + 1 if refused else 0
        if refused:
            self.counters["subscriptions_refused"] += refused
            log.error("%s: the broker refused %d of %d subscriptions (SUBACK 0x80); commands or desired state "
                      "do not reach this device until it subscribes again, in a few seconds", self.device_id,
                      refused, len(reason_codes))
            if not self._stopping:
                subscribe_again_later(self._client, self._subscriptions, attempt=self._refused_in_a_row)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self._release_gate()
        if not self._stopping and self._fatal is None:
            self.counters["disconnects"] += 1
            log.warning("%s: disconnected (%s); reconnecting with backoff", self.device_id, reason_code)
            self._schedule_connect()

    def _on_message_failed(self, message: mqtt.MQTTMessage, exc: Exception) -> None:
        # Reached only through a bug: every known bad input is a PayloadError handled below.
        self.rejected["internal"] += 1
        self.reject_log.count(self.device_id, "internal", f"on {message.topic}: {type(exc).__name__}: {exc}")

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        for service in self.services.values():
            if any(topic_matches_sub(sub, message.topic) for sub in service.topics()):
                try:
                    service.on_message(message.topic, bytes(message.payload))
                except Exception as exc:
                    self.rejected["internal"] += 1
                    self.reject_log.count(self.device_id, "internal", f"service on {message.topic}: {exc!r}")
                return
        try:
            body = schema.decode(bytes(message.payload))
        except PayloadError as exc:
            kind = self.rejected.reject(exc)
            self.reject_log.count(self.device_id, kind, f"on {message.topic}: {exc}")
            if message.topic == topics.status_topic(self.device_id):
                self._on_status({})  # garbage retained over our status would hide a live device from new clients
            return
        topic = message.topic
        if topic == topics.claim_topic(self.device_id):
            self._on_claim(body)
        elif topic == topics.status_topic(self.device_id):
            self._on_status(body)
        elif topic.startswith(topics.COMMAND_PREFIX):
            self.counters["commands_received"] += 1
            if is_inline(topic.rsplit("/", 1)[-1]):
                self._run_command(topic, body)
            else:
                self._executor.submit(self._run_command, topic, body)

    def _on_claim(self, body: dict[str, Any]) -> None:
        if body.get("instance") == self.instance:
            return
        op = body.get("op")
        if op == "claim" and self._holding:
            self._client.publish(
                topics.claim_topic(self.device_id),
                schema.encode(
                    {"op": "held", "instance": self.instance, "to": body.get("instance"),
                     "hostname": socket.gethostname(), "pid": os.getpid()}
                ),
                qos=1,
            )
        elif op == "held" and body.get("to") == self.instance and not self._holding:
            self._claim.holder = body
            self._claim.event.set()
            self._claim_decided()

    def _on_status(self, body: dict[str, Any]) -> None:
        # A late will of an earlier (killed) instance must not mark this live one offline.
        # While stopping, our own "offline" comes back here: answering it would undo the clean shutdown.
        if self._holding and not self._stopping and not (
            body.get("instance") == self.instance and body.get("state") == "online"
        ):
            self._client.publish(
                topics.status_topic(self.device_id), self._status_payload("online"), qos=1, retain=True
            )

    # -- commands (worker threads) -----------------------------------------------------

    def _run_command(self, topic: str, body: dict[str, Any]) -> None:
        _, name = topics.parse_command_topic(topic)
        reply_to = body.get("reply_to")
        if not isinstance(reply_to, str) or not _CLIENT_ID.fullmatch(reply_to):
            self.rejected["malformed"] += 1
            self.reject_log.count(self.device_id, "malformed", f"command {name} without a valid reply_to; dropped")
            return
        response: dict[str, Any] = {"id": body.get("id"), "command": name}
        handler = get_command(name)
        args = body.get("args") or {}
        if handler is None:
            response |= {"ok": False, "error": {"code": "unknown_command",
                                                 "message": f"unknown command {name!r}; this agent "
                                                 f"({self.agent_version}) knows {', '.join(command_names())}"}}
        elif not isinstance(args, dict):
            response |= {"ok": False, "error": {"code": "bad_args", "message": "args must be a JSON object"}}
        else:
            try:
                response |= {"ok": True, "result": handler(self, args)}
                self.counters["commands_ok"] += 1
            except WorkbenchError as exc:
                response |= {"ok": False, "error": {"code": type(exc).__name__, "message": str(exc)}}
            except Exception as exc:  # a handler bug must not kill the agent
                log.exception("%s: command %s failed", self.device_id, name)
                response |= {"ok": False, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}
        if not response["ok"]:
            self.counters["commands_failed"] += 1
        try:
            payload = schema.encode(response)
        except (TypeError, ValueError) as exc:
            payload = schema.encode({"id": body.get("id"), "command": name, "ok": False,
                                     "error": {"code": "internal", "message": f"unencodable result: {exc}"}})
        self._client.publish(topics.reply_topic(self.device_id, reply_to), payload, qos=1)
