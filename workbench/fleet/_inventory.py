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
