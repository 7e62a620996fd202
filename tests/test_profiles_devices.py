"""Detection from real devices' files (tests/fixtures/devices), and what the inventory offers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
from conftest import REPO, FleetFactory

import workbench
from workbench.profiles import detect_hardware, device_providers, get_profile, match_profile, thermal_zones

DEVICES = Path(__file__).parent / "fixtures" / "devices"

# name: (profile, arch, cores, memory_mb, board, cpu_model, has asimddp, has avx512_vnni, temperature)
EXPECTED: dict[str, tuple[str, str, int, int, str, str, bool, bool, float]] = {
    "raspberry-pi-4": ("raspberry-pi-4", "aarch64", 4, 3791, "Raspberry Pi 4 Model B Rev 1.5", "ARM Cortex-A72",
                       False, False, 48.686),
    "raspberry-pi-5": ("raspberry-pi-5", "aarch64", 4, 8052, "Raspberry Pi 5 Model B Rev 1.0", "ARM Cortex-A76",
                       True, False, 52.65),
    "jetson-orin-nano": ("jetson-orin-nano", "aarch64", 6, 7441, "NVIDIA Jetson Orin Nano Developer Kit",
                         "ARM Cortex-A78AE", True, False, 47.968),
    "intel-nuc": ("intel-nuc", "x86_64", 8, 15728, "Intel(R) Client Systems NUC11TNHi5",
                  "11th Gen Intel(R) Core(TM) i5-1135G7 @ 2.40GHz", False, True, 44.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detect_hardware_reads_board_cpu_memory_and_profile_when_root_is_a_real_device(name: str) -> None:
    profile, arch, cores, memory_mb, board, cpu_model, dot, vnni, temperature = EXPECTED[name]
    hw = detect_hardware(root=DEVICES / name)
    assert hw["detected_profile"] == profile
    assert (hw["arch"], hw["cores"], hw["memory_mb"]) == (arch, cores, memory_mb)
    assert hw["board"] == board and hw["cpu_model"] == cpu_model
    assert ("asimddp" in hw["isa_features"]) is dot
    assert ("avx512_vnni" in hw["isa_features"]) is vnni
    assert hw["temperature_c"] == pytest.approx(temperature)
    # The detected ISA is what the profile promises, so optimize picks the same kernels for both.
    assert get_profile(profile).int8_dot_product is (dot or vnni)


def test_arm_dot_product_is_detected_on_a76_and_not_on_a72() -> None:
    pi4 = detect_hardware(root=DEVICES / "raspberry-pi-4")["isa_features"]
    pi5 = detect_hardware(root=DEVICES / "raspberry-pi-5")["isa_features"]
    assert pi4 == ["neon", "asimd"]
    assert pi5 == ["neon", "asimd", "asimddp", "asimdhp"]


def test_thermal_zones_skip_a_powered_down_sensor_when_it_reads_out_of_range() -> None:
    zones = thermal_zones(DEVICES / "jetson-orin-nano")
    assert "cv0-thermal" not in zones  # -256 °C: the sensor is off
    assert zones["gpu-thermal"] == pytest.approx(46.5) and zones["tj-thermal"] == pytest.approx(48.093)


def test_temperature_prefers_the_package_sensor_when_acpi_zone_comes_first() -> None:
    zones = thermal_zones(DEVICES / "intel-nuc")
    assert list(zones) == ["acpitz", "x86_pkg_temp"]
    assert detect_hardware(root=DEVICES / "intel-nuc")["temperature_c"] == pytest.approx(44.0)


def test_unknown_board_gets_generic_profile_of_its_arch_when_model_is_unrecognised(tmp_path: Path) -> None:
    root = tmp_path / "board"
    shutil.copytree(DEVICES / "raspberry-pi-4", root)
    (root / "proc/device-tree/model").write_text("Pine64 RockPro64 v2.1\x00")
    hw = detect_hardware(root=root)
    assert hw["board"] == "Pine64 RockPro64 v2.1"
    assert hw["detected_profile"] == "generic-arm64"
    assert match_profile({"board": "Raspberry Pi 5 Model B", "arch": "x86_64"}) == "x86-server"


def test_detection_reports_nothing_invented_when_root_has_no_files(tmp_path: Path) -> None:
    hw = detect_hardware(root=tmp_path)
    assert hw["board"] is None and hw["temperature_c"] is None and hw["thermal_zones"] == {}
    assert hw["isa_features"] == [] and hw["memory_mb"] == 0 and hw["cores"] == 1


def test_device_providers_drop_azure_and_keep_only_the_profiles_when_simulated() -> None:
    wheel = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]
    assert device_providers(wheel) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert device_providers(wheel, get_profile("raspberry-pi-4")) == ["CPUExecutionProvider"]
    assert device_providers(wheel, get_profile("jetson-orin-nano")) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "AzureExecutionProvider" not in detect_hardware()["execution_providers"]


def test_inventory_lists_only_providers_the_profile_can_run_when_device_is_a_simulated_pi(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2, profiles=["raspberry-pi-4", "jetson-orin-nano"])
    host = [p for p in onnxruntime.get_available_providers() if p != "AzureExecutionProvider"]
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        pi = fleet["sim-01"].call("inventory")["hardware"]["execution_providers"]
        jetson = fleet["sim-02"].call("inventory")["hardware"]["execution_providers"]
    assert pi == ["CPUExecutionProvider"]
    assert jetson == [p for p in get_profile("jetson-orin-nano").execution_providers if p in host]
    assert "AzureExecutionProvider" not in pi + jetson


def _start_old_agent(broker_url: str, data_dir: Path, version: str) -> subprocess.Popen[str]:
    # A real agent process of an older release: the version is the one thing that differs.
    code = (f"import workbench, workbench._version, sys; "
            f"workbench.__version__ = workbench._version.__version__ = {version!r}; "
            "from workbench.cli.main import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, "agent", "--device-id", "old-01", "--broker", broker_url,
                             "--data-dir", str(data_dir), "--log-level", "WARNING"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_fleet_inventory_flags_an_agent_older_than_the_workbench(fleet_factory: FleetFactory,
                                                                  tmp_path: Path) -> None:
    record = fleet_factory(devices=1)
    old = _start_old_agent(record["broker"]["url"], tmp_path / "old", "0.0.9")
    try:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            deadline = time.monotonic() + 30
            rows: Any = None
            while time.monotonic() < deadline:
                rows = fleet.inventory().set_index("device_id")
                if "old-01" in rows.index and rows.loc["old-01", "agent_version"]:
                    break
                time.sleep(0.1)
            assert rows.loc["old-01", "agent_version"] == "0.0.9"
            # A real (not simulated) agent without --profile takes the one its board matches.
            assert rows.loc["old-01", "profile"] == detect_hardware()["detected_profile"]
            assert bool(rows.loc["old-01", "agent_outdated"]) is True
            assert rows.loc["sim-01", "agent_version"] == workbench.__version__
            assert bool(rows.loc["sim-01", "agent_outdated"]) is False
    finally:
        old.terminate()
        _, err = old.communicate(timeout=30)
    assert old.returncode == 0, err
