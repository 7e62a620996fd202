"""The shape of a device's retained inventory, checked before the workbench keeps it.

An inventory is versioned JSON (``workbench.protocol.schema``), but that says nothing about the
fields: a device with its own credentials can publish ``{"hardware": "x"}``, and every view
(``fleet.inventory()``, a rollout's preflight, the optimizer's target) reads ``hardware`` as an
object. Fields the workbench reads must have the type the agent sends (or be absent, as from an
older agent); unknown fields pass untouched, so a newer agent's additions are not rejected.

Example:
    >>> check_inventory({"v": 1, "profile": "intel-nuc", "hardware": {"cores": 4}})["profile"]
    'intel-nuc'
    >>> check_inventory({"v": 1, "hardware": "x"})
    Traceback (most recent call last):
    ...
    workbench.errors.PayloadError: malformed inventory: hardware must be an object, got str
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from workbench.errors import PayloadError

_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))
_OPTIONAL_NUMBER = (int, float, type(None))
_OPTIONAL_DICT = (dict, type(None))

_TOP: dict[str, tuple[type, ...]] = {
    "device_id": (str,), "instance": _OPTIONAL_STR, "agent_version": _OPTIONAL_STR, "simulated": (bool,),
    "profile": _OPTIONAL_STR, "profile_spec": _OPTIONAL_DICT, "hardware": (dict,), "limits": (dict,),
    "active_model": _OPTIONAL_DICT, "commands": (list,), "hostname": _OPTIONAL_STR, "pid": (int, type(None)),
    "started_at": _OPTIONAL_NUMBER,
}
_HARDWARE: dict[str, tuple[type, ...]] = {
    "board": _OPTIONAL_STR, "cpu_model": _OPTIONAL_STR, "isa_features": (list,), "cores": (int, type(None)),
    "physical_cores": (int, type(None)), "memory_mb": _OPTIONAL_NUMBER, "disk_free_mb": _OPTIONAL_NUMBER,
    "os": _OPTIONAL_STR, "arch": _OPTIONAL_STR, "python": _OPTIONAL_STR, "onnxruntime": _OPTIONAL_STR,
    "execution_providers": (list,), "temperature_c": _OPTIONAL_NUMBER,
}
_LIMITS: dict[str, tuple[type, ...]] = {"threads": (int, type(None)), "memory_mb": _OPTIONAL_NUMBER}
_MODEL: dict[str, tuple[type, ...]] = {
    "name": _OPTIONAL_STR, "version": _OPTIONAL_STR, "sha256": _OPTIONAL_STR, "path": _OPTIONAL_STR,
    "package_id": _OPTIONAL_STR, "slot": (str, int, type(None)),
}
_STRING_LISTS = (("hardware", "isa_features"), ("hardware", "execution_providers"), ("commands",))


def _type_name(value: Any) -> str:
    return "null" if value is None else "object" if isinstance(value, dict) else type(value).__name__


def _check_fields(body: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> None:
    for key, allowed in types.items():
        if key not in body:
            continue
        value = body[key]
        # bool is an int to isinstance: a count or a size of True is as wrong as one of "x".
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            wanted = "an object" if dict in allowed else "a list" if list in allowed else \
                " or ".join(sorted({"a number" if t in _NUMBER else "a string" if t is str else "null" if t is
                                    type(None) else "true/false" for t in allowed}))
            raise PayloadError(f"malformed inventory: {where}{key} must be {wanted}, got {_type_name(value)}")


def check_inventory(body: dict[str, Any]) -> dict[str, Any]:
    """Return ``body`` if every field the workbench reads has its type; else raise :class:`PayloadError`.

    Example:
        >>> check_inventory({"v": 1, "limits": {"threads": 2, "memory_mb": 512}})["limits"]["threads"]
        2
    """
    _check_fields(body, _TOP, "")
    for key, types in (("hardware", _HARDWARE), ("limits", _LIMITS), ("active_model", _MODEL)):
        if isinstance(body.get(key), dict):
            _check_fields(body[key], types, f"{key}.")
    for path in _STRING_LISTS:
        value: Any = body
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise PayloadError(f"malformed inventory: {'.'.join(path)} must be a list of strings")
    return body


# fleet.inventory()'s columns, in order; ``device_id``, ``online`` and ``last_seen`` come from presence, the rest from
# the inventory (``inventory_fields``).
COLUMNS = ("device_id", "online", "profile", "simulated", "active_model", "cpu_model", "arch", "isa_features",
           "host_cores", "threads_limit", "memory_limit_mb", "disk_free_mb", "os", "onnxruntime",
           "execution_providers", "agent_version", "agent_outdated", "last_seen")


def inventory_fields(inv: dict[str, Any]) -> tuple[Any, ...]:
    """The inventory's values for ``COLUMNS[2:-1]`` (profile to agent_outdated), flattened for a table.

    Example:
        >>> inventory_fields({"profile": "jetson-orin", "hardware": {"isa_features": ["neon", "fp16"]}})[:6]
        ('jetson-orin', None, None, None, None, 'neon,fp16')
    """
    hw = inv.get("hardware") or {}
    limits = inv.get("limits") or {}
    return (
        inv.get("profile"), inv.get("simulated"), model_label(inv.get("active_model")), hw.get("cpu_model"),
        hw.get("arch"), ",".join(hw.get("isa_features") or []), hw.get("cores"), limits.get("threads"),
        limits.get("memory_mb"), hw.get("disk_free_mb"), hw.get("os"), hw.get("onnxruntime"),
        ",".join(hw.get("execution_providers") or []), inv.get("agent_version"),
        _outdated(inv.get("agent_version")),
    )


@functools.lru_cache(maxsize=256)  # bounded: each device names its own version, and a hostile one could name many
def _outdated(agent_version: Any) -> bool | None:
    from workbench.fleet._device import agent_outdated

    return agent_outdated(agent_version)


def model_label(model: Any) -> str | None:
    """How a device's active model is shown: its name, else its hash's start; None without a model.

    Example:
        >>> model_label({"name": "digits", "version": "2"}), model_label(None)
        ('digits', None)
    """
    if isinstance(model, dict):
        return str(model.get("name") or model.get("sha256", "")[:12] or "?")
    return None if model is None else str(model)


class InventoryRows:
    """Each device's inventory fields, flattened once per inventory message rather than once per table.

    An inventory changes on connect and on a new active model; a table of 2,000 devices is asked for far more
    often. The cache holds the inventory dict it was made from, so a replaced inventory is seen by identity.

    Example:
        >>> rows = InventoryRows()
        >>> rows.row("sim-01", True, 5.0, {"profile": "intel-nuc"})[:3]
        ('sim-01', True, 'intel-nuc')
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[dict[str, Any], tuple[Any, ...]]] = {}
        self._lock = threading.Lock()

    def row(self, device_id: str, online: bool, last_seen: float | None, inv: dict[str, Any]) -> tuple[Any, ...]:
        """The device's values for every column of ``COLUMNS``."""
        with self._lock:
            cached = self._cache.get(device_id)
        if cached is None or cached[0] is not inv:
            cached = (inv, inventory_fields(inv))
            with self._lock:
                self._cache[device_id] = cached
        return (device_id, online, *cached[1], last_seen)
