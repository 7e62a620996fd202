"""`workbench agent`: run the edge agent for one device (or several simulated ones)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from workbench._settings import settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("agent", help="run the edge agent on this device",
                            description="Run the edge agent: connect to the broker, announce this device, "
                            "answer commands. Repeat --device-id (with --profile) to host several "
                            "simulated devices in one process.")
    parser.add_argument("--device-id", action="append", required=True, dest="device_ids",
                        help="this device's id (repeatable for simulated devices)")
    parser.add_argument("--broker", default=settings().broker or "mqtt://127.0.0.1:1883",
                        help="broker URL, mqtt://[user:pass@]host:port or mqtts://... (default: %(default)s)")
    parser.add_argument("--profile", action="append", dest="profiles", default=[],
                        help="hardware profile name (one, or one per --device-id)")
    parser.add_argument("--data-dir", type=Path, default=settings().data_dir or Path("./wb-data"),
                        help="where the agent keeps models and state (per device: DATA_DIR/DEVICE_ID)")
    parser.add_argument("--simulated", action="store_true",
                        help="a simulated device: honour the profile's core and memory limits on this host")
    parser.add_argument("--keepalive", type=int, default=10, help="MQTT keepalive in seconds (default: 10)")
    parser.add_argument("--username", help="broker username (default: the device id when a password is given)")
    parser.add_argument("--password-file", type=Path, help="file holding the broker password")
    parser.add_argument("--credentials-dir", type=Path,
                        help="directory with DEVICE_ID.password files (several devices in one process)")
    parser.add_argument("--ca-file", help="CA certificate to verify the broker's TLS certificate")
    parser.add_argument("--model", type=Path, help="an ONNX model to serve from the start")
    parser.add_argument("--trusted-keys", type=Path, help="directory of the public keys whose signed packages this "
                        "device installs (default: $WORKBENCH_TRUSTED_KEYS or DATA_DIR/trusted_keys)")
    parser.add_argument("--health-port", type=int, help="serve GET /healthz on this port (0: a free one)")
    parser.add_argument("--health-host", default="0.0.0.0", help="address of the health endpoint (default: all)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench.agent import AgentConfig, run_agents
    from workbench.errors import ConfigError
    from workbench.fleet._mqtt import BrokerAddress

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ids: list[str] = args.device_ids
    profiles: list[str] = args.profiles
    if profiles and len(profiles) not in (1, len(ids)):
        raise ConfigError(f"give one --profile, or one per --device-id ({len(ids)}), not {len(profiles)}")
    if len(set(ids)) != len(ids):
        raise ConfigError("the same --device-id was given twice")
    trusted_keys = None
    if args.trusted_keys is not None:
        trusted_keys = args.trusted_keys.expanduser().resolve()
        if not trusted_keys.is_dir():
            raise ConfigError(f"--trusted-keys {trusted_keys} is not a directory; give the directory holding the "
                              "workbench's public key(s) (`workbench keys init` writes one)")
    configs = []
    for index, device_id in enumerate(ids):
        profile = profiles[index if len(profiles) > 1 else 0] if profiles else None
        username, password = args.username, None
        if args.password_file is not None:
            password = args.password_file.read_text().strip()
        elif args.credentials_dir is not None:
            password = (args.credentials_dir / f"{device_id}.password").read_text().strip()
        if password is not None and (username is None or len(ids) > 1):
            username = device_id
        address = BrokerAddress.parse(args.broker, username=username, password=password, ca_file=args.ca_file)
        data_dir = args.data_dir / device_id if len(ids) > 1 or args.simulated else args.data_dir
        configs.append(AgentConfig(device_id, address, data_dir, profile=profile, simulated=args.simulated,
                                   keepalive=args.keepalive, model=args.model, trusted_keys=trusted_keys))
    if args.health_port is not None:
        from workbench.agent._health import serve_health

        serve_health(args.health_port, args.health_host)
    return run_agents(configs)
