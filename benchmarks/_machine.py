"""What every benchmark prints beside its figures: the CPU it ran on and how busy the machine was.

Machines of this class differ (some have AVX512-VNNI, some only AVX2), and the machine is often shared,
so no figure is shown without both.
"""

from __future__ import annotations

import os

from workbench.profiles import cpu_features, detect_hardware


def cpu_flags() -> str:
    """The CPU's model, cores and ISA flags, as the profiles' detection reads them (VNNI or AVX2 only).

    Example:
        >>> "cores; flags:" in cpu_flags()
        True
    """
    hardware = detect_hardware("/")
    return (f"{hardware.get('cpu_model') or 'unknown CPU'}; {os.cpu_count()} cores; "
            f"flags: {' '.join(cpu_features()) or 'none'}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them.

    Example:
        >>> len(load_average().split())
        3
    """
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
