"""Hardware profiles: named classes of edge hardware, and detection of the real one.

Example:
    >>> from workbench.profiles import get_profile, list_profiles
    >>> get_profile("raspberry-pi-5").int8_dot_product
    True
"""

from workbench.profiles._detect import (
    NON_DEVICE_PROVIDERS,
    cpu_features,
    detect_hardware,
    device_providers,
    match_profile,
    thermal_zones,
)
from workbench.profiles._profile import INT8_DOT_PRODUCT_FEATURES, HardwareProfile
from workbench.profiles._registry import get_profile, list_profiles, register_profile

__all__ = [
    "INT8_DOT_PRODUCT_FEATURES",
    "NON_DEVICE_PROVIDERS",
    "HardwareProfile",
    "cpu_features",
    "detect_hardware",
    "device_providers",
    "get_profile",
    "list_profiles",
    "match_profile",
    "register_profile",
    "thermal_zones",
]
