"""`workbench hub`: run the fleet hub; `workbench telemetry query`: ask it from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from workbench._listen import require_tls_beyond_loopback
from workbench.errors import ConfigError
from workbench.hub import ensure_token


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line: what a log shipper (journald, Loki, CloudWatch) parses without rules.

    Example:
        >>> record = logging.LogRecord("workbench.hub", logging.INFO, __file__, 1, "listening on %s", ("x",), None)
        >>> json.loads(JsonLogFormatter().format(record))["message"]
        'listening on x'
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("hub", help="run the fleet hub (receiver, stores, API)",
                            description="Run the fleet hub: the one receiver and acknowledger of every device's "
                            "outbox, owner of the telemetry and sync stores, serving queries over HTTP to every "
                            "notebook, dashboard and command.")
    parser.add_argument("--broker", required=True, help="the fleet's broker, mqtt://host:port or mqtts://...")
    parser.add_argument("--store", required=True, help="duckdb:///path/fleet.duckdb (a file) or "
                        "postgresql://user@host/db")
    parser.add_argument("--data-dir", type=Path, help="sync store, alert rules, lock (default: beside the DuckDB "
                        "file; required with PostgreSQL)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s); beyond "
                        "loopback only with --certfile and --keyfile")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on, 0 for a free one "
                        "(default: %(default)s)")
    parser.add_argument("--token-file", type=Path, required=True,
                        help="the clients' token; written (mode 0600) if missing")
    parser.add_argument("--certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--username", help="broker username")
    parser.add_argument("--password-file", type=Path, help="file holding the broker password")
    parser.add_argument("--ca-file", help="CA certificate to verify the broker's TLS certificate")
    parser.add_argument("--run-dir", type=Path, help="a local fleet's run directory: the hub runs its rollouts with "
                        "the fleet's credentials and artifact server")
    parser.add_argument("--rollouts", action="store_true", help="run rollouts for clients (implied by --run-dir)")
    parser.add_argument("--group", help="run as one replica of this group: hubs with the same --group share a "
                        "PostgreSQL --store and the devices' messages (MQTT shared subscription); the group's leader "
                        "runs rollouts")
    parser.add_argument("--replica", help="this replica's name in logs and /healthz (default: host-pid; with --group)")
    parser.add_argument("--nats", metavar="URL", help="with --group on a NATS broker: its NATS client URL "
                        "(nats://127.0.0.1:PORT, `broker.nats_url` in a local fleet's fleet.json); the replicas "
                        "share the outboxes through a NATS queue group, since NATS's MQTT listener has no shared "
                        "subscriptions")
    parser.add_argument("--nats-user", help="NATS username (a secure local fleet's: `secure.hub_nats` in fleet.json)")
    parser.add_argument("--nats-password-file", type=Path, help="file holding the NATS password")
    parser.set_defaults(func=run)

    telemetry = sub.add_parser("telemetry", help="query the fleet's telemetry through its hub")
    verbs = telemetry.add_subparsers(dest="verb", required=True, metavar="VERB")
    query = verbs.add_parser("query", help="print a metric's history as a table or CSV",
                             description="Query the hub of the local fleet in --run-dir (or --hub URL with "
                             "--token-file) and print the answer.")
    query.add_argument("metric", nargs="+", help="metric name(s), e.g. latency_p95_ms")
    query.add_argument("--devices", help="comma-separated device ids (default: all)")
    query.add_argument("--since", default="10m", help="how far back, e.g. 10m, 24h, or epoch seconds "
                       "(default: %(default)s)")
    query.add_argument("--until", help="the end: a duration ago, or epoch seconds (default: now)")
    query.add_argument("--every", help="bucket size, e.g. 5s, 1m (default: raw points)")
    query.add_argument("--agg", default="mean", help="bucket aggregate (default: %(default)s)")
    query.add_argument("--csv", action="store_true", help="CSV instead of a table")
    query.add_argument("--run-dir", help="the local fleet's run directory (default: $WORKBENCH_RUN_DIR)")
    query.add_argument("--hub", help="a hub's URL instead of the local fleet's")
    query.add_argument("--token-file", type=Path, help="the hub's token (with --hub)")
    query.set_defaults(func=query_command)

    rollouts = sub.add_parser("rollouts", help="list the hub's rollouts, or show (and wait for) one",
                              description="List the rollouts the hub of the local fleet in --run-dir (or --hub URL "
                              "with --token-file) ran or runs, newest first; with an id, show that one.")
    rollouts.add_argument("rollout_id", nargs="?", help="one rollout's id: print its waves, devices and report")
    rollouts.add_argument("--wait", type=float, metavar="SECONDS", help="with an id: wait up to SECONDS for it "
                          "to finish; exit 1 unless it succeeded")
    rollouts.add_argument("--json", action="store_true", help="JSON instead of a table")
    rollouts.add_argument("--run-dir", help="the local fleet's run directory (default: $WORKBENCH_RUN_DIR)")
    rollouts.add_argument("--hub", help="a hub's URL instead of the local fleet's")
    rollouts.add_argument("--token-file", type=Path, help="the hub's token (with --hub)")
    rollouts.set_defaults(func=rollouts_command)


def _fleet_connector(args: argparse.Namespace, broker: Any) -> Any:
    """How the hub connects to its fleet to run rollouts (None: it runs none)."""
    if args.run_dir is not None:
        def connect_local(bus: Any) -> Any:
            from workbench.fleet._connect import connect_record
            from workbench.sim._rundir import RunDir

            rd = RunDir.resolve(args.run_dir)
            record = rd.read()
            if record is None:
                raise ConfigError(f"no local fleet in {rd.path}; the hub runs its rollouts once `workbench up` has "
                                  "written fleet.json")
            return connect_record(record, rd, bus=bus)

        return connect_local
    if args.rollouts:
        def connect_broker(bus: Any) -> Any:
            from workbench.fleet._fleet import Fleet

            return Fleet(broker, bus=bus)

        return connect_broker
    return None


def run(args: argparse.Namespace) -> int:
    from workbench.hub._api import serve
    from workbench.hub._service import Hub
    from workbench.protocol._mqtt import BrokerAddress

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    log = logging.getLogger("workbench.hub")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    if bool(args.certfile) != bool(args.keyfile):
        raise ConfigError("HTTPS needs both --certfile and --keyfile")
    # Every request carries the bearer token: off this machine it must not travel in clear text.
    require_tls_beyond_loopback(args.host, tls=bool(args.certfile), what="the hub",
                                fix="pass --certfile and --keyfile to serve HTTPS")
    token = ensure_token(args.token_file)
    password = args.password_file.read_text().strip() if args.password_file else None
    broker = BrokerAddress.parse(args.broker, username=args.username, password=password, ca_file=args.ca_file)
    if args.replica is not None and args.group is None:
        raise ConfigError("--replica names a member of a replica group: give --group too")
    nats_password = args.nats_password_file.read_text().strip() if args.nats_password_file else None
    hub = Hub(broker, args.store, data_dir=args.data_dir, connect=_fleet_connector(args, broker), group=args.group,
              replica=args.replica, nats=args.nats, nats_user=args.nats_user, nats_password=nats_password)

    def listening(url: str) -> None:
        log.info("hub listening on %s, store %s, broker %s%s", url, hub.store_url, broker.url,
                 f", replica {hub.replica} of group {hub.group}" if hub.group else "")
        if hub.rollouts is not None and hub.group is None:  # a replica recovers them when it becomes leader
            interrupted = hub.rollouts.recover()
            if interrupted:
                log.warning("finishing %d rollout(s) a previous hub left running: %s", len(interrupted),
                            ", ".join(interrupted))

    try:
        serve(hub, token, host=args.host, port=args.port, certfile=args.certfile, keyfile=args.keyfile,
              on_listening=listening)
    finally:
        hub.close()
        log.info("hub stopped")
    return 0


def _instant(value: str | None) -> str | float | None:
    """A ``--since``/``--until`` value: epoch seconds as a number, else the duration text as given."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _hub_client(args: argparse.Namespace) -> Any:
    from workbench.hub import HubClient

    if args.hub:
        if args.token_file is None:
            raise ConfigError("--hub needs --token-file, the hub's token")
        return HubClient(args.hub, token_file=args.token_file)
    from workbench.sim._rundir import RunDir

    rd = RunDir.resolve(args.run_dir)
    record = rd.read()
    if record is None:
        raise ConfigError(f"no local fleet in {rd.path}; start one with `workbench up`, or give --hub URL")
    return HubClient.for_record(record)


def rollouts_command(args: argparse.Namespace) -> int:
    from workbench.hub._remote_rollout import HubRollout, rollouts_frame

    with _hub_client(args) as client:
        if args.rollout_id is None:
            if args.wait is not None:
                raise ConfigError("--wait needs a rollout id: workbench rollouts ID --wait 600")
            if args.json:
                print(json.dumps(client.rollouts(), indent=2))
                return 0
            frame = rollouts_frame(client)
            print(frame.to_string(index=False) if not frame.empty else "no rollouts yet")
            return 0
        state = client.rollout(args.rollout_id)
        if args.wait is not None:  # only then follow it: showing one needs a single request
            handle = HubRollout(client, state)
            try:
                handle.wait(timeout=args.wait)
            finally:
                handle.close()
            state = client.rollout(args.rollout_id)
    if args.json:
        print(json.dumps(state, indent=2, default=str))
    else:
        print(_describe_rollout(state))
    return 0 if args.wait is None or state.get("status") == "succeeded" else 1


def _describe_rollout(state: dict[str, Any]) -> str:
    package = state.get("package") or {}
    reason = f" ({state['reason']})" if state.get("reason") else ""
    lines = [f"rollout {state.get('rollout_id')}: {package.get('name')} {package.get('version')}, "
             f"{state.get('strategy')}, {state.get('status')}{reason}"]
    for number, wave in enumerate(state.get("waves") or []):
        lines.append(f"  wave {number}: {', '.join(wave.get('devices') or [])}")
    for row in state.get("rows") or []:
        lines.append(f"  {row.get('device_id')}: {row.get('state')}")
    return "\n".join(lines)


def query_command(args: argparse.Namespace) -> int:
    with _hub_client(args) as client:
        devices = [d for d in args.devices.split(",") if d] if args.devices else "all"
        frame = client.query(args.metric, devices=devices, since=_instant(args.since), until=_instant(args.until),
                             every=args.every, agg=args.agg)
    if args.csv:
        frame.to_csv(sys.stdout, index=False)
    elif frame.empty:
        print(f"no points of {', '.join(args.metric)} since {args.since} ({time.strftime('%H:%M:%S')})")
    else:
        print(frame.to_string(index=False))
    return 0
