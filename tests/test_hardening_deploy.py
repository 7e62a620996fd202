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


def test_replayed_older_package_is_rejected_before_any_slot_is_touched_when_a_newer_one_was_installed(
    tmp_path: Path, key: SigningKey, server: ArtifactServer  # noqa: F811 (fixtures)
) -> None:
    """Row 6: a validly signed, older desired state replayed later must not downgrade the device."""
    installer = make_installer(tmp_path / "dev", key)
    old, new = package(tmp_path, key, 1), package(tmp_path, key, 2)
    old_desired = publish(server, old)
    for desired in (old_desired, publish(server, new)):
        assert installer.install(desired, lambda s, **i: None)["state"] == "active"
    store = installer.store
    held = {slot: store.package_id(slot) for slot in ("a", "b")}
    # Replayed, and replayed again after a restart (the floor is on disk, not in memory).
    for device in (installer, make_installer(tmp_path / "dev", key)):
        result = device.install({**old_desired, "deployment_id": "replayed"}, lambda s, **i: None)
        assert result["state"] == "rejected" and "older than" in result["reason"], result
        assert device.runtime.active is not None and device.runtime.active.version == "v2"
        assert {slot: store.package_id(slot) for slot in ("a", "b")} == held
        assert store.previous() is not None and store.package_id(store.previous()) == old.id


def test_rollback_needs_a_fresh_grant_signed_for_this_device_and_a_grant_counts_once(
    tmp_path: Path, key: SigningKey, server: ArtifactServer  # noqa: F811 (fixtures)
) -> None:
    """Row 6: an unsigned, foreign, misdirected or replayed rollback leaves the newer package serving."""
    from workbench.deploy import init_keys
    from workbench.protocol.rollback import sign_rollback

    installer = make_installer(tmp_path / "dev", key)
    for seed in (1, 2):
        assert installer.install(publish(server, package(tmp_path, key, seed)), lambda s, **i: None)["state"] == \
            "active"
    stale = sign_rollback(key, device_id="dev", deployment_id="r0")  # issued before the newest install below
    assert installer.install(publish(server, package(tmp_path, key, 3)), lambda s, **i: None)["state"] == "active"
    stranger = init_keys(tmp_path / "stranger")
    refused = [
        (None, "r1"),
        (sign_rollback(stranger, device_id="dev", deployment_id="r1"), "r1"),
        (sign_rollback(key, device_id="other-device", deployment_id="r1"), "r1"),
        (sign_rollback(key, device_id="dev", deployment_id="r1"), "r2"),
        (stale, "r0"),
    ]
    for grant, deployment in refused:
        result = installer.rollback(lambda s, **i: None, grant=grant, device_id="dev", deployment_id=deployment)
        assert result["state"] == "rejected" and "rollback refused" in result["reason"], (grant, result)
        assert installer.runtime.active is not None and installer.runtime.active.version == "v3"
    grant = sign_rollback(key, device_id="dev", deployment_id="r3")
    result = installer.rollback(lambda s, **i: None, grant=grant, device_id="dev", deployment_id="r3")
    assert result["state"] == "rolled_back" and installer.runtime.active.version == "v2"
    again = installer.rollback(lambda s, **i: None, grant=grant, device_id="dev", deployment_id="r3")
    assert again["state"] == "rejected" and "not above" in again["reason"]
    assert installer.runtime.active.version == "v2"


def test_origin_allows_only_its_scheme_host_and_port_when_one_is_configured() -> None:
    """Row 8: no file://, no other host or port, no credentials in the URL; without one, only the broker's host."""
    from workbench.agent._origin import ArtifactOrigin

    origin = ArtifactOrigin(["http://127.0.0.1:8765"], broker_host="127.0.0.1")
    assert origin.allows("http://127.0.0.1:8765/artifacts/" + "0" * 64)
    for url in ("file:///etc/hostname", "http://127.0.0.1:22/", "https://127.0.0.1:8765/", "http://10.0.0.1:8765/",
                "http://user:pw@127.0.0.1:8765/", "ftp://127.0.0.1:8765/", "gopher://x", ""):
        assert not origin.allows(url), url
    unset = ArtifactOrigin([], broker_host="broker.local")
    assert unset.allows("http://broker.local:9000/a") and not unset.allows("http://attacker.example/a")


def test_install_downloads_nothing_when_base_url_is_not_the_fleets_artifact_origin(
    tmp_path: Path, key: SigningKey, server: ArtifactServer  # noqa: F811 (fixtures)
) -> None:
    """Row 8: a desired state naming another server (with the right files on it) gets no request to that server."""
    from workbench.agent._origin import ArtifactOrigin

    installer = make_installer(tmp_path / "dev", key)
    installer.origin = lambda: ArtifactOrigin([server.base_url], broker_host="127.0.0.1")
    assert installer.install(publish(server, package(tmp_path, key, 1)), lambda s, **i: None)["state"] == "active"
    with ArtifactServer(tmp_path / "elsewhere") as elsewhere:
        result = installer.install(publish(elsewhere, package(tmp_path, key, 2)), lambda s, **i: None)
        assert result["state"] == "failed" and "artifact origin" in result["reason"], result
        assert elsewhere.requests == 0
    assert installer.runtime.active is not None and installer.runtime.active.version == "v1"
