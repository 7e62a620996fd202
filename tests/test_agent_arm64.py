"""Proof that the agent installs on a Raspberry Pi or a Jetson without a compiler: pip resolves its dependencies
to wheels for arm64 (and amd64, the image's other architecture) straight from the package index.

pip's ``--platform`` takes exact tags, so a target glibc is spelled as every manylinux tag it
accepts (a glibc 2.28 system installs manylinux_2_17 ... manylinux_2_28 wheels), as pip does
on the device itself. Nothing is downloaded: ``--dry-run --report`` resolves from metadata.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

pytestmark = pytest.mark.network
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

AGENT_PACKAGES = {"numpy", "onnxruntime", "paho-mqtt", "psutil", "zstandard", "cryptography"}


def _index_reachable() -> None:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"the package index (pypi.org:443) cannot be reached from here ({exc}); these tests resolve "
                    "the agent's dependencies for arm64 against it")


def _requirements() -> list[str]:
    return list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])


def _platforms(arch: str, glibc_minor: int) -> list[str]:
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(17, glibc_minor + 1)]
    return ["manylinux2014_" + arch, *tags]


def _resolve(requirements: list[str], arch: str, glibc_minor: int, tmp_path: Path, *,
             no_deps: bool = False) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    report = tmp_path / f"report-{arch}-{glibc_minor}-{len(list(tmp_path.iterdir()))}.json"
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--target", str(tmp_path / "target"), "--python-version", "3.11",
               "--implementation", "cp", "--only-binary=:all:", "--report", str(report),
               *(arg for platform in _platforms(arch, glibc_minor) for arg in ("--platform", platform))]
    if no_deps:
        command.append("--no-deps")
    result = subprocess.run([*command, *requirements], capture_output=True, text=True, timeout=300)
    installs = json.loads(report.read_text())["install"] if report.exists() else []
    return result, installs


def _names(installs: list[dict[str, Any]]) -> dict[str, str]:
    return {item["metadata"]["name"].lower(): item["download_info"]["url"].rsplit("/", 1)[-1] for item in installs}


def test_agent_requirements_are_the_six_packages_the_agent_needs() -> None:
    names = {re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower() for req in _requirements()}
    assert names == AGENT_PACKAGES


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_agent_dependencies_resolve_to_wheels_for_manylinux_2_28(arch: str, tmp_path: Path) -> None:
    # glibc 2.28+: Raspberry Pi OS Bookworm (2.36), Jetson JetPack 5/6 (2.31/2.35), the image's Debian base (2.36).
    _index_reachable()
    result, installs = _resolve(_requirements(), arch, 28, tmp_path)
    assert result.returncode == 0, result.stderr
    wheels = _names(installs)
    assert set(wheels) >= AGENT_PACKAGES, wheels
    for name, wheel in wheels.items():
        assert wheel.endswith(".whl"), f"{name} would build from source: {wheel}"
        assert wheel.endswith("-any.whl") or arch in wheel, f"{name}: {wheel} is not for {arch}"


def test_every_dependency_but_onnxruntime_resolves_for_manylinux2014_aarch64(tmp_path: Path) -> None:
    # glibc 2.17 (manylinux2014): the oldest arm64 systems. onnxruntime's arm64 wheels from 1.17 on
    # need glibc 2.28, which is why the README asks for Bookworm / JetPack 5 or newer.
    _index_reachable()
    others = [req for req in _requirements() if not req.startswith("onnxruntime")]
    result, installs = _resolve(others, "aarch64", 17, tmp_path)
    assert result.returncode == 0, result.stderr
    wheels = _names(installs)
    assert set(wheels) >= AGENT_PACKAGES - {"onnxruntime"}
    assert all(w.endswith(".whl") and ("aarch64" in w or w.endswith("-any.whl")) for w in wheels.values()), wheels
    onnxruntime = next(req for req in _requirements() if req.startswith("onnxruntime"))
    result, installs = _resolve([onnxruntime], "aarch64", 17, tmp_path, no_deps=True)
    assert result.returncode != 0 and "onnxruntime" in result.stderr, (
        "onnxruntime now has manylinux2014 arm64 wheels: update the README's glibc note and this test")


def test_image_wheel_builds_from_its_context_and_resolves_for_amd64_and_arm64(tmp_path: Path) -> None:
    # What the Containerfile does: `pip wheel .` on the context .containerignore lets through, then
    # `pip install --only-binary=:all:` of that wheel on python:3.11-slim-bookworm (glibc 2.36).
    _index_reachable()
    context = tmp_path / "context"
    context.mkdir()
    patterns = [line for line in (REPO / ".containerignore").read_text().splitlines()
                if line.startswith("!")]
    for pattern in patterns:
        source = REPO / pattern[1:].rstrip("/")
        if source.is_dir():
            shutil.copytree(source, context / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, context / source.name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--isolated", "--quiet", "--no-deps",
                            "--disable-pip-version-check", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "wheels").glob("edge_workbench-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "workbench/agent/_device.py" in names and not any(n.startswith("widgets/") for n in names)
    base = {re.split(r"[<>=!~\[ ;]", line.split(":", 1)[1].strip(), maxsplit=1)[0].lower()
            for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert base == AGENT_PACKAGES  # the image gets the agent's dependencies, no notebook extras
    for arch in ("aarch64", "x86_64"):
        (tmp_path / arch).mkdir()
        result, installs = _resolve([str(wheel)], arch, 28, tmp_path / arch)
        assert result.returncode == 0, f"{arch}: {result.stderr}"
        wheels = _names(installs)
        assert set(wheels) >= AGENT_PACKAGES | {"edge-workbench"}, wheels
        assert all(w.endswith(".whl") for w in wheels.values()), wheels
