"""`workbench up`, `status` and `down`: a local fleet of real agent processes and a broker."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workbench._listen import LOOPBACK, require_tls_beyond_loopback
from workbench.errors import (
    ConfigError,
    FleetAlreadyRunningError,
    FleetError,
    FleetNotRunningError,
    FleetTimeoutError,
    WorkbenchError,
)
from workbench.profiles import get_profile
from workbench.protocol._mqtt import BrokerAddress
from workbench.sim import _brokers, _procs
from workbench.sim._rundir import RunDir

DEFAULT_PROFILES = ("raspberry-pi-4", "raspberry-pi-5", "intel-nuc", "jetson-orin-nano")
# One agent process carries at most this many simulated devices (each its own MQTT connection). Each process
# costs ~40 MiB and ~1.5 s of CPU to import onnxruntime, numpy and the agent: at 2,000 devices, 25 a process
# meant 80 interpreters starting at once on two cores.
DEVICES_PER_PROCESS = 100


# Above this many devices, `up` paces what every device reports on its own (device metrics, sync state, by
# default once a second each): the fleet as a whole then sends about FLEET_REPORTS_PER_S of each per second.
# Measured here: a device reporting once a second costs 0.25 % of a core (agent side; 0.06 % without its
# telemetry), so 1,000 such devices needed more than this machine's two cores before any of them did work.
PACED_ABOVE = 200
FLEET_REPORTS_PER_S = 100


def report_interval(devices: int) -> float | None:
    """Seconds between one device's own reports in a fleet of ``devices`` (None: the agent's default, 1 s).

    Example:
        >>> report_interval(2000), report_interval(200)
        (20.0, None)
    """
    return None if devices <= PACED_ABOVE else round(devices / FLEET_REPORTS_PER_S, 1)


def device_ids(count: int, prefix: str = "sim") -> list[str]:
    """``sim-01`` ... ``sim-NN``, zero-padded to the fleet's size.

    Example:
        >>> device_ids(3)
        ['sim-01', 'sim-02', 'sim-03']
    """
    width = max(2, len(str(count)))
    return [f"{prefix}-{index:0{width}d}" for index in range(1, count + 1)]


def _plan(count: int, profiles: list[str], per_process: int | None) -> list[list[tuple[str, str]]]:
    if count < 1:
        raise ConfigError(f"--devices must be at least 1, got {count}")
    for name in profiles:
        get_profile(name)  # raises UnknownProfileError naming the known ones
    devices = list(zip(device_ids(count), itertools.cycle(profiles), strict=False))
    if per_process is None:
        # A small fleet gets a process per device (kill -9 hits one device); a large one shares.
        per_process = 1 if count <= 8 else min(DEVICES_PER_PROCESS, math.ceil(count / 8))
    return [devices[i : i + per_process] for i in range(0, count, per_process)]


@contextmanager
def _locked(run_dir: RunDir) -> Iterator[None]:
    run_dir.path.mkdir(parents=True, exist_ok=True)
    with open(run_dir.lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _owned_processes(record: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The processes the fleet started, in the order to stop them: agents (so they announce a clean
    shutdown while the broker still runs), the artifact server, then the broker unless it is external."""
    return [list(record.get("agents", [])), [record["hub"]] if record.get("hub") else [],
            [record["artifacts"]] if record.get("artifacts") else [],
            _brokers.broker_processes(record.get("broker") or {})]


def _record_alive(record: dict[str, Any]) -> bool:
    return any(_procs.is_alive(proc) for stage in _owned_processes(record) for proc in stage)


def up(
    *,
    devices: int = 3,
    profiles: list[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    port: int = 0,
    broker: str = _brokers.EMBEDDED,
    keepalive: int = 10,
    per_process: int | None = None,
    secure: bool = True,
    host: str = LOOPBACK,
    hub: bool = True,
    timeout: float = 120.0,
    cluster: int = 1,
) -> dict[str, Any]:
    """Start a broker and ``devices`` simulated devices as real agent processes; wait until all are online.

    Returns the fleet record (also written to ``RUN_DIR/fleet.json``). Raises
    :class:`FleetAlreadyRunningError` if this run directory's fleet is up. The fleet hub runs
    too (store ``RUN_DIR/hub/fleet.duckdb``, token ``RUN_DIR/hub.token``): it receives, stores
    and serves what the devices send to every client. ``hub=False`` leaves receiving to each
    client process, as for a fleet reached by its broker URL alone.

    A fleet is secure unless ``secure=False`` (``--insecure``): TLS with a generated CA, a
    password and ACLs per device, so a device publishes only under its own prefix and only the
    workbench sends commands, desired state and acknowledgements. The broker listens on
    ``host`` (loopback unless asked); an insecure fleet beyond loopback, or a secure one on a
    broker ``up`` does not start, raises :class:`ConfigError` before anything starts. The hub
    and the artifact server always listen on loopback.

    ``cluster=3`` (``--cluster 3``) starts three embedded NATS servers as one cluster, the MQTT
    state replicated on each (:func:`~workbench.sim._brokers.start_cluster`); device *i* tries node
    *i* mod 3 first and every device, the hub and the clients fail over to the next node when theirs
    is lost. fleet.json's ``broker.url`` lists the nodes, ``broker.nodes`` their processes.

    Example:
        >>> record = up(devices=3, run_dir="/tmp/wb-fleet")   # doctest: +SKIP
        >>> record["broker"]["url"]                           # doctest: +SKIP
        'mqtts://127.0.0.1:40123'
    """
    rd = RunDir.resolve(run_dir)
    plan = _plan(devices, list(profiles or DEFAULT_PROFILES), per_process)
    _check_listen(broker, host, secure)
    if cluster != 1 and broker != _brokers.EMBEDDED:
        raise ConfigError(f"--cluster {cluster} starts a cluster of embedded NATS servers; it cannot be combined with "
                          f"--broker {broker}: drop --cluster, or --broker")
    with _locked(rd):
        existing = rd.read()
        if existing is not None:
            if _record_alive(existing):
                raise FleetAlreadyRunningError(
                    f"a fleet is already up in {rd.path} (broker {existing['broker']['url']}, "
                    f"{len(existing.get('devices', []))} devices); `workbench down --run-dir {rd.path}` stops it"
                )
            rd.clear()  # stale record of a fleet that died: start afresh
        record: dict[str, Any] = {"created": time.time(), "run_dir": str(rd.path), "agents": [],
                                  "devices": [], "keepalive": keepalive, "secure": None}
        try:
            _start(record, rd, plan, broker=broker, port=port, keepalive=keepalive, secure=secure, host=host,
                   hub=hub, cluster=cluster)
            rd.write(record)  # written before the wait, so `down` can clean up a fleet that never came up
            _wait_online(record, rd, [d for group in plan for d, _ in group], timeout=timeout)
            _check_subscriptions(record, [d for group in plan for d, _ in group], timeout=timeout)
        except BaseException:
            _stop_record(record)
            rd.clear()
            raise
        return record


def _check_listen(broker: str, host: str, secure: bool) -> None:
    if broker not in (_brokers.EMBEDDED, _brokers.MOSQUITTO):
        if host != LOOPBACK:
            raise ConfigError(f"--host {host} sets where a broker `workbench up` starts listens; {broker!r} is "
                              "already running wherever it listens: drop --host")
        if secure:
            from workbench.sim._security import check_secure_broker

            check_secure_broker(broker)
    require_tls_beyond_loopback(host, tls=secure, what="an --insecure fleet's broker",
                                fix="drop --insecure (credentials, ACLs and TLS are the default)")


def _start(record: dict[str, Any], rd: RunDir, plan: list[list[tuple[str, str]]], *, broker: str, port: int,
           keepalive: int, secure: bool, host: str, hub: bool, cluster: int = 1) -> None:
    if secure:
        from workbench.sim._security import prepare_secure

        material = prepare_secure(rd, broker, [d for group in plan for d, _ in group], host=host)
        record["secure"] = material.record
        broker_auth = material.broker_config
    else:
        material, broker_auth = None, None
    if cluster != 1:
        record["broker"] = _brokers.start_cluster(rd, cluster, port=port, auth=broker_auth, host=host)
    elif broker in (_brokers.EMBEDDED, _brokers.MOSQUITTO):
        record["broker"] = _brokers.start_broker(broker, rd, port=port, auth=broker_auth, host=host)
    else:
        address = BrokerAddress.parse(broker)  # an external broker: the fleet only uses it
        record["broker"] = {"kind": "external", "url": address.url, "host": address.host, "port": address.port}
    address = BrokerAddress.parse(record["broker"]["url"])
    from workbench.deploy._serve import spawn_artifact_server  # devices fetch packages here, whoever deploys

    record["artifacts"] = spawn_artifact_server(rd.path / "artifacts", rd.logs / "artifacts.log")
    from workbench.protocol.keys import enroll_local_fleet  # devices trust only packages the workbench's key signed

    enroll_local_fleet(rd.data, [d for group in plan for d, _ in group])
    from workbench.agent._origin import write_origins  # devices download only from that artifact server

    write_origins(rd.data, [d for group in plan for d, _ in group], record["artifacts"]["url"])
    if hub:
        record["hub"] = spawn_hub(record, rd)
    _pace_reports(record, rd, [d for group in plan for d, _ in group])
    first = 0
    for index, group in enumerate(plan):
        # The agent gives its Nth device the Nth node of this list first: device i of the fleet starts on node i mod N.
        url = address.preferring(first).url
        first += len(group)
        argv = [sys.executable, "-m", "workbench.cli", "agent", "--broker", url, "--simulated",
                "--keepalive", str(keepalive), "--data-dir", str(rd.data), "--log-level", "INFO"]
        for device_id, profile in group:
            argv += ["--device-id", device_id, "--profile", profile]
        if material is not None:
            argv += material.agent_args(group[0][0]) if len(group) == 1 else material.agent_args_many()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = _procs.spawn(argv, rd.logs / f"agents-{index:03d}.log", env=env)
        record["agents"].append({**proc, "devices": [d for d, _ in group]})
        record["devices"] += [{"device_id": d, "profile": p} for d, p in group]


def _pace_reports(record: dict[str, Any], rd: RunDir, devices: list[str]) -> None:
    # Retained desired state, so each device applies it on its first connect and shows it in its twin;
    # `fleet.telemetry.configure(publish_interval_s=...)` changes it as for any fleet.
    interval = report_interval(len(devices))
    if interval is None or record["broker"].get("kind") == "external":
        return
    from workbench.fleet._connect import connect_record
    from workbench.protocol import schema, topics

    with connect_record(record, rd, timeout=20.0) as fleet:
        info = None
        for device in devices:
            fleet.bus.publish(topics.desired_topic(device, "telemetry"),
                               schema.encode({"publish_interval_s": interval}), qos=1, retain=True)
            info = fleet.bus.publish(topics.desired_topic(device, "sync"),
                                      schema.encode({"state_interval_s": interval}), qos=1, retain=True)
        if info is not None:
            info.wait_for_publish(60)


def spawn_hub(record: dict[str, Any], rd: RunDir, *, wait: float = 30.0) -> dict[str, Any]:
    """Start the fleet's hub process on the fleet's broker (with the workbench's credentials when secure).

    Example:
        >>> spawn_hub(record, RunDir.resolve("/tmp/wb-fleet"))["url"]   # doctest: +SKIP
        'http://127.0.0.1:40127'
    """
    from workbench.errors import HubError
    from workbench.hub import ensure_token

    host = "127.0.0.1"
    hub_port = _procs.free_port(host)
    token_file = rd.path / "hub.token"
    ensure_token(token_file)
    store = rd.path / "hub" / "fleet.duckdb"
    argv = [sys.executable, "-m", "workbench.cli", "hub", "--broker", record["broker"]["url"],
            "--store", f"duckdb://{store}", "--host", host, "--port", str(hub_port), "--token-file", str(token_file),
            "--run-dir", str(rd.path)]
    secure = record.get("secure") or {}
    controller = secure.get("controller") or {}
    if controller.get("password_file"):
        argv += ["--username", controller["username"], "--password-file", controller["password_file"]]
    if secure.get("ca_file"):
        argv += ["--ca-file", secure["ca_file"]]
    proc = _procs.spawn_listening(argv, rd.logs / "hub.log", host, hub_port, wait=wait, what="the fleet hub",
                                  error=HubError)
    return {"url": f"http://{host}:{hub_port}", "host": host, "port": hub_port, "token_file": str(token_file),
            "store": f"duckdb://{store}", **proc}


def _wait_online(record: dict[str, Any], rd: RunDir, expected: list[str], *, timeout: float) -> None:
    from workbench.fleet._connect import connect_record

    deadline = time.monotonic() + timeout
    with connect_record(record, rd, timeout=min(timeout, 20.0)) as fleet:
        while True:
            online = {d.device_id for d in fleet.online()}
            missing = [d for d in expected if d not in online]
            if not missing:
                return
            dead = [a for a in record["agents"] if not _procs.is_alive(a)]
            if dead:
                log_tail = Path(dead[0]["log"]).read_text(errors="replace")[-1500:]
                raise FleetError(f"agent process for {', '.join(dead[0]['devices'])} exited while starting; "
                                 f"its log ({dead[0]['log']}) ends with:\n{log_tail}")
            if time.monotonic() > deadline:
                raise FleetTimeoutError(f"{len(missing)} of {len(expected)} devices not online after {timeout:g} s "
                                        f"({', '.join(missing[:5])}...); see the logs in {rd.logs}")
            time.sleep(0.1)


def _check_subscriptions(record: dict[str, Any], devices: list[str], *, timeout: float) -> None:
    # NATS refuses the QoS 1 subscription whose JetStream consumer it cannot make (SUBACK 0x80): the device is
    # online but deaf to commands until it subscribes again, which it does after a pause. The broker's log says
    # whether any was refused, /jsz whether every device holds its consumer by now: look before calling it up.
    if record["broker"].get("kind") != _brokers.EMBEDDED:
        return
    report = _brokers.subscription_report(record["broker"])
    if not report["refused"]:
        return
    deadline = time.monotonic() + timeout
    while missing := _brokers.devices_without_command_consumer(record["broker"], devices):
        if time.monotonic() > deadline:
            raise FleetError(f"the NATS broker refused {report['refused']} QoS 1 subscription(s) of the devices, "
                             f"and {len(missing)} device(s) ({', '.join(missing[:5])}) still hold no command consumer "
                             f"after {timeout:g} s (JetStream consumers: {report['consumers']}, limit "
                             f"{report['max_consumers']}); they would miss commands. First refusal: "
                             f"{report['refusals'][0]}")
        time.sleep(1.0)


def _stop_record(record: dict[str, Any]) -> None:
    for stage in _owned_processes(record):
        _procs.stop(stage)


def down(run_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Stop every process the fleet in ``run_dir`` started, and nothing else.

    Example:
        >>> down("/tmp/wb-fleet")["stopped_devices"]   # doctest: +SKIP
        3
    """
    rd = RunDir.resolve(run_dir)
    with _locked(rd):
        record = rd.read()
        if record is None:
            raise FleetNotRunningError(f"no fleet is running in {rd.path} (no fleet.json); nothing to stop")
        _stop_record(record)
        rd.clear()
    return {"run_dir": str(rd.path), "stopped_devices": len(record.get("devices", [])),
            "stopped_processes": sum(len(stage) for stage in _owned_processes(record))}


def status(run_dir: str | os.PathLike[str] | None = None, *, timeout: float = 5.0) -> dict[str, Any]:
    """Each device of the local fleet with its online state, as the broker reports it.

    Example:
        >>> [d["online"] for d in status("/tmp/wb-fleet")["devices"]]   # doctest: +SKIP
        [True, True, True]
    """
    from workbench.fleet._connect import connect_record

    rd = RunDir.resolve(run_dir)
    record = rd.read()
    if record is None:
        raise FleetNotRunningError(f"no fleet is running in {rd.path}; start one with `workbench up`")
    result: dict[str, Any] = {"run_dir": str(rd.path), "broker": record["broker"]["url"],
                              "broker_running": None, "devices": []}
    broker = record["broker"]
    if _brokers.broker_processes(broker):
        result["broker_running"] = all(_procs.is_alive(node) for node in _brokers.broker_processes(broker))
    processes = {d: _procs.is_alive(a) for a in record.get("agents", []) for d in a["devices"]}
    seen: dict[str, Any] = {}
    try:
        with connect_record(record, rd, timeout=timeout) as fleet:
            # Retained status arrives right after subscribing (after the inventory); give it a moment.
            with contextlib.suppress(FleetTimeoutError):
                fleet.wait_until(lambda f: sum(d.online or d.offline_reason is not None for d in f.devices)
                                 >= len(record["devices"]), timeout=min(timeout, 2.0))
            seen = {d.device_id: d for d in fleet.devices}
    except WorkbenchError as exc:
        result["error"] = str(exc)
    for entry in record.get("devices", []):
        device = seen.get(entry["device_id"])
        result["devices"].append({
            **entry,
            "online": bool(device and device.online),
            "process_running": processes.get(entry["device_id"]),
            "active_model": device.active_model if device else None,
        })
    return result

