"""The deployment errors; they live in :mod:`workbench.errors` (the one hierarchy) and are re-exported here."""

from __future__ import annotations

from workbench.errors import (
    ArtifactError,
    DeployConflictError,
    DeployError,
    HealthCheckError,
    PackageError,
    RolloutAbortedError,
    SignatureError,
)

__all__ = ["ArtifactError", "DeployConflictError", "DeployError", "HealthCheckError", "PackageError",
           "RolloutAbortedError", "SignatureError"]
