"""Hostile deployments against the agent's installer (no MQTT): the rollback slot is untouched before verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_deploy_slots import key, make_installer, package, publish, server  # noqa: F401 (fixtures)
from test_hardening_decoders import Flood

from workbench.deploy import ArtifactServer
from workbench.protocol.keys import SigningKey
from workbench.protocol.package import verify_package


def _disk_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def test_bogus_install_keeps_the_rollback_slot_and_writes_under_2_mib_when_base_url_streams_30_mib(
    tmp_path: Path, key: SigningKey, server: ArtifactServer  # noqa: F811 (fixtures)
) -> None:
    installer = make_installer(tmp_path / "dev", key)
    log: list[tuple[str, dict[str, Any]]] = []
    for seed in (1, 2):
        assert installer.install(publish(server, package(tmp_path, key, seed)), lambda s, **i: log.append((s, i)))[
            "state"] == "active"
    store = installer.store
    rollback_slot = store.previous()
    assert rollback_slot is not None
    held = store.package_id(rollback_slot)
    before = _disk_bytes(tmp_path / "dev")
    flood = Flood(mib=30)
    try:
        result = installer.install({"package_id": "c" * 64, "base_url": flood.base_url, "signature_sha256": "d" * 64,
                                    "deployment_id": "bogus"}, lambda s, **i: log.append((s, i)))
    finally:
        flood.close()
    assert result["state"] in ("failed", "rejected"), result
    assert store.previous() == rollback_slot and store.package_id(rollback_slot) == held
    assert verify_package(store.slot_dir(rollback_slot), {key.key_id: key.private_key.public_key()})
    assert _disk_bytes(tmp_path / "dev") - before < 2 * 2**20
