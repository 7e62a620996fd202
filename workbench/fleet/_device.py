"""A device as the workbench sees it: state from the broker, commands to it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.fleet._fleet import Fleet


@dataclass
class Device:
    """One device of the fleet, kept current from its retained status and inventory.

    Example:
        >>> device = fleet["sim-01"]       # doctest: +SKIP
        >>> device.online, device.profile  # doctest: +SKIP
        (True, 'raspberry-pi-5')
    """

    device_id: str
    _fleet: Fleet = field(repr=False)
    online: bool = False
    instance: str | None = None
    inventory_data: dict[str, Any] = field(default_factory=dict, repr=False)
    last_seen: float | None = None
    offline_reason: str | None = None

    @property
    def profile(self) -> str | None:
        """The hardware profile the device declares (None for a real device without one)."""
        return self.inventory_data.get("profile")

    @property
    def simulated(self) -> bool:
        return bool(self.inventory_data.get("simulated"))

    @property
    def active_model(self) -> Any:
        return self.inventory_data.get("active_model")

    def call(self, command: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
        """Send ``command`` and wait for the device's result.

        Raises :class:`~workbench.errors.DeviceOfflineError`,
        :class:`~workbench.errors.CommandTimeoutError` or
        :class:`~workbench.errors.RemoteCommandError`.

        Example:
            >>> fleet["sim-01"].call("inventory")["profile"]   # doctest: +SKIP
            'raspberry-pi-5'
        """
        return self._fleet.call(self.device_id, command, args, timeout=timeout)

    def ping(self, *, timeout: float = 5.0) -> float:
        """Round-trip time of a command through the broker, in milliseconds.

        Example:
            >>> fleet["sim-01"].ping()   # doctest: +SKIP
            0.9
        """
        start = time.perf_counter()
        self.call("ping", timeout=timeout)
        return (time.perf_counter() - start) * 1000.0

    def stats(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """The agent's counters: commands, reconnects, rejected payloads by kind."""
        return self.call("stats", timeout=timeout)

    def set_link(self, link: Any = None, **numbers: Any) -> dict[str, Any]:
        """Put the device's sync on a link profile (lan, wifi-flaky, lte, satellite, offline) or custom numbers.

        Example:
            >>> fleet["sim-07"].set_link("satellite")   # doctest: +SKIP
        """
        return self._fleet.sync.set_link(self.device_id, link, **numbers)

    def set_budget(self, mb_per_day: float | None) -> dict[str, Any]:
        """Set the device's daily sync budget in MB (None removes it).

        Example:
            >>> fleet["sim-07"].set_budget(mb_per_day=50)   # doctest: +SKIP
        """
        return self._fleet.sync.set_budget(self.device_id, mb_per_day)

    def row(self) -> dict[str, Any]:
        """The device as one inventory row (the columns of ``fleet.inventory(wide=True)``)."""
        from workbench.fleet._inventory import COLUMNS, inventory_fields

        return dict(zip(COLUMNS, (self.device_id, self.online, *inventory_fields(self.inventory_data),
                                  self.last_seen), strict=True))


def agent_outdated(agent_version: Any) -> bool | None:
    """True when a device's agent is older than this workbench (upgrade it); None when it did not say.

    Example:
        >>> agent_outdated("0.0.9"), agent_outdated(None)
        (True, None)
    """
    from workbench import __version__

    if not isinstance(agent_version, str) or not agent_version:
        return None
    return _release(agent_version) < _release(__version__)


def _release(version: str) -> tuple[int, ...]:
    # "0.1.0", "0.2.0rc1", "0.1.0+local": the leading numbers decide; pre-release tags count as the release.
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()

