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
    parser.add_argument("--device-id", action="append", dest="device_ids",
                        help="this device's id (repeatable for simulated devices); required to run the agent")
    parser.add_argument("--broker", default=settings().broker or "mqtt://127.0.0.1:1883",
                        help="broker URL, mqtt://[user:pass@]host:port or mqtts://..., or a cluster's nodes "
                        "mqtts://host1:port1,host2:port2,...: the Nth --device-id tries the Nth node first and "
                        "fails over to the next (default: %(default)s)")
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
    parser.add_argument("--health-port", type=int, default=settings().health_port,
                        help="serve GET /healthz on this port (0: a free one; default: $WORKBENCH_HEALTH_PORT, "
                        "which the agent's image sets to 8081)")
    parser.add_argument("--health-host", default="127.0.0.1",
                        help="address of the health endpoint (default: %(default)s; a container whose probe comes "
                        "from outside, as Kubernetes', needs 0.0.0.0)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="agent_action", metavar="ACTION",
                                    description="without an ACTION, the agent runs in the foreground")
    _register_install(actions)


def _register_install(actions: argparse._SubParsersAction) -> None:
    from workbench.agent._systemd import TRUSTED_KEYS, WATCHDOG_SEC

    install = actions.add_parser("install", help="install the agent as a systemd service on this device",
                                 description="Write the systemd unit, its environment file and the agent's "
                                 "system user (sysusers.d), hardened and self-restarting. Run as root, then "
                                 "enable it with the commands it prints.")
    install.add_argument("--device-id", required=True, dest="service_device_id", help="this device's id")
    install.add_argument("--broker", required=True, dest="service_broker",
                         help="broker URL, mqtt://host:port or mqtts://host:port (no password in it)")
    install.add_argument("--profile", dest="service_profile", help="hardware profile name (default: detected)")
    install.add_argument("--ca-file", dest="service_ca_file", help="CA certificate of the broker's TLS certificate")
    install.add_argument("--password-file", dest="service_password_file",
                         help="file holding the broker password (readable by the agent's user only)")
    install.add_argument("--username", dest="service_username", help="broker username (default: the device id)")
    install.add_argument("--trusted-keys", dest="service_trusted_keys", default=TRUSTED_KEYS,
                         help="directory of the workbench public keys (default: %(default)s)")
    install.add_argument("--health-port", type=int, dest="service_health_port", help="serve GET /healthz here")
    install.add_argument("--user", default="workbench", help="system user the agent runs as (default: %(default)s)")
    install.add_argument("--python", help="the Python that has edge-workbench installed (default: this one)")
    install.add_argument("--watchdog-sec", type=int, default=WATCHDOG_SEC,
                         help="systemd restarts the agent when it stops pinging for this long (default: %(default)s)")
    install.add_argument("--upgrade-spec", help="pip requirement to upgrade to before each start, e.g. "
                         "'edge-workbench==0.2.0' (ExecStartPre; a failed upgrade keeps the installed agent)")
    install.add_argument("--root", type=Path, default=Path("/"),
                         help="write under this directory instead of / (to inspect, or to build an image)")
    install.add_argument("--force", action="store_true", help="replace files that install did not write")
    install.set_defaults(func=run_install)
    uninstall = actions.add_parser("uninstall", help="remove what `workbench agent install` wrote",
                                   description="Remove exactly the files the install manifest lists, and the "
                                   "directories install created if they are empty. The data dir stays.")
    uninstall.add_argument("--root", type=Path, default=Path("/"), help="the --root given to install")
    uninstall.add_argument("--force", action="store_true", help="remove files even if edited since install")
    uninstall.set_defaults(func=run_uninstall)


def run_install(args: argparse.Namespace) -> int:
    import sys

    from workbench.agent._systemd import ServiceSpec, install, next_steps

    spec = ServiceSpec(args.service_device_id, args.service_broker, profile=args.service_profile,
                       ca_file=args.service_ca_file, password_file=args.service_password_file,
                       username=args.service_username, trusted_keys=args.service_trusted_keys,
                       health_port=args.service_health_port, user=args.user, python=args.python or sys.executable,
                       upgrade_spec=args.upgrade_spec, watchdog_sec=args.watchdog_sec)
    manifest = install(spec, args.root, force=args.force)
    for entry in manifest["files"]:
        print(f"wrote {args.root / entry['path'].lstrip('/')}")
    print(next_steps(args.root))
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    from workbench.agent._systemd import UNIT_NAME, uninstall

    if args.root == Path("/"):
        print(f"stop it first: sudo systemctl disable --now {UNIT_NAME}")
    for path in uninstall(args.root, force=args.force):
        print(f"removed {args.root / path.lstrip('/')}")
    return 0


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from workbench.agent import AgentConfig, run_agents
    from workbench.agent._startup import (
        CA_FILE,
        EXIT_NO_PERMISSION,
        PASSWORD_FILE,
        DataDirError,
        check_data_dir,
        wait_for_files,
    )
    from workbench.agent._watchdog import Watchdog
    from workbench.errors import ConfigError
    from workbench.protocol._mqtt import BrokerAddress

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.device_ids:
        raise ConfigError("give --device-id (this device's id) to run the agent")
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
    data_dirs = [args.data_dir / device_id if len(ids) > 1 or args.simulated else args.data_dir for device_id in ids]
    for data_dir in data_dirs:
        try:
            check_data_dir(data_dir)
        except DataDirError as exc:
            logging.getLogger("workbench.agent").error("%s", exc)
            print(f"workbench agent: error: {exc}", file=sys.stderr)
            return EXIT_NO_PERMISSION
    # Files that appear later (a certificate copied after the service started) are waited for.
    needed = [(CA_FILE, Path(args.ca_file))] if args.ca_file else []
    if args.password_file is not None:
        needed.append((PASSWORD_FILE, args.password_file))
    elif args.credentials_dir is not None:
        needed += [(PASSWORD_FILE, args.credentials_dir / f"{d}.password") for d in ids]
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stopped.set())
    try:
        # Under systemd, waiting is a state, not a failed start: READY now, STATUS says what it waits
        # for, and the watchdog is fed, so neither TimeoutStartSec= nor WatchdogSec= kills the wait.
        watchdog = Watchdog(lambda: [])
        if needed and not wait_for_files(needed, stopped, on_problem=lambda text: watchdog.ready(text),
                                         tick=watchdog.tick, tick_every=watchdog.poll_seconds):
            return 0  # told to stop while waiting: a clean stop, not a failure
    finally:
        signal.signal(signal.SIGTERM, previous)
    detected = None
    if not profiles and not args.simulated:
        # A real device without --profile names itself from its board (device tree or DMI).
        from workbench.profiles import detect_hardware

        hardware = detect_hardware(data_dirs[0])
        detected = hardware["detected_profile"]
        logging.getLogger("workbench.agent").info("detected %s (%s): profile %s", hardware["board"] or "an unknown "
                                                  "board", hardware["cpu_model"], detected)
    configs = []
    for index, device_id in enumerate(ids):
        profile = profiles[index if len(profiles) > 1 else 0] if profiles else detected
        username, password = args.username, None
        if args.password_file is not None:
            password = args.password_file.read_text().strip()
        elif args.credentials_dir is not None:
            password = (args.credentials_dir / f"{device_id}.password").read_text().strip()
        if password is not None and (username is None or len(ids) > 1):
            username = device_id
        # A cluster's nodes: this process's devices take turns at which node they try first.
        address = BrokerAddress.parse(args.broker, username=username, password=password,
                                      ca_file=args.ca_file).preferring(index)
        data_dir = data_dirs[index]
        configs.append(AgentConfig(device_id, address, data_dir, profile=profile, simulated=args.simulated,
                                   keepalive=args.keepalive, model=args.model, trusted_keys=trusted_keys))
    if args.health_port is not None:
        from workbench.agent._health import serve_health

        serve_health(args.health_port, args.health_host)
    return run_agents(configs)
