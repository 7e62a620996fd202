"""The fleet hub: one receiver and store, the same answers for every client, nothing lost when it is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from conftest import REPO, FleetFactory, run_cli

import workbench
from workbench.errors import ConfigError, HubAuthError, HubError, HubUnreachableError
from workbench.fleet import Fleet
from workbench.hub import Hub, HubClient, StoreURL, read_token
from workbench.hub._api import ApiServer
from workbench.sim import _procs
from workbench.telemetry._client import Telemetry

DEVICE = "sim-01"


# -- the store URL --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "backend", "where"), [
    ("duckdb:///var/lib/workbench/fleet.duckdb", "duckdb", "/var/lib/workbench/fleet.duckdb"),
    ("duckdb://rel/fleet.duckdb", "duckdb", "rel/fleet.duckdb"),
    ("/srv/fleet.duckdb", "duckdb", "/srv/fleet.duckdb"),
    ("postgresql://wb@db/workbench", "postgres", "postgresql://wb@db/workbench"),
])
def test_store_url_reads_each_form_when_given_to_the_hub(url: str, backend: str, where: str) -> None:
    store = StoreURL.parse(url)
    assert store.backend == backend
    assert (str(store.path) if backend == "duckdb" else store.dsn) == where


@pytest.mark.parametrize(("url", "words"), [("duckdb://:memory:", "keeps nothing"), ("redis://x", "not a store"),
                                            ("", "needs a store")])
def test_store_url_names_the_forms_when_it_cannot_be_used(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        StoreURL.parse(url)


def test_store_url_hides_the_password_when_printed() -> None:
    assert str(StoreURL.parse("postgresql://wb:s3cret@db:5432/workbench")) == "postgresql://wb:***@db:5432/workbench"


# -- the API of a hub in this process, over real HTTP on loopback ----------------------------------------------


@pytest.fixture
def local_hub(tmp_path: Path) -> Iterator[Hub]:
    hub = Hub(None, f"duckdb://{tmp_path / 'fleet.duckdb'}")
    yield hub
    hub.close()


@pytest.fixture
def api(local_hub: Hub) -> Iterator[str]:
    """The hub's API on a free loopback port, token ``t``."""
    server = ApiServer(local_hub, "t").start()
    yield server.url
    server.stop()


def test_hub_api_refuses_a_missing_or_wrong_token_with_401_naming_what_to_send(api: str) -> None:
    missing = httpx.get(f"{api}/v1/telemetry/stats")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "no token" in missing.json()["error"]
    wrong = httpx.get(f"{api}/v1/telemetry/stats", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong token" in wrong.json()["error"]
    with HubClient(api, token="nope") as client, pytest.raises(HubAuthError, match="wrong token"):
        client.stats()
    assert httpx.get(f"{api}/healthz").json()["status"] == "ok"  # probes need no token


@pytest.mark.parametrize(("params", "words"), [
    ([], "needs metric=NAME"),
    ([("metric", "cpu_percent"), ("every", "nan")], "finite"),
    ([("metric", "cpu_percent"), ("every", "-1")], "positive"),
    ([("metric", "cpu_percent"), ("since", "yesterday")], "not a number"),
    ([("metric", "cpu_percent"), ("agg", "median; DROP TABLE points")], "is not one of"),
    ([("metric", "x" * 300)], "at most"),
])
def test_hub_api_answers_400_naming_the_parameter_when_a_query_is_malformed(
        api: str, params: list[tuple[str, str]], words: str) -> None:
    response = httpx.get(f"{api}/v1/telemetry/query", params=params, headers={"Authorization": "Bearer t"})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_hub_api_keeps_alert_rules_when_the_hub_restarts(tmp_path: Path) -> None:
    store = f"duckdb://{tmp_path / 'fleet.duckdb'}"
    hub = Hub(None, store)
    server = ApiServer(hub, "t").start()
    try:
        with HubClient(server.url, token="t") as client:
            client.add_rule("slow", "latency_p95_ms", above=50.0, for_points=3)
            with pytest.raises(ConfigError, match="needs above="):
                client.add_rule("nothing", "latency_p95_ms")
    finally:
        server.stop()
        hub.close()
    again = Hub(None, store)
    try:
        assert [(r.name, r.above, r.for_points) for r in again.rules()] == [("slow", 50.0, 3)]
    finally:
        again.close()


def test_second_hub_on_the_same_store_is_refused_naming_the_first(local_hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(HubError, match=rf"another hub \(pid {os.getpid()}\) already owns the store"):
        Hub(None, f"duckdb://{tmp_path / 'fleet.duckdb'}")


def test_second_hub_on_the_same_postgres_store_is_refused(postgres_dsn: str, tmp_path: Path) -> None:
    first = Hub(None, postgres_dsn, data_dir=tmp_path / "a")
    try:
        with pytest.raises(HubError, match="another hub already owns the store"):
            Hub(None, postgres_dsn, data_dir=tmp_path / "b")
    finally:
        first.close()


def test_hub_client_names_the_address_when_no_hub_answers() -> None:
    port = _procs.free_port("127.0.0.1")
    with HubClient(f"http://127.0.0.1:{port}", token="t", timeout=2) as client, \
            pytest.raises(HubUnreachableError, match=rf"no hub answered at http://127.0.0.1:{port}"):
        client.health()


def test_hub_client_names_the_token_file_when_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(HubAuthError, match=r"cannot read the hub token .*missing\.token"):
        read_token(tmp_path / "missing.token")


# -- a real fleet with its hub ------------------------------------------------------------------------------


def _query_elsewhere(record: dict[str, Any], since: float, until: float) -> str:
    """The window's points as CSV, asked by another Python process (another kernel, in effect)."""
    code = (f"import json, workbench\nfrom workbench.hub import HubClient\n"
            f"record = json.load(open({str(Path(record['run_dir']) / 'fleet.json')!r}))\n"
            f"with HubClient.for_record(record) as hub:\n"
            f"    print(hub.query(['cpu_percent', 'memory_mb'], since={since!r}, until={until!r}).to_csv(index=False))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_two_clients_and_the_cli_get_identical_history_when_the_fleet_has_a_hub(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2, keepalive=5, hub=True)
    assert oct(Path(record["hub"]["token_file"]).stat().st_mode & 0o777) == "0o600"
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        since = time.time() - 60
        deadline = time.monotonic() + 30
        # Host metrics every second from each device: wait for a few that are already some seconds old.
        while len(fleet.hub.query("cpu_percent", since=since, until=time.time() - 2)) < 4:
            assert time.monotonic() < deadline, "the hub stored too few host metrics within 30 s"
            time.sleep(0.5)
        until = time.time() - 2
        for _ in range(5):
            mine = fleet.hub.query(["cpu_percent", "memory_mb"], since=since, until=until).to_csv(index=False).strip()
            other = _query_elsewhere(record, since, until)
            cli = run_cli("telemetry", "query", "cpu_percent", "memory_mb", "--run-dir", record["run_dir"],
                          "--since", repr(since), "--until", repr(until), "--csv")
            again = fleet.hub.query(["cpu_percent", "memory_mb"], since=since, until=until).to_csv(index=False).strip()
            if mine == again:  # a straggler from before `until` arrived meanwhile: ask again
                break
        assert cli.returncode == 0, cli.stderr
        assert mine.count("\n") >= 2
        assert mine == other == cli.stdout.strip()
        # fleet.telemetry reads the hub; a receiver of this process's own would acknowledge against it.
        assert fleet.telemetry.query(["cpu_percent", "memory_mb"], since=since, until=until).to_csv(
            index=False).strip() == mine
        with pytest.raises(HubError, match="this fleet runs a hub"):
            Telemetry(fleet)


def test_fleet_telemetry_shows_history_live_points_and_alerts_from_the_hub_when_the_fleet_has_one(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=2, keepalive=5, hub=True)
    with workbench.connect(run_dir=record["run_dir"]) as first:
        first.wait_for(2, timeout=30)
        telemetry = first.telemetry
        telemetry.add_rule("any-synthetic", "synthetic_3", above=-1e9, cooldown_s=3600)
        seen: list[tuple[str, str, int]] = []
        unsubscribe = telemetry.subscribe(["synthetic_0"], lambda d, m, ts, v: seen.append((d, m, len(ts))))
        telemetry.configure("all", synthetic_points_per_s=200, publish_interval_s=0.2)
        telemetry.wait_for("synthetic_0", devices=["sim-01", "sim-02"], count=20, timeout=30)
        deadline = time.monotonic() + 20
        while {d for d, _, _ in seen} != {"sim-01", "sim-02"}:
            assert time.monotonic() < deadline, f"the live stream brought {seen[:5]}"
            time.sleep(0.2)
        unsubscribe()
        assert all(m == "synthetic_0" and n > 0 for _, m, n in seen)
        telemetry.configure("all", synthetic_points_per_s=0)
        health = telemetry.health().set_index("device_id")
        assert health.loc["sim-01", "online"] and health["cpu_percent"].notna().all()
        assert set(telemetry.stats()["device_id"]) == {"sim-01", "sim-02"}
        assert [r.name for r in telemetry.rules()] == ["any-synthetic"]
        deadline = time.monotonic() + 20
        while set(telemetry.alerts()["device_id"]) != {"sim-01", "sim-02"}:
            assert time.monotonic() < deadline, telemetry.alerts()
            time.sleep(0.3)
        stored = telemetry.query("synthetic_0", since="5m")
    # A viewer that connects later sees the history at once, from the hub's store.
    with workbench.connect(run_dir=record["run_dir"]) as later:
        history = later.telemetry.query("synthetic_0", since="5m")
        assert len(history) >= len(stored) > 40
        assert set(later.telemetry.alerts()["rule"]) == {"any-synthetic"}


def test_hub_serves_prometheus_metrics_and_health_without_a_token(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1, keepalive=5, hub=True)
    url = record["hub"]["url"]
    deadline = time.monotonic() + 30
    while True:
        body = httpx.get(f"{url}/metrics", timeout=5).text
        if f'workbench_hub_points_total{{device="{DEVICE}"}}' in body:
            break
        assert time.monotonic() < deadline, body[-1500:]
        time.sleep(0.5)
    health = httpx.get(f"{url}/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["devices"] == 1 and health["store"].endswith("fleet.duckdb")


def _settled(fleet: Fleet, timeout: float = 60.0) -> dict[str, Any]:
    """The device's sync status once its outbox is empty and stays so: every item produced is acknowledged."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            status = fleet.call(DEVICE, "sync.status", timeout=15)
            if status["outbox_bytes"] == 0:
                time.sleep(1.0)
                again = fleet.call(DEVICE, "sync.status", timeout=15)
                if again["outbox_bytes"] == 0 and again["counters"]["produced"] == status["counters"]["produced"]:
                    return again
        except workbench.WorkbenchError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the outbox did not drain: {status}")


def test_hub_killed_mid_ingestion_loses_and_duplicates_no_batch_when_restarted(fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1, keepalive=5, hub=True)
    hub = record["hub"]
    spawned: list[dict[str, Any]] = []
    try:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            fleet.wait_for(1, timeout=30)
            fleet.call(DEVICE, "telemetry.configure", {"synthetic_points_per_s": 5000, "publish_interval_s": 0.1})
            time.sleep(2.0)
            os.kill(hub["pid"], signal.SIGKILL)  # mid-insert, mid-ack: it gets no say
            time.sleep(1.5)  # the device keeps producing into its outbox meanwhile
            spawned.append(_procs.spawn(hub["argv"], Path(hub["log"])))
            assert _procs.wait_port("127.0.0.1", hub["port"], timeout=30)
            time.sleep(2.0)
            fleet.call(DEVICE, "telemetry.configure", {"enabled": False}, timeout=15)
            status = _settled(fleet)
    finally:
        _procs.stop(spawned)  # the store is read below, by this process alone
    _assert_every_batch_stored_once(status, record, at_least=5000)  # the stream ran across the kill


def _assert_every_batch_stored_once(status: dict[str, Any], record: dict[str, Any], *, at_least: int) -> None:
    """Every batch the device's outbox took is in the hub's store once, with all its points (the hub is stopped)."""
    produced = status["counters"]["produced"]
    assert status["counters"].get("dropped_normal", 0) == 0
    with duckdb.connect(str(Path(record["run_dir"]) / "hub" / "fleet.duckdb"), read_only=True) as con:
        batches = con.execute("SELECT seq, n FROM batches").fetchall()
        per_seq = dict(con.execute("SELECT seq, count(*) FROM points GROUP BY seq").fetchall())
        synthetic = con.execute("SELECT count(*) FROM points p JOIN metric_names m ON m.id = p.metric "
                                "WHERE m.name LIKE 'synthetic_%'").fetchall()[0][0]
    seqs = [int(seq) for seq, _ in batches]
    assert len(seqs) == len(set(seqs)) == produced  # every batch the outbox took, stored once
    assert {int(seq): int(n) for seq, n in batches} == {int(s): int(c) for s, c in per_seq.items()}
    assert sorted(seq & 0xFFFFFFFF for seq in seqs) == list(range(1, produced + 1))  # none missing
    assert synthetic > at_least


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_hub_stores_every_batch_once_when_the_broker_restarts_under_it(fleet_factory: FleetFactory,
                                                                      broker: str) -> None:
    record = fleet_factory(devices=1, keepalive=2, hub=True, broker=broker)
    restarted: list[dict[str, Any]] = []
    try:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            fleet.wait_for(1, timeout=30)
            fleet.call(DEVICE, "telemetry.configure", {"synthetic_points_per_s": 2000, "publish_interval_s": 0.1})
            time.sleep(2.0)
            _procs.stop([record["broker"]])
            time.sleep(2.0)  # the device keeps producing into its outbox; the hub's connection is down
            restarted.append(_procs.spawn(record["broker"]["argv"], Path(record["broker"]["log"])))
            assert _procs.wait_port("127.0.0.1", record["broker"]["port"], timeout=20)
            restarted_at = time.time()
            # The retained "online" may be the one from before the restart: wait for the device's own re-announcement.
            fleet.wait_until(lambda f: f[DEVICE].online and (f[DEVICE].last_seen or 0) > restarted_at, timeout=60)
            time.sleep(2.0)
            # A command sent while the device is still subscribing again is lost (commands are not queued): retry.
            deadline = time.monotonic() + 60
            while True:
                try:
                    fleet.call(DEVICE, "telemetry.configure", {"enabled": False}, timeout=5)
                    break
                except workbench.CommandTimeoutError:
                    assert time.monotonic() < deadline, "the device never answered after the broker restarted"
            status = _settled(fleet)  # drains only if the hub reconnected, received and acknowledged
        health = httpx.get(f"{record['hub']['url']}/healthz", timeout=5).json()
        assert health["status"] == "ok"
        _procs.stop([record["hub"]])  # the store is read below, by this process alone
    finally:
        _procs.stop(restarted)
    _assert_every_batch_stored_once(status, record, at_least=2000)


def test_hub_cli_exits_naming_the_holder_when_a_second_hub_starts_on_a_fleets_store(
        fleet_factory: FleetFactory) -> None:
    record = fleet_factory(devices=1, keepalive=5, hub=True)
    hub = record["hub"]
    result = run_cli("hub", "--broker", record["broker"]["url"], "--store", hub["store"], "--port", "0",
                     "--token-file", hub["token_file"])
    assert result.returncode == 1
    assert f"another hub (pid {hub['pid']}) already owns the store" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(httpx.get(f"{hub['url']}/healthz", timeout=5).text)["status"] == "ok"  # the first keeps going


# -- rollouts run by the hub -------------------------------------------------------------------------------


def _packages(tmp_path: Path) -> tuple[Path, Path]:
    from workbench.deploy import build_package, load_signing_key
    from workbench.deploy._examples import tiny_model

    key = load_signing_key(None, create=True)
    return tuple(build_package(tiny_model(tmp_path / f"m{seed}.onnx", seed=seed, features=64, classes=10),
                               tmp_path / f"pkg-v{seed}", key, name="digits", version=f"v{seed}").path
                 for seed in (1, 2))  # type: ignore[return-value]


def _versions(fleet: Fleet) -> dict[str, str | None]:
    return {d.device_id: (d.active_model or {}).get("version") for d in fleet.devices}


@pytest.mark.usefixtures("keys_env")
def test_hub_rollout_completes_and_a_new_client_sees_its_report_when_the_client_closes_mid_rollout(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=3, keepalive=5, hub=True)
    _, v2 = _packages(tmp_path)
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(3, timeout=30)
        rollout = fleet.deploy(v2, strategy=workbench.Canary(first=1, waves=[1.0], soak_s=2),
                               gates=[workbench.gate("error_rate", "<=", 0.01)])
        rollout_id = rollout.id
        rollout.close()
    # The notebook that started it is gone; the hub goes on, and another client follows and reports it.
    with workbench.connect(run_dir=record["run_dir"]) as later:
        report = later.rollout(rollout_id).wait(timeout=120)
        assert report.status == "succeeded" and report.counts == {"active": 3}, str(report)
        assert [w["devices"] for w in report.waves] == [["sim-01"], ["sim-02", "sim-03"]]
        later.wait_until(lambda f: set(_versions(f).values()) == {"v2"}, timeout=30)
        listed = later.rollouts()
        assert listed.loc[listed["rollout_id"] == rollout_id, "status"].tolist() == ["succeeded"]
    # The CLI follows the same hub: the list, and one rollout with its waves and devices.
    cli = run_cli("rollouts", "--run-dir", record["run_dir"])
    assert cli.returncode == 0 and rollout_id in cli.stdout and "succeeded" in cli.stdout, cli.stderr
    shown = run_cli("rollouts", rollout_id, "--wait", "60", "--run-dir", record["run_dir"])
    assert shown.returncode == 0, shown.stderr
    assert f"rollout {rollout_id}: digits v2, Canary, succeeded" in shown.stdout
    assert "wave 1: sim-02, sim-03" in shown.stdout and "sim-03: active" in shown.stdout
    missing = run_cli("rollouts", "deadbeef", "--run-dir", record["run_dir"])
    assert missing.returncode != 0 and "no rollout deadbeef in this hub" in missing.stderr


@pytest.mark.usefixtures("keys_env")
def test_hub_killed_mid_canary_sends_the_canary_back_and_records_the_rollout_aborted_when_restarted(
        fleet_factory: FleetFactory, tmp_path: Path) -> None:
    record = fleet_factory(devices=3, keepalive=5, hub=True)
    hub = record["hub"]
    v1, v2 = _packages(tmp_path)
    spawned: list[dict[str, Any]] = []
    try:
        with workbench.connect(run_dir=record["run_dir"]) as fleet:
            fleet.wait_for(3, timeout=30)
            assert fleet.deploy(v1).wait(timeout=120).status == "succeeded"
            rollout = fleet.deploy(v2, strategy=workbench.Canary(first=1, waves=[1.0], soak_s=60),
                                   gates=[workbench.gate("error_rate", "<=", 0.01)])
            deadline = time.monotonic() + 60
            while not any(r["device_id"] == "sim-01" and r["state"] == "active" for r in rollout.rows()):
                assert time.monotonic() < deadline, rollout.rows()
                time.sleep(0.2)
            os.kill(hub["pid"], signal.SIGKILL)  # mid-soak: the canary runs v2, the others still v1
            time.sleep(1.0)
            spawned.append(_procs.spawn(hub["argv"], Path(hub["log"])))
            assert _procs.wait_port("127.0.0.1", hub["port"], timeout=30)
            report = rollout.wait(timeout=120)  # the same handle follows the restarted hub
            assert report.status == "aborted" and "the hub stopped during this rollout" in str(report.reason)
            rows = {row["device_id"]: row["state"] for row in report.devices}
            assert rows["sim-01"] == "rolled_back", rows
            fleet.wait_until(lambda f: _versions(f) == {"sim-01": "v1", "sim-02": "v1", "sim-03": "v1"}, timeout=30)
            assert all(d.active_model for d in fleet.devices)  # every device serves a verified model
    finally:
        _procs.stop(spawned)
