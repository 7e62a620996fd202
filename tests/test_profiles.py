"""Hardware profiles and the limits a simulated device takes from them."""

from __future__ import annotations

import os

import pytest

from workbench.agent import DeviceLimits
from workbench.errors import ResourceLimitError, UnknownProfileError
from workbench.profiles import HardwareProfile, detect_hardware, get_profile, list_profiles, register_profile

REQUIRED = ["raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "intel-nuc", "x86-server", "generic-arm64"]


@pytest.mark.parametrize("name", REQUIRED)
def test_profile_declares_hardware_when_registered(name: str) -> None:
    profile = get_profile(name)
    assert profile.cores >= 1 and profile.memory_mb >= 1024
    assert profile.execution_providers[-1] == "CPUExecutionProvider"
    assert "fp32" in profile.precisions
    assert profile.to_dict()["name"] == name


def test_int8_dot_product_follows_isa_features() -> None:
    assert get_profile("raspberry-pi-5").int8_dot_product  # asimddp
    assert not get_profile("raspberry-pi-4").int8_dot_product  # Cortex-A72: no dot product
    assert get_profile("intel-nuc").int8_dot_product  # avx512_vnni


def test_get_profile_raises_naming_known_profiles_when_name_is_unknown() -> None:
    with pytest.raises(UnknownProfileError, match="raspberry-pi-4"):
        get_profile("raspberry-pi-9")


def test_register_profile_refuses_silent_replacement() -> None:
    profile = HardwareProfile("test-gw", "test gateway", "x86_64", 2, 2048)
    register_profile(profile, replace=True)
    with pytest.raises(ValueError, match="already registered"):
        register_profile(profile)
    assert profile in list_profiles()


def test_limits_cap_threads_at_profile_and_host_cores() -> None:
    host = os.cpu_count() or 1
    assert DeviceLimits.for_profile(get_profile("x86-server")).threads == min(16, host)
    assert DeviceLimits.for_profile(HardwareProfile("one", "1 core", "x86_64", 1, 512)).threads == 1
    options = DeviceLimits(threads=1, memory_mb=256).session_options()
    assert options.intra_op_num_threads == 1


def test_limits_raise_resource_limit_error_when_memory_does_not_fit() -> None:
    limits = DeviceLimits(threads=1, memory_mb=256)
    limits.check_memory(255, "small model")
    with pytest.raises(ResourceLimitError, match="256 MB"):
        limits.check_memory(300, "big model")


def test_detect_hardware_reports_this_host() -> None:
    hw = detect_hardware()
    assert hw["cores"] == os.cpu_count()
    assert hw["arch"] == os.uname().machine
    assert "CPUExecutionProvider" in hw["execution_providers"]
    assert hw["memory_mb"] > 0 and hw["disk_free_mb"] >= 0
