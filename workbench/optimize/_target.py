"""What the model is optimized for: a hardware profile measured here, or a connected device."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import ConfigError, DeviceOfflineError
from workbench.profiles import HardwareProfile, cpu_features, get_profile


@dataclass
class Target:
    """The resolved target: its profile, where candidates are measured, and with what.

    ``isa_features``/``arch`` are those of the CPU that actually runs the measurement (this
    host for a profile target or a simulated device, the device's own for a real one).

    Example:
        >>> t = resolve_target("raspberry-pi-5")
        >>> t.profile.name, t.device is None
        ('raspberry-pi-5', True)
    """

    name: str
    profile: HardwareProfile
    device: Any  # a workbench.fleet.Device, or None when measured on this host
    threads: int
    providers: tuple[str, ...]
    isa_features: tuple[str, ...]
    arch: str
    skipped_providers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        if self.device is not None:
            kind = "simulated device" if self.device.simulated else "device"
            return f"{kind} {self.device.device_id}"
        return "host"

    def fingerprint(self) -> dict[str, Any]:
        """What decides a measurement: the cache key uses it, the report shows it."""
        import onnxruntime

        inventory = self.device.inventory_data if self.device is not None else {}
        hardware = inventory.get("hardware") or {}
        return {
            "target": self.name,
            "profile": self.profile.name,
            "where": self.where,
            "cpu_model": hardware.get("cpu_model") or platform.processor() or platform.machine(),
            "arch": self.arch,
            "isa_features": list(self.isa_features),
            "threads": self.threads,
            "providers": list(self.providers),
            "onnxruntime": hardware.get("onnxruntime") or onnxruntime.__version__,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.fingerprint(), "profile_spec": self.profile.to_dict(),
                "skipped_providers": dict(self.skipped_providers)}


def _usable_providers(wanted: tuple[str, ...], available: list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    usable = tuple(p for p in wanted if p in available) or ("CPUExecutionProvider",)
    skipped = {p: "not available in the onnxruntime build where it is measured" for p in wanted if p not in available}
    return usable, skipped


def resolve_target(target: Any) -> Target:
    """A profile name, a :class:`~workbench.profiles.HardwareProfile` or a connected device, resolved.

    Raises :class:`~workbench.errors.UnknownProfileError` for an unknown name and
    :class:`~workbench.errors.DeviceOfflineError` for a device that is not online.

    Example:
        >>> resolve_target("intel-nuc").threads >= 1
        True
    """
    import onnxruntime as ort

    if isinstance(target, str):
        target = get_profile(target)
    if isinstance(target, HardwareProfile):
        available = list(ort.get_available_providers())
        providers, skipped = _usable_providers(target.execution_providers, available)
        threads = max(1, min(target.cores, os.cpu_count() or 1))
        return Target(target.name, target, None, threads, providers, tuple(cpu_features()), platform.machine(),
                      skipped)
    if hasattr(target, "device_id") and hasattr(target, "call"):
        if not target.online:
            raise DeviceOfflineError(f"device {target.device_id!r} is offline, so nothing can be measured on it; "
                                     "start it (workbench up) or pick another target")
        deadline = time.monotonic() + 10.0
        while not target.inventory_data and time.monotonic() < deadline:
            time.sleep(0.05)  # status and inventory are separate retained messages; the inventory may lag
        inventory = target.inventory_data or {}
        if "benchmark" not in (inventory.get("commands") or []):
            raise ConfigError(f"device {target.device_id!r} runs an agent without the benchmark command "
                              f"(agent {inventory.get('agent_version')}); upgrade its agent")
        spec = inventory.get("profile_spec")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in (spec or {}).items()
                                  if k != "int8_dot_product"}
        profile = HardwareProfile(**fields) if spec else get_profile("generic-arm64")
        hardware = inventory.get("hardware") or {}
        limits = inventory.get("limits") or {}
        available = list(hardware.get("execution_providers") or ["CPUExecutionProvider"])
        providers, skipped = _usable_providers(profile.execution_providers, available)
        return Target(target.device_id, profile, target, int(limits.get("threads") or profile.cores), providers,
                      tuple(hardware.get("isa_features") or ()), str(hardware.get("arch") or profile.arch), skipped)
    raise ConfigError(f"target must be a profile name, a HardwareProfile or a connected device "
                      f"(fleet['sim-01']), not {type(target).__name__}")
