"""`workbench agent install/uninstall`: the systemd unit it writes, checked by systemd's own tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from workbench.agent._systemd import ENV_PATH, MANIFEST_PATH, UNIT_PATH, ServiceSpec, install, uninstall
from workbench.errors import ConfigError

PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing, but CI must check the unit (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _spec(**kwargs: object) -> ServiceSpec:
    fields: dict[str, object] = {"ca_file": "/etc/workbench/ca.pem", "password_file": "/etc/workbench/broker.password",
                                 "python": PYTHON, **kwargs}
    return ServiceSpec("pi-kitchen", "mqtts://gateway.local:8883", **fields)  # type: ignore[arg-type]


def test_unit_is_hardened_notify_service_with_watchdog_when_installed(tmp_path: Path) -> None:
    install(_spec(profile="raspberry-pi-5", health_port=8081), tmp_path)
    unit = _directives((tmp_path / UNIT_PATH).read_text())
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert int(unit["WatchdogSec"][0]) >= 5
    assert unit["User"] == ["workbench"] and unit["StateDirectory"] == ["workbench"]
    assert unit["ProtectSystem"] == ["strict"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["ReadWritePaths"] == ["/var/lib/workbench"]  # the data dir, nothing else
    assert unit["EnvironmentFile"] == ["/" + ENV_PATH]
    assert unit["ExecStart"] == [f"{PYTHON} -m workbench.cli agent $WORKBENCH_AGENT_ARGS"]
    assert set(unit["RestartPreventExitStatus"][0].split()) == {"3", "77"}
    env = (tmp_path / ENV_PATH).read_text()
    args = re.search(r'^WORKBENCH_AGENT_ARGS="(.*)"$', env, re.MULTILINE)
    assert args is not None
    assert args.group(1).split() == [
        "--device-id", "pi-kitchen", "--broker", "mqtts://gateway.local:8883", "--data-dir", "/var/lib/workbench",
        "--trusted-keys", "/etc/workbench/trusted_keys", "--profile", "raspberry-pi-5",
        "--ca-file", "/etc/workbench/ca.pem", "--password-file", "/etc/workbench/broker.password",
        "--health-port", "8081"]
    assert oct((tmp_path / ENV_PATH).stat().st_mode & 0o777) == "0o640"
    assert (tmp_path / "etc/sysusers.d/workbench-agent.conf").read_text().startswith("u workbench - ")


def test_restart_pace_never_reaches_the_start_limit_when_agent_keeps_failing(tmp_path: Path) -> None:
    install(_spec(), tmp_path)
    unit = _directives((tmp_path / UNIT_PATH).read_text())
    restart, interval, burst = (int(unit[k][0]) for k in ("RestartSec", "StartLimitIntervalSec", "StartLimitBurst"))
    # The most starts that fit in one StartLimitIntervalSec window at RestartSec spacing stays under the burst.
    assert interval // restart + 1 < burst
    assert restart >= 5  # and it never loops fast


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    install(_spec(upgrade_spec="edge-workbench==0.2.0"), tmp_path)
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT_PATH)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


def test_systemd_analyze_verify_rejects_the_unit_when_python_does_not_exist(tmp_path: Path) -> None:
    # The check above can fail: a unit naming a missing interpreter is refused.
    analyze = _systemd_analyze()
    install(_spec(python="/opt/no-such-venv/bin/python"), tmp_path)
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT_PATH)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "/opt/no-such-venv/bin/python" in result.stderr


def test_systemd_analyze_security_rates_the_unit_ok_or_better(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    install(_spec(), tmp_path)
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(tmp_path / UNIT_PATH)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for workbench-agent.service: ([\d.]+) (\w+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {result.stderr.strip()[:200]}")
    assert float(match.group(1)) <= 4.0, result.stdout  # systemd calls < 5 "OK", < 2 "SAFE"


def test_systemd_sysusers_creates_the_agents_system_user_from_the_installed_entry(tmp_path: Path) -> None:
    _systemd_analyze()
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed (apt-get install systemd)")
    install(_spec(), tmp_path)
    result = subprocess.run([sysusers, f"--root={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    user = next(line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
                if line.startswith("workbench:"))
    assert int(user[2]) < 1000  # a system user
    assert user[5:] == ["/var/lib/workbench", "/usr/sbin/nologin"]


def test_uninstall_removes_exactly_what_install_wrote_when_other_files_share_its_dirs(tmp_path: Path) -> None:
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/ssh.service").write_text("[Service]\nExecStart=/usr/sbin/sshd\n")
    before = _tree(tmp_path)
    install(_spec(), tmp_path)
    assert (tmp_path / UNIT_PATH).is_file() and (tmp_path / MANIFEST_PATH).is_file()
    (tmp_path / "var/lib/workbench").mkdir(parents=True)  # what systemd's StateDirectory= makes at start
    (tmp_path / "var/lib/workbench/state.json").write_text("{}")
    removed = uninstall(tmp_path)
    assert "/" + UNIT_PATH in removed and "/etc/workbench" in removed
    after = _tree(tmp_path)
    assert after.pop("var/lib/workbench/state.json") == b"{}"  # the data (models, state) stays
    assert {k: v for k, v in after.items() if not k.startswith("var")} == before


def test_uninstall_keeps_a_file_edited_since_install_unless_forced(tmp_path: Path) -> None:
    install(_spec(), tmp_path)
    env = tmp_path / ENV_PATH
    env.write_text(env.read_text() + "EXTRA=1\n")
    with pytest.raises(ConfigError, match=r"agent\.env changed since install"):
        uninstall(tmp_path)
    assert env.exists() and (tmp_path / UNIT_PATH).exists()  # nothing half-removed
    uninstall(tmp_path, force=True)
    assert not env.exists() and not (tmp_path / "etc").exists()


def test_install_refuses_to_overwrite_a_unit_it_did_not_write(tmp_path: Path) -> None:
    unit = tmp_path / UNIT_PATH
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    with pytest.raises(ConfigError, match="was not written by `workbench agent install`"):
        install(_spec(), tmp_path)
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"
    install(_spec(), tmp_path, force=True)
    install(_spec(), tmp_path)  # a repeated install replaces its own files without --force
    assert "Type=notify" in unit.read_text()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"broker": "mqtt://dev:s3cret@gw:1883"}, "holds a password"),
    ({"python": "/home/pi/venv/bin/python"}, "ProtectHome"),
    ({"ca_file": "/etc/work bench/ca.pem"}, "systemd would split"),
    ({"ca_file": "certs/ca.pem"}, "absolute path"),
    ({"user": "Root User"}, "not a valid system user"),
    ({"device_id": "pi/kitchen"}, "pi/kitchen"),
])
def test_install_rejects_bad_input_naming_it(kwargs: dict[str, str], message: str) -> None:
    fields = {"device_id": "pi-1", "broker": "mqtt://gw:1883", "python": PYTHON, **kwargs}
    with pytest.raises(ConfigError, match=message):
        ServiceSpec(**fields)  # type: ignore[arg-type]


def test_cli_install_then_uninstall_leaves_root_as_it_was(tmp_path: Path) -> None:
    result = run_cli("agent", "install", "--device-id", "pi-1", "--broker", "mqtt://gw.local:1883",
                     "--python", PYTHON, "--root", str(tmp_path), check=True)
    assert f"wrote {tmp_path / UNIT_PATH}" in result.stdout and "systemctl enable --now" in result.stdout
    result = run_cli("agent", "uninstall", "--root", str(tmp_path), check=True)
    assert f"removed {tmp_path / UNIT_PATH}" in result.stdout
    assert list(tmp_path.iterdir()) == []
    again = run_cli("agent", "uninstall", "--root", str(tmp_path))
    assert again.returncode == 1 and "nothing to uninstall" in again.stderr
