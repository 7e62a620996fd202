"""Edge Workbench: optimize, deploy and watch ML models on a fleet of edge devices.

Example:
    >>> import workbench
    >>> fleet = workbench.connect()          # doctest: +SKIP
    >>> fleet.wait_for(3, timeout=30)        # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.errors import (
    ArtifactError,
    AuthenticationError,
    BrokerError,
    BrokerUnreachableError,
    CommandError,
    CommandTimeoutError,
    ConfigError,
    DeployConflictError,
    DeployError,
    DeviceError,
    DeviceOfflineError,
    DuplicateDeviceError,
    FleetAlreadyRunningError,
    FleetError,
    FleetNotRunningError,
    FleetTimeoutError,
    HealthCheckError,
    OptimizeError,
    PackageError,
    PayloadError,
    RemoteCommandError,
    ResourceLimitError,
    RolloutAbortedError,
    SignatureError,
    UnknownDeviceError,
    UnknownProfileError,
    WorkbenchError,
)
from workbench.profiles import HardwareProfile, get_profile, list_profiles, register_profile

__version__ = "0.1.0"

if TYPE_CHECKING:
    from workbench.fleet import Device, Fleet

# The notebook-side API needs pandas; keep `import workbench` light for the agent.
_LAZY = {
    "connect": ("workbench.fleet", "connect"),
    "Fleet": ("workbench.fleet", "Fleet"),
    "Device": ("workbench.fleet", "Device"),
    "optimize": ("workbench.optimize", "optimize"),
    "record": ("workbench.runs", "record"),
    "Canary": ("workbench.deploy", "Canary"),
    "Shadow": ("workbench.deploy", "Shadow"),
    "gate": ("workbench.deploy", "gate"),
}


_SUBPACKAGES = {"agent", "cli", "deploy", "fleet", "optimize", "profiles", "runs", "sim", "sync", "telemetry"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"workbench.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "AuthenticationError",
    "BrokerError",
    "BrokerUnreachableError",
    "Canary",
    "CommandError",
    "CommandTimeoutError",
    "ConfigError",
    "DeployConflictError",
    "DeployError",
    "Device",
    "DeviceError",
    "DeviceOfflineError",
    "DuplicateDeviceError",
    "Fleet",
    "FleetAlreadyRunningError",
    "FleetError",
    "FleetNotRunningError",
    "FleetTimeoutError",
    "HardwareProfile",
    "HealthCheckError",
    "OptimizeError",
    "PackageError",
    "PayloadError",
    "RemoteCommandError",
    "ResourceLimitError",
    "RolloutAbortedError",
    "Shadow",
    "SignatureError",
    "UnknownDeviceError",
    "UnknownProfileError",
    "WorkbenchError",
    "__version__",
    "connect",
    "gate",
    "get_profile",
    "list_profiles",
    "optimize",
    "record",
    "register_profile",
]
