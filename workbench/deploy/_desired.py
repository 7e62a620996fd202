"""A device's desired state for a package: what the workbench publishes, retained, for the agent to follow."""

from __future__ import annotations

import time
import uuid
from typing import Any

from workbench.protocol.artifacts import ArtifactStore
from workbench.protocol.keys import SigningKey
from workbench.protocol.package import MANIFEST, SIGNATURE, Package
from workbench.protocol.rollback import sign_rollback


def stage_package(package: Package, server: ArtifactStore) -> dict[str, Any]:
    """Put every file of ``package`` into the artifact store; return the desired-state fields that name it.

    Devices download by content hash, so staging the same package twice costs nothing.

    Example:
        >>> stage_package(load_package("out/digits"), server)["package_id"][:12]   # doctest: +SKIP
    """
    for name in package.files:
        server.add(package.path / name)
    manifest_sha = server.add(package.path / MANIFEST)
    signature_sha = server.add(package.path / SIGNATURE)
    return {"package_id": manifest_sha, "signature_sha256": signature_sha,
            "manifest_size": (package.path / MANIFEST).stat().st_size,
            "signature_size": (package.path / SIGNATURE).stat().st_size,
            "base_url": server.base_url, "name": package.name, "version": package.version,
            "size": package.size}


def desired_install(staged: dict[str, Any], *, rollout_id: str, deployment_id: str | None = None) -> dict[str, Any]:
    """The desired state telling a device to install a staged package.

    Example:
        >>> desired_install(staged, rollout_id="r1")["action"]   # doctest: +SKIP
        'install'
    """
    return {**staged, "action": "install", "rollout_id": rollout_id,
            "deployment_id": deployment_id or uuid.uuid4().hex[:12], "set_at": time.time()}


def desired_rollback(*, rollout_id: str, reason: str, device_id: str, key: SigningKey) -> dict[str, Any]:
    """The desired state telling ``device_id`` to return to its previous package, with the grant ``key`` signed.

    A device refuses packages older than the one it installed; this signed grant is what lets it
    go back (see :mod:`workbench.protocol.rollback`).

    Example:
        >>> desired_rollback(rollout_id="r1", reason="gate failed", device_id="sim-01",
        ...                  key=load_signing_key())["action"]   # doctest: +SKIP
        'rollback'
    """
    deployment_id = uuid.uuid4().hex[:12]
    return {"action": "rollback", "rollout_id": rollout_id, "deployment_id": deployment_id, "reason": reason,
            "set_at": time.time(), "grant": sign_rollback(key, device_id=device_id, deployment_id=deployment_id)}
