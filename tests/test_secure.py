"""`workbench up`'s secure default: TLS with a generated CA, per-device credentials and ACLs, on both brokers;
`--insecure` as the explicit opt-out, on loopback only; services on loopback unless asked."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import BROKERS, require_broker, run_cli

import workbench
from workbench.errors import AuthenticationError, BrokerUnreachableError, ConfigError
from workbench.protocol._mqtt import BrokerAddress, connect_blocking, make_client, new_client_id
from workbench.sim import RunDir, down, up
from workbench.sim._security import prepare_secure

# Once a control message sent after a forbidden one has arrived, how much longer to wait for a leak.
_LEAK_GRACE_S = 0.5


@pytest.fixture(scope="module", params=BROKERS)
def secure_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 2-device fleet per broker as `up` starts it by default, shared by the read-only tests of this module."""
    require_broker(request.param)
    run_dir = tmp_path_factory.mktemp(f"secure-{request.param}")
    record = up(devices=2, broker=request.param, run_dir=run_dir, keepalive=5)
    yield record
    down(run_dir)


class Probe:
    """A raw MQTT client with some fleet user's credentials, recording what it receives."""

    def __init__(self, record: dict[str, Any], username: str | None, password: str | None) -> None:
        self.address = BrokerAddress.parse(record["broker"]["url"], username=username, password=password,
                                           ca_file=record["secure"]["ca_file"])
        self.client = make_client(self.address, new_client_id("probe"))
        self.received: list[str] = []
        self.payloads: list[tuple[str, bytes]] = []
        self._arrived = threading.Condition()
        self.client.on_message = self._on_message

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._arrived:
            self.received.append(message.topic)
            self.payloads.append((message.topic, bytes(message.payload)))
            self._arrived.notify_all()

    def __enter__(self) -> Probe:
        connect_blocking(self.client, self.address, keepalive=10, timeout=10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # Break the client -> bound method -> probe cycle, so paho's __del__ closes its socket pair
        # when the probe goes, not in a later gc pass that warns about unclosed sockets.
        self.client.on_message = None

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), f"no SUBACK for {topic}"

    def publish(self, topic: str) -> bytes:
        payload = json.dumps({"v": 1, "probe": True}).encode()
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
        return payload

    def wait_for(self, topic: str, timeout: float = 10.0) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: topic in self.received, timeout), \
                f"{topic} never arrived; got {self.received}"
        time.sleep(_LEAK_GRACE_S)


def _password(record: dict[str, Any], user: str) -> str:
    secure = record["secure"]
    path = Path(secure["controller"]["password_file"]) if user == "workbench" else \
        Path(secure["credentials_dir"]) / f"{user}.password"
    return path.read_text().strip()


def test_connect_pings_device_over_tls_when_fleet_is_secure(secure_fleet: dict[str, Any]) -> None:
    assert secure_fleet["broker"]["url"].startswith("mqtts://")
    with workbench.connect(run_dir=secure_fleet["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=20)
        assert fleet.devices[0].ping() > 0


def test_connect_is_refused_when_client_is_anonymous(secure_fleet: dict[str, Any]) -> None:
    url = secure_fleet["broker"]["url"]
    with pytest.raises((AuthenticationError, BrokerUnreachableError), match=url.replace(".", r"\.")):
        workbench.connect(url, ca_file=secure_fleet["secure"]["ca_file"], timeout=5)


def test_connect_raises_authentication_error_when_password_is_wrong(secure_fleet: dict[str, Any]) -> None:
    url = secure_fleet["broker"]["url"]
    for user in ("workbench", "sim-01"):
        with pytest.raises(AuthenticationError, match=url.replace(".", r"\.")):
            workbench.connect(url, username=user, password="not-the-password",
                              ca_file=secure_fleet["secure"]["ca_file"], timeout=5)


def test_connect_fails_clearly_when_plain_mqtt_meets_tls_listener(secure_fleet: dict[str, Any]) -> None:
    plain = secure_fleet["broker"]["url"].replace("mqtts://", "mqtt://")
    with pytest.raises((BrokerUnreachableError, AuthenticationError), match=plain.replace(".", r"\.")):
        workbench.connect(plain, username="workbench", password=_password(secure_fleet, "workbench"), timeout=3)


def test_device_publish_is_dropped_when_topic_is_another_devices_prefix(secure_fleet: dict[str, Any]) -> None:
    with Probe(secure_fleet, "workbench", _password(secure_fleet, "workbench")) as watcher, \
            Probe(secure_fleet, "sim-01", _password(secure_fleet, "sim-01")) as intruder:
        watcher.subscribe("wb/v1/dev/#")
        intruder.publish("wb/v1/dev/sim-02/forged")
        intruder.publish("wb/v1/dev/sim-01/control")
        watcher.wait_for("wb/v1/dev/sim-01/control")
        assert "wb/v1/dev/sim-02/forged" not in watcher.received


@pytest.mark.parametrize("prefix, leaf", [("wb/v1/cmd", "ping"), ("wb/v1/desired", "model"),
                                          ("wb/v1/desired", "ack")])
def test_device_publish_is_dropped_when_topic_is_written_only_by_workbench(
    secure_fleet: dict[str, Any], prefix: str, leaf: str
) -> None:
    # The target device's own credentials may read its commands, desired state and acks: it is the witness.
    # desired/<device>/ack is issue 12's row 4: a forged ack emptied a device's outbox.
    with Probe(secure_fleet, "sim-02", _password(secure_fleet, "sim-02")) as target, \
            Probe(secure_fleet, "sim-01", _password(secure_fleet, "sim-01")) as intruder, \
            Probe(secure_fleet, "workbench", _password(secure_fleet, "workbench")) as controller:
        target.subscribe(f"{prefix}/sim-02/#")
        forged = intruder.publish(f"{prefix}/sim-02/{leaf}")
        intruder.publish(f"{prefix}/sim-01/{leaf}")
        controller.publish(f"{prefix}/sim-02/control")
        target.wait_for(f"{prefix}/sim-02/control")
        # The fleet's hub acknowledges sim-02's real telemetry on the same topic: only the forgery must be missing.
        assert (f"{prefix}/sim-02/{leaf}", forged) not in target.payloads


@pytest.mark.parametrize("prefix", ["wb/v1/cmd", "wb/v1/desired"])
def test_device_receives_nothing_when_subscribing_to_another_devices_topics(
    secure_fleet: dict[str, Any], prefix: str
) -> None:
    with Probe(secure_fleet, "sim-01", _password(secure_fleet, "sim-01")) as snooper, \
            Probe(secure_fleet, "workbench", _password(secure_fleet, "workbench")) as controller:
        snooper.subscribe(f"{prefix}/sim-02/#")
        snooper.subscribe(f"{prefix}/sim-01/#")
        controller.publish(f"{prefix}/sim-02/secret")
        controller.publish(f"{prefix}/sim-01/control")
        snooper.wait_for(f"{prefix}/sim-01/control")
        assert f"{prefix}/sim-02/secret" not in snooper.received


def test_secret_files_are_private_when_fleet_is_secure(secure_fleet: dict[str, Any]) -> None:
    secrets_dir = RunDir.resolve(secure_fleet["run_dir"]).secrets
    files = [p for p in secrets_dir.rglob("*") if p.is_file()]
    assert {"ca.key", "server.key", "workbench.password", "sim-01.password"} <= {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in [secrets_dir, *(p for p in secrets_dir.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_passwords_stay_out_of_readable_files_when_fleet_is_secure(secure_fleet: dict[str, Any]) -> None:
    rd = RunDir.resolve(secure_fleet["run_dir"])
    passwords = [_password(secure_fleet, user) for user in ("workbench", "sim-01", "sim-02")]
    readable = [rd.record_file, Path(secure_fleet["broker"]["config"]), *rd.logs.glob("*.log")]
    for path in readable:
        text = path.read_text(errors="replace")
        assert not any(pw in text for pw in passwords), f"a password leaked into {path}"


def test_prepare_secure_raises_config_error_when_broker_is_external(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Provision them on that broker yourself"):
        prepare_secure(RunDir(tmp_path), "mqtt://broker.example:1883", ["sim-01"])
    assert not RunDir(tmp_path).secrets.exists()


def test_prepare_secure_raises_config_error_when_device_id_is_the_controller_user(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workbench"):
        prepare_secure(RunDir(tmp_path), "embedded", ["sim-01", "workbench"])


@pytest.mark.parametrize("broker", BROKERS)
def test_cli_up_starts_a_secure_fleet_and_status_down_work_when_no_security_option_is_given(
    broker: str, tmp_path: Path
) -> None:
    require_broker(broker)
    run_dir = str(tmp_path / "cli-secure")
    # Two devices in one agent process: covers --credentials-dir as well as the fleet's own login.
    try:
        up_out = run_cli("up", "--broker", broker, "--devices", "2", "--per-process", "2",
                         "--run-dir", run_dir, "--json", check=True)
        summary = json.loads(up_out.stdout)
        assert summary["secure"] is True and summary["broker"].startswith("mqtts://")
        status = json.loads(run_cli("status", "--run-dir", run_dir, "--json", check=True).stdout)
        assert "error" not in status
        assert [d["online"] for d in status["devices"]] == [True, True]
    finally:
        down_out = run_cli("down", "--run-dir", run_dir)
    assert down_out.returncode == 0, down_out.stderr
    assert "stopped 4 processes" in down_out.stdout  # broker, one agent process, artifact server, hub


def test_cli_up_insecure_starts_an_open_loopback_fleet_and_says_so_when_asked(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "cli-insecure")
    try:
        up_out = run_cli("up", "--insecure", "--devices", "1", "--no-hub", "--run-dir", run_dir, check=True)
        assert "INSECURE" in up_out.stdout
        record = json.loads((Path(run_dir) / "fleet.json").read_text())
        assert record["secure"] is None and record["broker"]["url"].startswith("mqtt://127.0.0.1:")
        with workbench.connect(record["broker"]["url"], timeout=10) as fleet:  # anonymous, as --insecure means
            assert fleet.wait_for(1, timeout=20)[0].ping() > 0
    finally:
        run_cli("down", "--run-dir", run_dir)


@pytest.mark.parametrize("broker", BROKERS)
def test_up_raises_config_error_and_starts_nothing_when_an_insecure_fleet_would_listen_beyond_loopback(
    broker: str, tmp_path: Path
) -> None:
    require_broker(broker)
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0.*without TLS.*drop --insecure"):
        up(devices=1, broker=broker, run_dir=tmp_path / "open", secure=False, host="0.0.0.0", hub=False)
    assert RunDir(tmp_path / "open").read() is None
    assert not (tmp_path / "open" / "broker").exists()  # refused before any broker config was written


def test_up_raises_config_error_naming_insecure_when_the_broker_is_external_and_no_option_is_given(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        up(devices=1, broker="mqtt://broker.example:1883", run_dir=tmp_path / "ext", hub=False)
    assert RunDir(tmp_path / "ext").read() is None


def _interface_address() -> str:
    import socket

    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    pytest.skip("this machine has no IPv4 address besides loopback")


@pytest.mark.parametrize("broker", BROKERS)
def test_fleet_listens_on_every_interface_over_tls_with_a_certificate_for_them_when_host_is_0000(
    broker: str, tmp_path: Path
) -> None:
    require_broker(broker)
    address = _interface_address()
    run_dir = tmp_path / "wide"
    record = up(devices=1, broker=broker, run_dir=run_dir, host="0.0.0.0", hub=False)
    try:
        assert record["broker"]["url"].startswith("mqtts://127.0.0.1:") and record["broker"]["listen"] == "0.0.0.0"
        # A client on the network reaches the broker at the interface's address, and the certificate names it.
        remote = record["broker"]["url"].replace("127.0.0.1", address)
        with workbench.connect(remote, username="workbench", password=_password(record, "workbench"),
                               ca_file=record["secure"]["ca_file"], timeout=10) as fleet:
            assert fleet.wait_for(1, timeout=20)[0].ping() > 0
        with pytest.raises((AuthenticationError, BrokerUnreachableError)):
            workbench.connect(remote, ca_file=record["secure"]["ca_file"], timeout=5)  # anonymous: refused
    finally:
        down(run_dir)


def test_hub_cli_refuses_to_serve_its_token_in_clear_text_when_host_is_beyond_loopback(tmp_path: Path) -> None:
    result = run_cli("hub", "--broker", "mqtt://127.0.0.1:1", "--store", f"duckdb://{tmp_path / 'hub.duckdb'}",
                     "--host", "0.0.0.0", "--port", "0", "--token-file", str(tmp_path / "hub.token"), timeout=60)
    assert result.returncode != 0
    assert "the hub would listen on 0.0.0.0" in result.stderr and "--certfile and --keyfile" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "hub.token").exists()  # refused before anything was written


def test_agent_health_endpoint_listens_on_loopback_only_when_no_host_is_given() -> None:
    import socket

    from workbench.agent._health import serve_health

    address = _interface_address()
    server = serve_health(0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass  # loopback answers
        with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
            pass  # the network does not
    finally:
        server.stop()


@pytest.mark.parametrize("broker", BROKERS)
def test_bus_keeps_its_tls_connection_when_threads_publish_while_it_receives(broker: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from workbench.protocol._bus import Bus

    require_broker(broker)
    run_dir = tmp_path / "bus"
    record = up(devices=1, broker=broker, run_dir=run_dir, hub=False)
    try:
        address = BrokerAddress.parse(record["broker"]["url"], username="workbench",
                                      password=_password(record, "workbench"), ca_file=record["secure"]["ca_file"])
        bus = Bus(address, client_prefix="tls-race")
        connects: list[int] = []
        received: list[bytes] = []
        arrived = threading.Condition()
        original = bus._client.on_connect

        def count_connect(*args: Any) -> None:
            connects.append(1)
            original(*args)

        def on_message(message: mqtt.MQTTMessage) -> None:
            with arrived:
                received.append(bytes(message.payload))
                arrived.notify_all()

        bus._client.on_connect = count_connect
        bus.subscribe("wb/v1/desired/sim-01/race", on_message)
        try:
            time.sleep(0.5)
            # Four threads publish 4 KB messages while the bus's own thread reads them back over TLS.
            with ThreadPoolExecutor(4) as pool:
                for future in [pool.submit(lambda n=n: [bus.publish("wb/v1/desired/sim-01/race", bytes([n]) * 4096)
                                                        for _ in range(250)]) for n in range(4)]:
                    future.result()
            with arrived:
                assert arrived.wait_for(lambda: len(received) >= 1000, timeout=30), len(received)
            assert connects == [], "the bus reconnected: its TLS stream was corrupted"  # no reconnect after the first
            assert len(received) == 1000
        finally:
            bus.close()
    finally:
        down(run_dir)
