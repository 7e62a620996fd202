"""Edge Workbench: optimize, deploy and watch ML models on a fleet of edge devices.

Example:
    >>> import workbench
    >>> fleet = workbench.connect()          # doctest: +SKIP
    >>> fleet.wait_for(3, timeout=30)        # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench._lazy import lazy_getattr
from workbench._settings import Settings, settings
from workbench._version import __version__
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
    HubAlreadyRunningError,
    HubAuthError,
    HubError,
    HubUnreachableError,
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

if TYPE_CHECKING:
    from workbench.fleet import Device, Fleet

# The notebook-side API needs pandas; keep `import workbench` light for the agent.
_LAZY = {
    "connect": "workbench.fleet",
    "Fleet": "workbench.fleet",
    "Device": "workbench.fleet",
    "optimize": "workbench.optimize",
    "record": "workbench.runs",
    "Canary": "workbench.deploy",
    "Shadow": "workbench.deploy",
    "Waves": "workbench.deploy",
    "gate": "workbench.deploy",
}
_SUBPACKAGES = ("agent", "cli", "deploy", "fleet", "optimize", "profiles", "runs", "sim", "sync", "telemetry")
__getattr__ = lazy_getattr("workbench", _LAZY, _SUBPACKAGES)


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
    "HubAlreadyRunningError",
    "HubAuthError",
    "HubError",
    "HubUnreachableError",
    "OptimizeError",
    "PackageError",
    "PayloadError",
    "RemoteCommandError",
    "ResourceLimitError",
    "RolloutAbortedError",
    "Settings",
    "Shadow",
    "SignatureError",
    "UnknownDeviceError",
    "UnknownProfileError",
    "Waves",
    "WorkbenchError",
    "__version__",
    "connect",
    "gate",
    "get_profile",
    "list_profiles",
    "optimize",
    "record",
    "register_profile",
    "settings",
]
