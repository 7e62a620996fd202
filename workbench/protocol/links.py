"""Link profiles: the bandwidth, latency, loss and outages a device's uplink has.

=============  ==============  ==========  ======  ==================================
profile        bandwidth       latency     loss    outages
=============  ==============  ==========  ======  ==================================
lan            100 Mbit/s      1 ms        0 %     none
wifi-flaky     8 Mbit/s        20 ms       3 %     0.5 s down every 10 s
lte            4 Mbit/s        60 ms       0.5 %   none
satellite      0.5 Mbit/s      600 ms      1 %     none
offline        0               -           100 %   always
=============  ==============  ==========  ======  ==================================

The numbers are typical figures for each kind of link, chosen for emulation; they are
not measurements of any particular network. Custom links take the same fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from workbench.errors import ConfigError


@dataclass(frozen=True)
class LinkProfile:
    """One link: ``bandwidth_bps`` (bits/s; 0 means no link), one-way ``latency_ms``, ``loss`` (0..1).

    ``outage_every_s``/``outage_s`` put the link down for ``outage_s`` seconds every
    ``outage_every_s`` seconds (0 disables).

    Example:
        >>> LinkProfile("custom", bandwidth_bps=1e6, latency_ms=50).bytes_per_s
        125000.0
    """

    name: str
    bandwidth_bps: float
    latency_ms: float = 0.0
    loss: float = 0.0
    outage_every_s: float = 0.0
    outage_s: float = 0.0

    def __post_init__(self) -> None:
        checks = [("bandwidth_bps", self.bandwidth_bps, 0.0, 1e11), ("latency_ms", self.latency_ms, 0.0, 60_000.0),
                  ("loss", self.loss, 0.0, 1.0), ("outage_every_s", self.outage_every_s, 0.0, 86_400.0),
                  ("outage_s", self.outage_s, 0.0, 86_400.0)]
        for field, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise ConfigError(f"link {field} must be a number from {low:g} to {high:g}, got {value!r}")
        if self.outage_s and self.outage_s >= self.outage_every_s:
            raise ConfigError("link outage_s must be shorter than outage_every_s (or set both to 0)")

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_bps / 8.0

    @property
    def offline(self) -> bool:
        return self.bandwidth_bps <= 0 or self.loss >= 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LINKS: dict[str, LinkProfile] = {
    "lan": LinkProfile("lan", 100e6, 1.0),
    "wifi-flaky": LinkProfile("wifi-flaky", 8e6, 20.0, 0.03, outage_every_s=10.0, outage_s=0.5),
    "lte": LinkProfile("lte", 4e6, 60.0, 0.005),
    "satellite": LinkProfile("satellite", 0.5e6, 600.0, 0.01),
    "offline": LinkProfile("offline", 0.0, 0.0, 1.0),
}


def link_profile(link: str | LinkProfile | dict[str, Any] | None = None, **numbers: Any) -> LinkProfile:
    """A link by profile name, or custom numbers (``bandwidth_bps``, ``latency_ms``, ``loss``, outages).

    Numbers given with a name override that profile's.

    Example:
        >>> link_profile("lte").latency_ms
        60.0
        >>> link_profile(bandwidth_bps=2e6, latency_ms=30).name
        'custom'
    """
    if isinstance(link, LinkProfile):
        base = link
    elif isinstance(link, dict):
        return link_profile(None, **{**link, **numbers})
    elif link is None:
        if "bandwidth_bps" not in numbers:
            raise ConfigError(f"a custom link needs bandwidth_bps (bits/s); or name a profile: {', '.join(LINKS)}")
        base = LinkProfile("custom", float(numbers["bandwidth_bps"]))
    elif link in LINKS:
        base = LINKS[link]
    else:
        raise ConfigError(f"unknown link profile {link!r}; choose one of {', '.join(LINKS)} or give bandwidth_bps")
    numbers.pop("name", None)
    unknown = set(numbers) - {"bandwidth_bps", "latency_ms", "loss", "outage_every_s", "outage_s"}
    if unknown:
        raise ConfigError(f"unknown link settings {', '.join(sorted(unknown))}; use bandwidth_bps, latency_ms, loss, "
                          "outage_every_s, outage_s")
    if not numbers:
        return base
    name = "custom" if link is None else f"{base.name}*"
    return LinkProfile(**{**asdict(base), **numbers, "name": name})
