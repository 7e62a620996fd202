"""Agent-side installs without MQTT: A/B slots, health check, rejection of tampered packages, rollback, boot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbench.agent._deploy_service import Installer
from workbench.agent._limits import DeviceLimits
from workbench.agent._runtime import ModelRuntime
from workbench.agent._slots import SlotStore
from workbench.deploy import ArtifactServer
from workbench.deploy._desired import stage_package
from workbench.deploy._examples import tiny_model
from workbench.protocol.keys import SigningKey, init_keys
from workbench.protocol.package import Package, build_package
from workbench.protocol.rollback import sign_rollback


def publish(server: ArtifactServer, package: Package) -> dict[str, Any]:
    """What the workbench puts in a device's desired state for ``package``."""
    return {**stage_package(package, server), "deployment_id": package.id[:8]}


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return init_keys(tmp_path / "keys")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactServer]:
    with ArtifactServer(tmp_path / "store") as srv:
        yield srv


def make_installer(root: Path, key: SigningKey) -> Installer:
    runtime = ModelRuntime(DeviceLimits(threads=1, memory_mb=1024))
    installer = Installer(SlotStore(root), runtime, trusted_keys=lambda: {key.key_id: key.private_key.public_key()},
                          retry_delay=0.05)
    installer.boot()
    return installer


def package(tmp_path: Path, key: SigningKey, seed: int, **options: Any) -> Package:
    return build_package(tiny_model(tmp_path / f"m{seed}.onnx", seed=seed), tmp_path / f"pkg{seed}", key,
                         version=f"v{seed}", **options)


def states(log: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [state for state, _ in log]


def test_install_activates_candidate_when_package_is_valid(tmp_path: Path, key: SigningKey,
                                                           server: ArtifactServer) -> None:
    installer = make_installer(tmp_path / "dev", key)
    log: list[tuple[str, dict[str, Any]]] = []
    result = installer.install(publish(server, package(tmp_path, key, 1)), lambda s, **i: log.append((s, i)))
    assert result["state"] == "active", result
    assert states(log)[:1] == ["downloading"] and "health_checking" in states(log) and "activating" in states(log)
    assert installer.runtime.active is not None and installer.runtime.active.version == "v1"
    assert installer.store.current() == result["slot"]


def test_restart_serves_the_activated_package_when_agent_boots_again(tmp_path: Path, key: SigningKey,
                                                                    server: ArtifactServer) -> None:
    first = make_installer(tmp_path / "dev", key)
    first.install(publish(server, package(tmp_path, key, 1)), lambda s, **i: None)
    again = make_installer(tmp_path / "dev", key)
    assert again.package is not None and again.package.version == "v1"
    assert again.runtime.active is not None and again.runtime.active.version == "v1"


@pytest.mark.parametrize("target", ["model.onnx", "sample_input.npz", "expected_output.npz"])
def test_install_rejects_and_keeps_serving_when_served_file_is_tampered(tmp_path: Path, key: SigningKey,
                                                                        server: ArtifactServer, target: str) -> None:
    installer = make_installer(tmp_path / "dev", key)
    installer.install(publish(server, package(tmp_path, key, 1)), lambda s, **i: None)
    bad = package(tmp_path, key, 2)
    desired = publish(server, bad)
    # The server's copy is flipped after signing, so the hash the signed manifest names no longer matches.
    stored = server.path(bad.files[target]["sha256"])
    assert stored is not None
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    result = installer.install(desired, lambda s, **i: None)
    assert result["state"] == "rejected", result
    assert "sha256" in result["reason"]
    assert installer.runtime.active is not None and installer.runtime.active.version == "v1"
    assert make_installer(tmp_path / "dev", key).package.version == "v1"  # type: ignore[union-attr]


def test_install_rejects_when_package_is_signed_by_unknown_key(tmp_path: Path, key: SigningKey,
                                                               server: ArtifactServer) -> None:
    installer = make_installer(tmp_path / "dev", key)
    stranger = init_keys(tmp_path / "stranger")
    result = installer.install(publish(server, package(tmp_path, stranger, 3)), lambda s, **i: None)
    assert result["state"] == "rejected"
    assert "not trusted" in result["reason"]
    assert installer.runtime.active is None and installer.store.current() is None


def test_install_rejects_when_manifest_points_to_missing_file(tmp_path: Path, key: SigningKey,
                                                              server: ArtifactServer) -> None:
    installer = make_installer(tmp_path / "dev", key)
    pkg = package(tmp_path, key, 4)
    desired = publish(server, pkg)
    missing = server.path(pkg.files["expected_output.npz"]["sha256"])
    assert missing is not None
    missing.unlink()
    result = installer.install(desired, lambda s, **i: None)
    assert result["state"] == "failed" and "404" in result["reason"]
    assert installer.store.current() is None


def test_install_fails_health_check_and_keeps_old_model_when_slo_is_impossible(tmp_path: Path, key: SigningKey,
                                                                              server: ArtifactServer) -> None:
    installer = make_installer(tmp_path / "dev", key)
    installer.install(publish(server, package(tmp_path, key, 1)), lambda s, **i: None)
    result = installer.install(publish(server, package(tmp_path, key, 5, slo_ms=1e-6)), lambda s, **i: None)
    assert result["state"] == "failed" and "SLO" in result["reason"]
    assert installer.runtime.active is not None and installer.runtime.active.version == "v1"


def test_rollback_returns_to_previous_package_when_requested(tmp_path: Path, key: SigningKey,
                                                             server: ArtifactServer) -> None:
    installer = make_installer(tmp_path / "dev", key)
    installer.install(publish(server, package(tmp_path, key, 1)), lambda s, **i: None)
    installer.install(publish(server, package(tmp_path, key, 2)), lambda s, **i: None)
    grant = sign_rollback(key, device_id="dev", deployment_id="back")
    result = installer.rollback(lambda s, **i: None, grant=grant, device_id="dev", deployment_id="back")
    assert result["state"] == "rolled_back"
    assert installer.runtime.active is not None and installer.runtime.active.version == "v1"
    assert make_installer(tmp_path / "dev", key).package.version == "v1"  # type: ignore[union-attr]


def test_boot_falls_back_to_previous_slot_when_current_fails_verification(tmp_path: Path, key: SigningKey,
                                                                          server: ArtifactServer) -> None:
    installer = make_installer(tmp_path / "dev", key)
    installer.install(publish(server, package(tmp_path, key, 1)), lambda s, **i: None)
    installer.install(publish(server, package(tmp_path, key, 2)), lambda s, **i: None)
    current = installer.store.slot_dir(installer.store.current() or "a")
    manifest = json.loads((current / "manifest.json").read_text())
    manifest["version"] = "evil"
    (current / "manifest.json").write_text(json.dumps(manifest))
    rebooted = make_installer(tmp_path / "dev", key)
    assert rebooted.package is not None and rebooted.package.version == "v1"
    assert rebooted.boot_problem is not None and "signature" in rebooted.boot_problem


def test_install_skips_download_when_package_already_active(tmp_path: Path, key: SigningKey,
                                                            server: ArtifactServer) -> None:
    installer = make_installer(tmp_path / "dev", key)
    desired = publish(server, package(tmp_path, key, 1))
    installer.install(desired, lambda s, **i: None)
    served = server.bytes_served
    assert installer.install(desired, lambda s, **i: None)["state"] == "active"
    assert server.bytes_served == served
