"""The MQTT topic namespace, version 1.

Everything lives under ``wb/v1/``. Devices publish only under their own prefix
``wb/v1/dev/{device}/``; only the workbench publishes under ``wb/v1/cmd/{device}/``.
That split is what a secure fleet's ACLs enforce (``workbench up``'s default).

=======================================  ========  ==========  ==================================
topic                                    retained  publisher   payload
=======================================  ========  ==========  ==================================
``wb/v1/dev/{device}/status``            yes       device/LWT  ``{"v", "state", "instance", "ts"}``
``wb/v1/dev/{device}/inventory``         yes       device      the device's inventory
``wb/v1/dev/{device}/claim``             no        device      duplicate-id detection
``wb/v1/dev/{device}/reply/{client}``    no        device      response to a command
``wb/v1/cmd/{device}/{command}``         no        workbench   a command request
``wb/v1/desired/{device}/model``         yes       workbench   the model the device should run
``wb/v1/dev/{device}/deploy``            yes       device      deployment state (reported)
``wb/v1/dev/{device}/telemetry``         no        nobody      a name: batches travel in outbox items
``wb/v1/desired/{device}/telemetry``     yes       workbench   telemetry/inference config (JSON)
``wb/v1/dev/{device}/outbox``            no        device      sync items, zstd (workbench.protocol.codec)
``wb/v1/desired/{device}/ack``           no        workbench   sync items stored: ``{"v", "ranges"}``
``wb/v1/dev/{device}/sync``              yes       device      sync state (backlog, link, budget, twin)
``wb/v1/desired/{device}/sync``          yes       workbench   sync config: link, budget (the twin)
=======================================  ========  ==========  ==================================

Example:
    >>> status_topic("sim-01")
    'wb/v1/dev/sim-01/status'
    >>> parse_device_topic("wb/v1/dev/sim-01/reply/ctl-1")
    ('sim-01', 'reply', 'ctl-1')
"""

from __future__ import annotations

import re

from workbench.errors import ConfigError

ROOT = "wb/v1"
DEVICE_PREFIX = f"{ROOT}/dev"
COMMAND_PREFIX = f"{ROOT}/cmd"
DESIRED_PREFIX = f"{ROOT}/desired"

# Device ids become topic levels, client ids, ACL entries and directory names.
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is valid, else raise :class:`ConfigError`.

    Example:
        >>> check_device_id("pi-kitchen-2")
        'pi-kitchen-2'
    """
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ConfigError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return device_id


def device_topic(device_id: str, *parts: str) -> str:
    """A topic under the device's own prefix."""
    return "/".join((DEVICE_PREFIX, device_id, *parts))


def status_topic(device_id: str) -> str:
    """Retained online/offline state, also the last will."""
    return device_topic(device_id, "status")


def inventory_topic(device_id: str) -> str:
    """Retained inventory (hardware, software, active model)."""
    return device_topic(device_id, "inventory")


def claim_topic(device_id: str) -> str:
    """Where two agents with one device id find each other."""
    return device_topic(device_id, "claim")


def reply_topic(device_id: str, client_id: str) -> str:
    """Where the device answers the workbench client ``client_id``."""
    return device_topic(device_id, "reply", client_id)


def command_topic(device_id: str, command: str) -> str:
    """Where the workbench sends ``command`` to the device."""
    return f"{COMMAND_PREFIX}/{device_id}/{command}"


def parse_device_topic(topic: str) -> tuple[str, str, str]:
    """Split ``wb/v1/dev/{device}/{kind}[/{rest}]`` into ``(device, kind, rest)``.

    Raises :class:`ValueError` for a topic outside the device namespace.
    """
    parts = topic.split("/", 5)
    if len(parts) < 5 or "/".join(parts[:3]) != DEVICE_PREFIX:
        raise ValueError(f"not a device topic: {topic!r}")
    return parts[3], parts[4], parts[5] if len(parts) > 5 else ""


def parse_command_topic(topic: str) -> tuple[str, str]:
    """Split ``wb/v1/cmd/{device}/{command}`` into ``(device, command)``."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != COMMAND_PREFIX:
        raise ValueError(f"not a command topic: {topic!r}")
    return parts[3], parts[4]


def command_filter(device_id: str) -> str:
    """The one filter that receives every command for the device."""
    return f"{COMMAND_PREFIX}/{device_id}/+"


def desired_filter(device_id: str) -> str:
    """The one filter that receives every desired state (and sync acknowledgement) for the device."""
    return f"{DESIRED_PREFIX}/{device_id}/+"


def telemetry_topic(device_id: str) -> str:
    """The name the sync receiver gives a device's telemetry batches (they travel in outbox items)."""
    return device_topic(device_id, "telemetry")


def desired_topic(device_id: str, name: str) -> str:
    """Retained desired state ``name`` the workbench sets for the device."""
    return f"{DESIRED_PREFIX}/{device_id}/{name}"


def outbox_topic(device_id: str) -> str:
    """Where the device's sync sender publishes outbox items."""
    return device_topic(device_id, "outbox")


def sync_ack_topic(device_id: str) -> str:
    """Where the workbench acknowledges stored outbox items (not retained)."""
    return f"{DESIRED_PREFIX}/{device_id}/ack"


def sync_state_topic(device_id: str) -> str:
    """Retained sync state the device reports."""
    return device_topic(device_id, "sync")


SHARE_PREFIX = "$share"
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def shared_filter(group: str, topic_filter: str) -> str:
    """``topic_filter`` as an MQTT shared subscription of ``group``: the broker gives each message to one member.

    Raises :class:`ConfigError` for a group name a broker would misread (``/``, ``+``, ``#``) or an empty one.

    Example:
        >>> shared_filter("hubs", outbox_topic("+"))
        '$share/hubs/wb/v1/dev/+/outbox'
    """
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise ConfigError(f"invalid replica group {group!r}: use 1-64 letters, digits, '.', '_' or '-', starting "
                          "with a letter or digit")
    return f"{SHARE_PREFIX}/{group}/{topic_filter}"


def unshared_filter(topic_filter: str) -> str:
    """The filter that messages of a (possibly shared) subscription match: ``$share/<group>/`` removed.

    Example:
        >>> unshared_filter("$share/hubs/wb/v1/dev/+/outbox"), unshared_filter("wb/v1/dev/+/status")
        ('wb/v1/dev/+/outbox', 'wb/v1/dev/+/status')
    """
    if topic_filter.startswith(SHARE_PREFIX + "/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter
