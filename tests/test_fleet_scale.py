"""The Fleet API at scale: inventory() of 2,000 devices, FleetPanel's counts, filter and pages, rollouts in waves.

The 2,000 devices are real retained inventory and status messages on a real Mosquitto broker: one real agent's
inventory, published again under 2,000 ids (with varied profiles, models and presence) by one MQTT client, since
2,000 agent processes do not fit a test on this machine. The waves run on a real fleet of 6 agents.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import FleetFactory, require_broker

import workbench
from widgets import FleetPanel, RolloutProgress
from widgets._rollout_progress import render_html as rollout_html
from workbench.deploy import Waves, build_package, load_signing_key
from workbench.deploy._examples import tiny_model
from workbench.errors import ConfigError
from workbench.fleet._fleet import Fleet
from workbench.protocol import schema, topics
from workbench.protocol._mqtt import BrokerAddress
from workbench.sim import down, up

SCALE = 2000
PROFILES = ("raspberry-pi-4", "jetson-orin-nano", "intel-nuc")


def scale_id(i: int) -> str:
    return f"scale-{i:04d}"


def scale_online(i: int) -> bool:
    return i % 10 != 0  # 200 of 2,000 offline


def scale_profile(i: int) -> str:
    return PROFILES[i % 3]


@pytest.fixture(scope="module")
def big_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A one-agent Mosquitto fleet plus 2,000 copies of its agent's inventory under other ids."""
    require_broker("mosquitto")
    run_dir = tmp_path_factory.mktemp("scale") / "fleet"
    record = up(devices=1, broker="mosquitto", run_dir=run_dir, secure=False)
    try:
        address = BrokerAddress.parse(record["broker"]["url"])
        with Fleet(address) as fleet:
            fleet.wait_for(1, timeout=30)
            fleet.wait_until(lambda f: all(d.inventory_data for d in f.devices), timeout=30)
            real = dict(fleet.devices[0].inventory_data)
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scale-publisher")
        publisher.connect(address.host, address.port)
        publisher.loop_start()
        try:
            infos = []
            for i in range(SCALE):
                device = scale_id(i)
                model = {"name": "digits" if i % 2 else "keywords", "version": "1"}
                body = dict(real, device_id=device, profile=scale_profile(i), active_model=model)
                status = {"state": "online" if scale_online(i) else "offline", "instance": f"i-{i}",
                          "reason": None if scale_online(i) else "lost connection"}
                infos.append(publisher.publish(topics.inventory_topic(device), schema.encode(body), qos=1,
                                               retain=True))
                infos.append(publisher.publish(topics.status_topic(device), schema.encode(status), qos=1,
                                               retain=True))
            for info in infos:
                info.wait_for_publish(timeout=30)
        finally:
            publisher.loop_stop()
            publisher.disconnect()
        yield {**record, "address": address}
    finally:
        down(run_dir)


@pytest.fixture
def big(big_fleet: dict[str, Any]) -> Iterator[Fleet]:
    with Fleet(big_fleet["address"]) as fleet:
        online = 1 + sum(scale_online(i) for i in range(SCALE))
        # Retained inventories arrive before statuses (the fleet subscribes to them first): wait for both. Polled,
        # not wait_until(): re-checking 2,000 devices on each of 4,000 messages is quadratic.
        deadline = time.monotonic() + 120
        while not (len(fleet) == SCALE + 1 and all(d.inventory_data for d in fleet.devices)
                   and len(fleet.online()) == online):
            assert time.monotonic() < deadline, f"{len(fleet)} devices, {len(fleet.online())} online after 120 s"
            time.sleep(0.2)
        yield fleet


def test_inventory_has_every_device_within_a_second_when_the_fleet_has_2000(big: Fleet) -> None:
    big.inventory()  # the first call imports pandas
    started = time.thread_time()
    frame = big.inventory(wide=True)
    cpu_s = time.thread_time() - started  # this thread's CPU: the machine's load does not move it
    assert cpu_s < 1.0, f"inventory() of {len(frame)} devices took {cpu_s:.2f} s of CPU"
    rows = frame.set_index("device_id")
    assert len(rows) == SCALE + 1
    assert int(rows["online"].sum()) == 1 + sum(scale_online(i) for i in range(SCALE))
    assert rows.loc[scale_id(7), "profile"] == scale_profile(7)
    assert rows.loc[scale_id(7), "active_model"] == "digits"
    assert rows.loc[scale_id(8), "active_model"] == "keywords"
    assert bool(rows.loc[scale_id(10), "online"]) is False
    assert list(frame.columns) == list(big.devices[0].row())


def test_inventory_shows_a_new_active_model_when_a_device_republishes_its_inventory(big_fleet: dict[str, Any],
                                                                                  big: Fleet) -> None:
    device = scale_id(3)
    before = big.inventory(wide=True).set_index("device_id").loc[device, "active_model"]
    body = dict(big[device].inventory_data, active_model={"name": "digits-int8", "version": "2"})
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scale-republisher")
    address = big_fleet["address"]
    publisher.connect(address.host, address.port)
    publisher.loop_start()
    try:
        publisher.publish(topics.inventory_topic(device), schema.encode(body), qos=1, retain=True).wait_for_publish(10)
        big.wait_until(lambda f: (f[device].active_model or {}).get("name") == "digits-int8", timeout=10)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    after = big.inventory(wide=True).set_index("device_id").loc[device, "active_model"]
    assert (before, after) == ("digits", "digits-int8")


# -- FleetPanel at 2,000 -------------------------------------------------------------------------------


def test_fleet_panel_counts_states_and_pages_when_the_fleet_has_2000(big: Fleet) -> None:
    panel = FleetPanel(big, page_size=50)
    try:
        offline = sum(not scale_online(i) for i in range(SCALE))
        assert panel.counts["offline"] == offline
        assert sum(panel.counts.values()) == SCALE + 1
        assert len(panel.shown_rows) == 50
        assert panel.shown_rows[0]["device_id"] == scale_id(0)
        markup = panel.children[0].value
        assert "rows 1-50 of 2,001" in markup
        assert markup.count("data-device=") == 50
        panel.next_page()
        assert panel.shown_rows[0]["device_id"] == scale_id(50)
        assert "rows 51-100 of 2,001" in panel.children[0].value
        panel.last_page()
        assert "rows 2,001-2,001 of 2,001" in panel.children[0].value
        panel.next_page()  # past the end: stays on the last page
        assert "rows 2,001-2,001 of 2,001" in panel.children[0].value
        panel.previous_page()
        assert panel.shown_rows[0]["device_id"] == scale_id(1950)
    finally:
        panel.close()


def test_fleet_panel_filter_matches_id_profile_model_and_state_when_typed(big: Fleet) -> None:
    panel = FleetPanel(big, page_size=50)
    try:
        panel.filter_text = "jetson"
        matching = sum(scale_profile(i) == "jetson-orin-nano" for i in range(SCALE))
        assert panel.matching == matching
        assert all(row["profile"] == "jetson-orin-nano" for row in panel.shown_rows)
        assert f"rows 1-50 of {matching:,} matching" in panel.children[0].value
        panel.filter_text = "offline"
        assert panel.matching == sum(not scale_online(i) for i in range(SCALE))
        assert all(row["state"] == "offline" for row in panel.shown_rows)
        panel.filter_text = "scale-19"
        assert panel.matching == 100  # scale-1900 to scale-1999
        panel.filter_text = "keywords offline"  # words must all match
        assert panel.matching == sum(i % 2 == 0 and not scale_online(i) for i in range(SCALE))
        panel.filter_text = "no-such-thing"
        assert panel.matching == 0
        assert "no devices match" in panel.children[0].value
    finally:
        panel.close()


def test_fleet_panel_refuses_a_page_size_when_it_is_not_positive(big: Fleet) -> None:
    with pytest.raises(ConfigError, match="page_size"):
        FleetPanel(big, page_size=0)


# -- rollouts in waves ---------------------------------------------------------------------------------


def test_waves_plan_sizes_and_percentages_when_given() -> None:
    devices = [f"d{i}" for i in range(7)]
    assert [len(w) for w in Waves(size=3).plan(devices)] == [3, 3, 1]
    assert [len(w) for w in Waves(percent=[1, 50]).plan(devices)] == [1, 3, 3]
    assert Waves(size=10).plan([]) == []


@pytest.mark.parametrize("options", [{}, {"size": 2, "percent": [50]}, {"size": 0}, {"size": True},
                                     {"percent": [50, 10]}, {"percent": [0]}, {"percent": [150]}, {"percent": []}])
def test_waves_refuses_options_when_they_do_not_define_waves(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="Waves"):
        Waves(**options)


@pytest.mark.usefixtures("keys_env")
def test_waves_report_per_wave_figures_when_six_devices_roll_out_in_waves_of_two(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet_factory: FleetFactory) -> None:
    monkeypatch.setenv("WORKBENCH_ARTIFACTS", str(tmp_path / "artifacts"))
    record = fleet_factory(devices=6, keepalive=5)
    package = build_package(tiny_model(tmp_path / "m.onnx", seed=5), tmp_path / "pkg", load_signing_key(create=True),
                            version="waves")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(6, timeout=60)
        fleet.wait_until(lambda f: all(d.inventory_data for d in f.online()), timeout=30)
        rollout = fleet.deploy(package.path, strategy=Waves(size=2, soak_s=0.2),
                               gates=[workbench.gate("error_rate", "<=", 0.0)])
        progress = RolloutProgress(rollout)
        report = rollout.wait(timeout=180)
        progress.refresh()
    assert report.status == "succeeded", str(report)
    assert [len(w["devices"]) for w in report.waves] == [2, 2, 2]
    for wave in report.waves:
        assert (wave["devices_n"], wave["activated"], wave["failed"], wave["rolled_back"]) == (2, 2, 0, 0)
        assert 0 < wave["activate_p50_s"] <= wave["activate_p95_s"] <= wave["seconds"] <= wave["duration_s"]
    summary = rollout.summary()
    assert summary["counts"] == {"active": 6}
    assert [w["activated"] for w in summary["waves"]] == [2, 2, 2]
    assert list(report.wave_frame()["activated"]) == [2, 2, 2]
    markup = progress.children[0].value
    assert all(f"data-wave='{n}'" in markup for n in (1, 2, 3))
    assert "6 devices: 6 active" in markup


@pytest.mark.usefixtures("keys_env")
def test_waves_count_rolled_back_devices_per_wave_when_a_gate_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet_factory: FleetFactory) -> None:
    monkeypatch.setenv("WORKBENCH_ARTIFACTS", str(tmp_path / "artifacts"))
    record = fleet_factory(devices=6, keepalive=5)
    key = load_signing_key(create=True)
    before = build_package(tiny_model(tmp_path / "a.onnx", seed=6), tmp_path / "a", key, version="before")
    package = build_package(tiny_model(tmp_path / "m.onnx", seed=7), tmp_path / "pkg", key, version="gated")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(6, timeout=60)
        fleet.wait_until(lambda f: all(d.inventory_data for d in f.online()), timeout=30)
        # Something to roll back to: a device with no previous package keeps the new one.
        assert fleet.deploy(before.path).wait(timeout=120).status == "succeeded"
        # No device answers in under a nanosecond: the gate fails on the first wave's soak.
        rollout = fleet.deploy(package.path, strategy=Waves(size=2, soak_s=0.2),
                               gates=[workbench.gate("p95_latency_ms", "<=", 1e-6)])
        report = rollout.wait(timeout=180)
    assert report.status == "aborted", str(report)
    assert len(report.waves) == 1
    wave = report.waves[0]
    assert (wave["devices_n"], wave["activated"], wave["rolled_back"]) == (2, 2, 2)
    assert report.counts == {"rolled_back": 2, "not_started": 4}
    markup = rollout_html(rollout)
    assert "<td>2</td><td>2</td><td>0</td><td>2</td>" in markup  # devices, activated, failed, rolled back


@pytest.mark.usefixtures("keys_env")
def test_waves_run_in_the_hub_with_per_wave_figures_when_the_fleet_has_a_hub(
        tmp_path: Path, fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2, hub=True)
    package = build_package(tiny_model(tmp_path / "m.onnx", seed=8), tmp_path / "pkg", load_signing_key(create=True),
                            version="hub-waves")
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=60)
        fleet.wait_until(lambda f: all(d.inventory_data for d in f.online()), timeout=30)
        rollout = fleet.deploy(package.path, strategy=Waves(size=1, soak_s=0.0))
        assert type(rollout).__name__ == "HubRollout"
        progress = RolloutProgress(rollout)
        report = rollout.wait(timeout=180)
        rollout.refresh()
        progress.refresh()
        summary = rollout.summary()
    assert report.status == "succeeded", str(report)
    assert [(w["devices_n"], w["activated"]) for w in report.waves] == [(1, 1), (1, 1)]
    assert summary["counts"] == {"active": 2}
    assert [w["activated"] for w in summary["waves"]] == [1, 1]
    markup = progress.children[0].value
    assert "data-wave='2'" in markup and "2 devices: 2 active" in markup
