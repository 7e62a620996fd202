"""`workbench agent install`: the agent as a hardened, self-restarting systemd service.

``install`` writes three files under a root (``/`` on a device, a temporary directory in a
test) and a manifest of them; ``uninstall`` removes exactly the files the manifest lists,
if they are still what install wrote, and the directories it created, if empty. The data
directory is systemd's ``StateDirectory=``, created and chowned by systemd at start and
never removed by uninstall: it holds the verified models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.protocol import topics
from workbench.protocol._mqtt import BrokerAddress

UNIT_NAME = "workbench-agent.service"
UNIT_PATH = "etc/systemd/system/" + UNIT_NAME
ENV_PATH = "etc/workbench/agent.env"
SYSUSERS_PATH = "etc/sysusers.d/workbench-agent.conf"
MANIFEST_PATH = "etc/workbench/install-manifest.json"
DATA_DIR = "/var/lib/workbench"
TRUSTED_KEYS = "/etc/workbench/trusted_keys"

# systemd restarts a failed agent every RESTART_SEC seconds; at that pace it never reaches
# START_LIMIT_BURST starts within START_LIMIT_INTERVAL_SEC, so it keeps trying (a broker down
# for an hour must not leave the device dead) without ever looping faster than that.
RESTART_SEC = 30
START_LIMIT_INTERVAL_SEC = 300
START_LIMIT_BURST = 12
WATCHDOG_SEC = 60

# Exit codes a restart cannot fix: another agent holds the id or the broker refused the
# credentials (3), or the data dir is not writable (77).
_NO_RESTART = (3, 77)

# Not set, on purpose: ProtectClock= and PrivateDevices= close /dev to an allow list, and a
# Jetson's CUDA and TensorRT providers need its GPU device nodes (/dev/nvhost-*, /dev/nvmap).

# Characters that would change the meaning of a word in ExecStart= or in the environment file.
_UNSAFE = re.compile(r"[\s\"'\\$%;`]")


@dataclass
class ServiceSpec:
    """What the service runs: one device's agent with its broker and files.

    Example:
        >>> spec = ServiceSpec("pi-kitchen", "mqtts://gateway.local:8883", ca_file="/etc/workbench/ca.pem")
        >>> "--device-id pi-kitchen" in spec.agent_args()
        True
    """

    device_id: str
    broker: str
    profile: str | None = None
    ca_file: str | None = None
    password_file: str | None = None
    username: str | None = None
    trusted_keys: str = TRUSTED_KEYS
    health_port: int | None = None
    user: str = "workbench"
    python: str = field(default_factory=lambda: sys.executable)
    upgrade_spec: str | None = None
    watchdog_sec: int = WATCHDOG_SEC

    def __post_init__(self) -> None:
        topics.check_device_id(self.device_id)
        address = BrokerAddress.parse(self.broker)  # raises ConfigError naming a bad URL
        if address.password:
            raise ConfigError("the broker URL holds a password, which would land in a world-readable unit; "
                              "put it in a file readable only by the agent's user and pass --password-file")
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", self.user):
            raise ConfigError(f"--user {self.user!r} is not a valid system user name (lower case, up to 32)")
        if self.watchdog_sec < 5:
            raise ConfigError("--watchdog-sec must be at least 5 seconds: the agent pings every half of it")
        for name, value in (("--broker", self.broker), ("--ca-file", self.ca_file),
                            ("--password-file", self.password_file), ("--username", self.username),
                            ("--trusted-keys", self.trusted_keys), ("--python", self.python),
                            ("--upgrade-spec", self.upgrade_spec)):
            if value is not None and (not value or _UNSAFE.search(value)):
                raise ConfigError(f"{name} {value!r} is empty or holds a space, quote, $, % or ;, which systemd "
                                  "would split or expand; use a path or value without them")
        for name, value in (("--ca-file", self.ca_file), ("--password-file", self.password_file),
                            ("--trusted-keys", self.trusted_keys), ("--python", self.python)):
            if value is not None and not value.startswith("/"):
                raise ConfigError(f"{name} {value!r} must be an absolute path: the service does not run in "
                                  "this directory")
        if self.python.startswith(("/home/", "/root/", "/run/user/")):
            raise ConfigError(f"the agent's Python {self.python} is under a home directory, which the unit's "
                              "ProtectHome=yes hides; install the agent in /opt (python3 -m venv /opt/workbench) "
                              "or pass --python")

    def agent_args(self) -> str:
        args = ["--device-id", self.device_id, "--broker", self.broker, "--data-dir", DATA_DIR,
                "--trusted-keys", self.trusted_keys]
        if self.profile:
            args += ["--profile", self.profile]
        if self.ca_file:
            args += ["--ca-file", self.ca_file]
        if self.password_file:
            args += ["--password-file", self.password_file]
        if self.username:
            args += ["--username", self.username]
        if self.health_port is not None:
            args += ["--health-port", str(self.health_port)]
        return " ".join(args)


def render_unit(spec: ServiceSpec) -> str:
    """The systemd unit text.

    Example:
        >>> "Type=notify" in render_unit(ServiceSpec("pi-1", "mqtt://gw:1883", python="/opt/workbench/bin/python"))
        True
    """
    pre = ""
    if spec.upgrade_spec:
        # "+" runs it outside the sandbox (the venv is read-only under ProtectSystem=strict);
        # "-" keeps a failed upgrade (no network) from stopping the agent that is installed.
        pip = str(Path(spec.python).with_name("pip"))
        pre = f"ExecStartPre=-+{pip} install --quiet --upgrade {spec.upgrade_spec}\n"
    return f"""# Written by `workbench agent install`; `workbench agent uninstall` removes it.
[Unit]
Description=Edge Workbench agent (device {spec.device_id})
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}
StartLimitBurst={START_LIMIT_BURST}

[Service]
Type=notify
NotifyAccess=main
EnvironmentFile={"/" + ENV_PATH}
{pre}ExecStart={spec.python} -m workbench.cli agent $WORKBENCH_AGENT_ARGS
Restart=on-failure
RestartSec={RESTART_SEC}
RestartPreventExitStatus={" ".join(str(code) for code in _NO_RESTART)}
TimeoutStartSec={300 if spec.upgrade_spec else 90}
TimeoutStopSec=30
WatchdogSec={spec.watchdog_sec}
User={spec.user}
Group={spec.user}
StateDirectory=workbench
StateDirectoryMode=0750
WorkingDirectory={DATA_DIR}
ReadWritePaths={DATA_DIR}
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
UMask=0027

[Install]
WantedBy=multi-user.target
"""


def render_env(spec: ServiceSpec) -> str:
    """The environment file: the agent's arguments, the one place an operator edits.

    Example:
        >>> render_env(ServiceSpec("pi-1", "mqtt://gw:1883", python="/usr/bin/python3")).splitlines()[-1][:50]
        'WORKBENCH_AGENT_ARGS="--device-id pi-1 --broker mq'
    """
    return ("# Written by `workbench agent install`. Edit, then `systemctl restart workbench-agent`.\n"
            "PYTHONUNBUFFERED=1\n"
            f'WORKBENCH_AGENT_ARGS="{spec.agent_args()}"\n')


def render_sysusers(spec: ServiceSpec) -> str:
    """The sysusers.d line that makes the agent's system user (``systemd-sysusers`` applies it)."""
    return f'u {spec.user} - "Edge Workbench agent" {DATA_DIR} /usr/sbin/nologin\n'


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install(spec: ServiceSpec, root: str | os.PathLike[str] = "/", *, force: bool = False) -> dict[str, Any]:
    """Write the unit, its environment file and the sysusers.d entry under ``root``; return the manifest.

    Refuses (:class:`ConfigError`) to overwrite a file it did not write, unless ``force``.

    Example:
        >>> manifest = install(ServiceSpec("pi-1", "mqtt://gw:1883"), root="/tmp/wb-root")   # doctest: +SKIP
        >>> manifest["files"][0]["path"]                                                    # doctest: +SKIP
        '/etc/systemd/system/workbench-agent.service'
    """
    base = Path(root)
    manifest_file = base / MANIFEST_PATH
    previous = _read_manifest(manifest_file) if manifest_file.exists() else None
    ours = {entry["path"] for entry in previous["files"]} if previous else set()
    files = [(UNIT_PATH, render_unit(spec), 0o644), (ENV_PATH, render_env(spec), 0o640),
             (SYSUSERS_PATH, render_sysusers(spec), 0o644)]
    for relative, _, _ in files:
        target = base / relative
        if target.exists() and "/" + relative not in ours and not force:
            raise ConfigError(f"{target} exists and was not written by `workbench agent install`; move it away "
                              "or pass --force to replace it")
    created_dirs: list[str] = list(previous["dirs"]) if previous else []

    def make_dirs(directory: Path) -> None:
        for parent in [*reversed(directory.parents), directory]:
            if parent.is_relative_to(base) and parent != base and not parent.exists():
                parent.mkdir(mode=0o755)
                created_dirs.append("/" + str(parent.relative_to(base)))

    # The public keys of the workbench go here (root-owned, read-only to the agent).
    make_dirs(base / spec.trusted_keys.lstrip("/"))
    make_dirs(manifest_file.parent)
    written = []
    for relative, text, mode in files:
        make_dirs((base / relative).parent)
        data = text.encode()
        target = base / relative
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        os.replace(tmp, target)  # a reader sees the old or the new unit, never half of one
        written.append({"path": "/" + relative, "sha256": _sha256(data), "mode": oct(mode)})
    manifest = {"unit": UNIT_NAME, "device_id": spec.device_id, "files": written, "dirs": created_dirs}
    tmp = manifest_file.with_name(f".{manifest_file.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_file)
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        files, dirs = data["files"], data["dirs"]
        if not all(isinstance(f.get("path"), str) and f["path"].startswith("/") for f in files):
            raise ValueError("file entries need absolute paths")
        if not all(isinstance(d, str) and d.startswith("/") for d in dirs):
            raise ValueError("dir entries need absolute paths")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the install manifest {path} is unreadable ({exc}); remove the unit by hand") from None
    return {"files": files, "dirs": dirs, **{k: v for k, v in data.items() if k not in ("files", "dirs")}}


def uninstall(root: str | os.PathLike[str] = "/", *, force: bool = False) -> list[str]:
    """Remove what :func:`install` wrote under ``root`` (and the manifest); return the removed paths.

    A file changed since install is kept (:class:`ConfigError` names it) unless ``force``;
    directories install created are removed only when empty. The data dir is never touched.

    Example:
        >>> uninstall("/tmp/wb-root")   # doctest: +SKIP
        ['/etc/systemd/system/workbench-agent.service', ...]
    """
    base = Path(root)
    manifest_file = base / MANIFEST_PATH
    if not manifest_file.exists():
        raise ConfigError(f"nothing to uninstall: {manifest_file} does not exist (was the agent installed with "
                          "`workbench agent install` under this --root?)")
    manifest = _read_manifest(manifest_file)
    changed = []
    for entry in manifest["files"]:
        target = base / entry["path"].lstrip("/")
        if target.exists() and _sha256(target.read_bytes()) != entry.get("sha256") and not force:
            changed.append(str(target))
    if changed:
        raise ConfigError(f"{', '.join(changed)} changed since install; keep your edits elsewhere and pass --force "
                          "to remove them anyway")
    removed = []
    for entry in manifest["files"]:
        target = base / entry["path"].lstrip("/")
        if target.exists() or target.is_symlink():
            target.unlink()
            removed.append(entry["path"])
    manifest_file.unlink()
    removed.append("/" + MANIFEST_PATH)
    for directory in sorted(manifest["dirs"], key=lambda d: d.count("/"), reverse=True):
        path = base / directory.lstrip("/")
        try:
            path.rmdir()
            removed.append(directory)
        except OSError:
            pass  # not empty (someone else's files live there now) or already gone
    return removed


def next_steps(root: str | os.PathLike[str]) -> str:
    """What to run after install, as shell lines."""
    prefix = "" if Path(root) == Path("/") else f"# files written under {shlex.quote(str(root))}\n"
    return (prefix + "sudo systemd-sysusers            # creates the 'workbench' system user\n"
            "sudo systemctl daemon-reload\n"
            f"sudo systemctl enable --now {UNIT_NAME}\n"
            f"journalctl -u {UNIT_NAME} -f     # watch it connect")
