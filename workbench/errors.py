"""The one exception hierarchy of the workbench.

Every error the workbench raises on purpose derives from :class:`WorkbenchError`, so a
notebook can catch them all in one ``except``. Each message says what went wrong and
what to do next.

    WorkbenchError
    ├── ConfigError             bad argument, unknown profile, malformed file
    │   └── UnknownProfileError
    ├── BrokerError             the MQTT broker cannot be used
    │   ├── BrokerUnreachableError
    │   └── AuthenticationError
    ├── FleetError              the local fleet's lifecycle
    │   ├── FleetAlreadyRunningError
    │   ├── FleetNotRunningError
    │   └── FleetTimeoutError
    ├── DeviceError             one device
    │   ├── UnknownDeviceError
    │   ├── DuplicateDeviceError
    │   └── ResourceLimitError
    ├── CommandError            a request/response command failed
    │   ├── CommandTimeoutError
    │   ├── DeviceOfflineError
    │   └── RemoteCommandError  the device answered with an error
    ├── PayloadError            a message that does not follow the topic schema
    ├── OptimizeError           model optimization and measurement
    ├── HubError                the fleet hub cannot be used
    │   ├── HubUnreachableError nothing answered at the hub's address
    │   ├── HubAuthError        the hub refused the token (401)
    │   └── HubAlreadyRunningError another hub owns the store
    └── DeployError             a deployment could not be prepared or run
        ├── PackageError        a package is malformed, incomplete or tampered with
        │   └── SignatureError  the signature is missing, invalid or by an untrusted key
        ├── ArtifactError       an artifact could not be served, downloaded or verified
        ├── DeployConflictError another rollout is already deploying to the device
        ├── RolloutAbortedError a gate or the failure threshold stopped the rollout
        └── HealthCheckError    a candidate model gave the wrong output or was too slow
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Root of every error the workbench raises on purpose."""


class ConfigError(WorkbenchError, ValueError):
    """An argument, option or file is not valid."""


class UnknownProfileError(ConfigError, KeyError):
    """A hardware profile name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BrokerError(WorkbenchError):
    """The MQTT broker cannot be used."""


class BrokerUnreachableError(BrokerError, ConnectionError):
    """No MQTT broker answered at the given URL within the timeout."""


class AuthenticationError(BrokerError, PermissionError):
    """The broker refused the credentials or the client is not authorized."""


class FleetError(WorkbenchError):
    """Starting, finding or stopping a local fleet failed."""


class FleetAlreadyRunningError(FleetError):
    """``workbench up`` on a run directory whose fleet is already up."""


class FleetNotRunningError(FleetError):
    """No local fleet is running in the given run directory."""


class FleetTimeoutError(FleetError, TimeoutError):
    """Fewer devices came online (or a condition held) than waited for, within the timeout."""


class DeviceError(WorkbenchError):
    """Something about one device."""


class UnknownDeviceError(DeviceError, KeyError):
    """A device id the fleet has never seen."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateDeviceError(DeviceError):
    """Another agent is already online with the same device id."""


class ResourceLimitError(DeviceError):
    """A request would exceed the device's (or its profile's) limits."""


class CommandError(WorkbenchError):
    """A command sent to a device did not succeed."""


class CommandTimeoutError(CommandError, TimeoutError):
    """No response arrived before the command's timeout."""


class DeviceOfflineError(CommandError):
    """The device is offline, so the command was not sent."""


class RemoteCommandError(CommandError):
    """The device ran the command and answered with an error."""

    def __init__(self, message: str, *, device_id: str = "", code: str = "error") -> None:
        super().__init__(message)
        self.device_id = device_id
        self.code = code


class PayloadError(WorkbenchError, ValueError):
    """A message that does not follow the topic schema; ``kind`` says how, for counting.

    ``kind`` is ``malformed``, ``oversized``, ``too_deep``, ``out_of_range`` or ``unknown_version``.
    """

    def __init__(self, message: str, *, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


class OptimizeError(WorkbenchError):
    """Exporting, transforming or measuring a model failed."""


class HubError(WorkbenchError):
    """The fleet hub cannot be used, or refused a request."""


class HubUnreachableError(HubError, ConnectionError):
    """Nothing answered at the hub's address."""


class HubAuthError(HubError, PermissionError):
    """The hub refused the request's token (HTTP 401)."""


class HubAlreadyRunningError(HubError):
    """Another hub already owns the store: one hub receives and acknowledges a fleet's data."""


class DeployError(WorkbenchError):
    """A deployment could not be prepared or run."""


class PackageError(DeployError, ValueError):
    """A model package is malformed, incomplete or does not match its manifest."""


class SignatureError(PackageError):
    """A package's signature is missing, invalid, or made by a key the verifier does not trust."""


class ArtifactError(DeployError):
    """An artifact could not be served, downloaded or verified."""


class DeployConflictError(DeployError):
    """Another rollout is deploying to the same device right now."""


class RolloutAbortedError(DeployError):
    """A rollout stopped early: a gate failed or too many devices failed."""


class HealthCheckError(DeployError):
    """A loaded candidate model failed its health check (wrong output, too slow)."""
