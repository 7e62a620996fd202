"""Errors of deployments, all under :class:`~workbench.errors.WorkbenchError`.

    DeployError                  a deployment could not be prepared or run
    ├── PackageError             a package is malformed, incomplete or tampered with
    │   └── SignatureError       the signature is missing, invalid or by an untrusted key
    ├── DeployConflictError      another rollout is already deploying to the device
    ├── RolloutAbortedError      a gate or the failure threshold stopped the rollout
    └── HealthCheckError         a candidate model gave the wrong output or was too slow
"""

from __future__ import annotations

from workbench.errors import WorkbenchError


class DeployError(WorkbenchError):
    """A deployment could not be prepared or run."""


class PackageError(DeployError, ValueError):
    """A model package is malformed, incomplete or does not match its manifest."""


class SignatureError(PackageError):
    """A package's signature is missing, invalid, or made by a key the verifier does not trust."""


class DeployConflictError(DeployError):
    """Another rollout is deploying to the same device right now."""


class RolloutAbortedError(DeployError):
    """A rollout stopped early: a gate failed or too many devices failed."""


class HealthCheckError(DeployError):
    """A loaded candidate model failed its health check (wrong output, too slow)."""
