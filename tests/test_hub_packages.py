"""Packages travel to the hub over its API: a hub on another machine deploys what a client uploads, nothing else."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import FleetFactory
from test_hub import _packages, _versions, api, local_hub  # noqa: F401  (fixtures)

import workbench
from workbench.errors import ConfigError, HubError
from workbench.hub import Hub, HubClient
from workbench.hub._packages import pack, receive

AUTH = {"Authorization": "Bearer t", "Content-Type": "application/x-tar"}


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _left_behind(hub: Hub) -> list[str]:
    folder = hub.data_dir / "packages"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.usefixtures("keys_env")
def test_hub_deploys_an_uploaded_package_when_the_clients_copy_is_gone(fleet_factory: FleetFactory,
                                                                      tmp_path: Path) -> None:
    record = fleet_factory(devices=2, keepalive=5, hub=True)
    v1, _ = _packages(tmp_path)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        rollout = fleet.deploy(v1)
        shutil.rmtree(v1)  # the client's disk no longer has it: the hub deploys its own copy
        report = rollout.wait(timeout=120)
        assert report.status == "succeeded" and report.counts == {"active": 2}, str(report)
        fleet.wait_until(lambda f: set(_versions(f).values()) == {"v1"}, timeout=30)


@pytest.mark.usefixtures("keys_env")
def test_hub_refuses_a_rollout_naming_a_folder_it_was_not_sent(fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=1, hub=True)
    v1, _ = _packages(tmp_path)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        for path in (str(v1), "/etc", str(Path(record["run_dir"]) / "packages" / ".." / "keys")):
            with pytest.raises(ConfigError, match="was not uploaded to this hub; send it first"):
                fleet.hub.start_rollout({"package": path, "devices": "all"})
        assert fleet.rollouts().empty


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"not a tar at all" * 100, 400, "must be a tar of the package folder"),
    (_tar([(tarfile.TarInfo("../escape.txt"), b"x")]), 400, "'../escape.txt' is not one"),
    (_tar([(tarfile.TarInfo("/etc/cron.d/x"), b"x")]), 400, "'/etc/cron.d/x' is not one"),
    (_tar([(_symlink("manifest.json", "/etc/passwd"), None)]), 400, "'manifest.json' is not one"),
    (_tar([(tarfile.TarInfo("model.onnx"), b"x")]), 409, "does not hold together"),
])
def test_hub_refuses_a_hostile_package_upload_naming_why_and_keeps_nothing(
        local_hub: Hub, api: str, body: bytes, status: int, words: str) -> None:  # noqa: F811
    response = httpx.post(f"{api}/v1/packages", content=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert _left_behind(local_hub) == []


@pytest.mark.usefixtures("keys_env")
def test_hub_refuses_an_upload_whose_file_does_not_match_the_manifest_and_keeps_nothing(
        local_hub: Hub, api: str, tmp_path: Path) -> None:  # noqa: F811
    v1, _ = _packages(tmp_path)
    manifest = json.loads((v1 / "manifest.json").read_text())
    model = next(name for name in manifest["files"] if name.endswith(".onnx"))
    with (v1 / model).open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01")
    with HubClient(api, token="t") as client, pytest.raises(HubError, match="does not hold together"):
        client.upload_package(v1)
    assert _left_behind(local_hub) == []


@pytest.mark.usefixtures("keys_env")
def test_package_upload_over_the_limit_is_refused_while_it_streams_and_leaves_nothing(
        local_hub: Hub, tmp_path: Path) -> None:  # noqa: F811
    v1, _ = _packages(tmp_path)
    body = pack(v1)
    chunks_read = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_read
        for start in range(0, len(body), 4096):
            chunks_read += 1
            yield body[start:start + 4096]

    with pytest.raises(ConfigError, match=r"at most \d+ bytes; this one is larger"):
        asyncio.run(receive(chunks(), local_hub.data_dir, limit=len(body) // 2))
    assert chunks_read <= len(body) // 2 // 4096 + 1  # stopped at the limit, not after reading it all
    assert _left_behind(local_hub) == []
    assert Path(asyncio.run(receive(chunks(), local_hub.data_dir))).parent == local_hub.data_dir / "packages"
