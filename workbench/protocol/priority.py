"""The four sync priorities, highest first, and their eviction order."""

from __future__ import annotations

from workbench.errors import ConfigError

PRIORITIES = ("critical", "high", "normal", "bulk")
# When the outbox is full these go, oldest first, in this order; critical and high never do.
EVICTABLE = ("bulk", "normal")


def priority_rank(priority: str | int) -> int:
    """The rank of a priority name (0 is critical), or raise :class:`ConfigError` naming the choices.

    Example:
        >>> priority_rank("bulk")
        3
    """
    if isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority < len(PRIORITIES):
        return priority
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES.index(priority)
    raise ConfigError(f"unknown sync priority {priority!r}; choose one of {', '.join(PRIORITIES)}")
