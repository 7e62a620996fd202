"""Live fuzz (issue 12): a bounded stream of hostile payloads on every topic of a real fleet, on both brokers.

The fleet runs as ``workbench up`` starts it by default: per-device credentials, ACLs and TLS. Two
independent paho clients attack it:

- a rogue device, with ``sim-02``'s own credentials, on every topic the ACLs let it write (its own
  ``wb/v1/dev/sim-02/...``) and on the ones they do not (another device's prefix, commands,
  desired state, acknowledgements): the broker must drop the latter;
- the workbench's own credentials (a compromised workbench, or anyone on an ``--insecure`` fleet) on
  the topics only the workbench may write: commands, desired state and acknowledgements.

Every payload of the first phase is undecodable for its receiver (deep nesting, zstd bombs,
NUL bytes, 5000-digit numbers, random bytes, oversized, wrong version, not an object), so each
receiver must count each message exactly once by a kind the table below fixes. The second phase
sends decodable JSON of the wrong types and huge numbers. Then every device still answers ping, a new
client sees every device, telemetry arrives with exact counts, and a rollout succeeds.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from conftest import BROKERS, FleetFactory
from test_deploy_rollout import make_package
from test_hardening_decoders import _frame_declaring, _sync_message

import workbench
from workbench.deploy._state import DeployState
from workbench.fleet._fleet import Fleet
from workbench.protocol import schema, topics
from workbench.protocol._bus import Bus
from workbench.protocol._mqtt import BrokerAddress, close_client, connect_blocking, make_client, new_client_id
from workbench.protocol.codec import _HEAD, MAGIC, VERSION

TARGET, ROGUE = "sim-01", "sim-02"
DEVICES = (TARGET, ROGUE)
REPEATS = 3  # each fixed payload per topic
RANDOM_PER_TOPIC = 20
_COUNT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Hostile:
    """One adversarial payload and how each kind of receiver must count it."""

    name: str
    payload: bytes
    json_kind: str    # a receiver of versioned JSON (schema.decode)
    outbox_kind: str  # the sync receiver (sync codec)


def _real_zstd_bomb() -> bytes:
    # 100 MiB of zeros in a few KB; the header claims 60 MiB (under the 64 MiB limit), so only a
    # decompressor that stops at the claimed size survives it.
    frame = zstandard.ZstdCompressor(level=3).compress(bytes(100 * 2**20))
    return _sync_message(frame, 60 * 2**20)


def undecodable_payloads(rng: random.Random) -> list[Hostile]:
    """Payloads no receiver can decode, each with the reject kind it must be counted under."""
    fixed = [
        Hostile("nested 20000 x '['", b"[" * 20_000, "too_deep", "malformed"),
        Hostile("nested 5000 objects", b'{"a":' * 5_000, "too_deep", "malformed"),
        Hostile("zstd frame declaring 1 TiB", _sync_message(_frame_declaring(2**40), 1000), "malformed", "malformed"),
        Hostile("sync header declaring 512 MiB", _sync_message(_frame_declaring(512 * 2**20), 512 * 2**20),
                "malformed", "oversized"),
        Hostile("zstd bomb, 100 MiB of zeros", _real_zstd_bomb(), "malformed", "malformed"),
        Hostile("1 KiB of NUL bytes", bytes(1024), "malformed", "malformed"),
        Hostile("NUL inside a JSON string", b'{"v":1,"state":"on\x00line"}', "malformed", "malformed"),
        Hostile("5000-digit integer", b'{"v":1,"n":' + b"9" * 5000 + b"}", "malformed", "malformed"),
        Hostile("300 KB JSON string", b'{"v":1,"pad":"' + b"x" * 300_000 + b'"}', "oversized", "malformed"),
        Hostile("schema version 2", b'{"v":2,"state":"online"}', "unknown_version", "malformed"),
        Hostile("JSON array", b"[1,2,3]", "malformed", "malformed"),
    ]
    randoms = []
    for _ in range(RANDOM_PER_TOPIC):
        # A NUL first byte keeps it from starting with the sync magic; without brackets it cannot nest.
        body = bytes(b for b in rng.randbytes(rng.randint(1, 2000)) if b not in b"[{")
        randoms.append(Hostile("random bytes", b"\0" + body, "malformed", "malformed"))
    return fixed * REPEATS + randoms


# End phase 2 on each topic with a kind phase 2 cannot produce there: its payloads are all JSON of schema version 1.
MARKER = b'{"v":3}'                                   # JSON receivers: unknown_version
SYNC_MARKER = _HEAD.pack(MAGIC, VERSION + 1, 0, 0, 0.0)  # the sync receiver: unknown_version


def wrong_type_payloads() -> list[bytes]:
    """Versioned JSON objects that decode but carry wrong types, huge numbers and NUL characters."""
    return [schema.encode(body) for body in (
        {},
        {"state": ["online"], "instance": {"x": 1}, "ts": "yesterday", "reply_to": 7, "id": [1e308]},
        {"ranges": [[0, 10**30]], "state": "offline", "instance": None, "reason": "\0" * 100},
        {"ranges": "all", "args": [1, 2], "reply_to": "x" * 10_000, "package_id": 5, "backlog": "x"},
        {"ts": 1e308, "n": -(2**64), "enabled": "sometimes", "link": {"rate": float("inf")}},
        {"active_model": 3, "hardware": "x", "software": [None], "counters": [1], "sender": {"last_sync": 1e300}},
    )]


@dataclass(frozen=True)
class Target:
    """A topic under attack, who may write it, and which receivers must count what arrives."""

    topic: str
    attacker: str                 # "rogue" (sim-02's credentials) or "controller" (the workbench's)
    receivers: tuple[str, ...]    # see Observer.counts
    retain: bool = False


def targets(fleet_client_id: str) -> list[Target]:
    """Every topic of workbench.protocol.topics, for the devices the attackers can reach."""
    rogue = [
        Target(topics.status_topic(ROGUE), "rogue", ("fleet", f"agent:{ROGUE}"), retain=True),
        Target(topics.inventory_topic(ROGUE), "rogue", ("fleet",), retain=True),
        Target(topics.claim_topic(ROGUE), "rogue", (f"agent:{ROGUE}",)),
        Target(topics.reply_topic(ROGUE, fleet_client_id), "rogue", ("fleet",)),  # a device sees reply_to ids
        Target(topics.device_topic(ROGUE, "deploy"), "rogue", ("deploy",), retain=True),
        Target(topics.telemetry_topic(ROGUE), "rogue", ()),  # a name only: nobody subscribes
        Target(topics.outbox_topic(ROGUE), "rogue", ("outbox",)),
        Target(topics.sync_state_topic(ROGUE), "rogue", ("sync",), retain=True),
    ]
    controller = []
    for device in DEVICES:
        agent = f"agent:{device}"
        controller += [
            Target(topics.command_topic(device, "ping"), "controller", (agent,)),
            Target(topics.command_topic(device, "telemetry.configure"), "controller", (agent,)),
            Target(topics.command_topic(device, "no-such-command"), "controller", (agent,)),
            Target(topics.desired_topic(device, "model"), "controller", (agent, "deploy"), retain=True),
            Target(topics.desired_topic(device, "telemetry"), "controller", (agent,), retain=True),
            Target(topics.desired_topic(device, "sync"), "controller", (agent,), retain=True),
            Target(topics.sync_ack_topic(device), "controller", (agent,)),
        ]
    return rogue + controller


def denied_topics() -> list[str]:
    """Topics sim-02's credentials must not write: another device's prefix and everything the workbench writes."""
    return [topics.status_topic(TARGET), topics.inventory_topic(TARGET), topics.outbox_topic(TARGET),
            topics.command_topic(TARGET, "ping"), topics.desired_topic(TARGET, "model"),
            topics.desired_topic(ROGUE, "model"), topics.sync_ack_topic(TARGET), topics.sync_ack_topic(ROGUE),
            topics.command_topic(ROGUE, "ping")]


class Attacker:
    """An independent paho client with some fleet user's credentials."""

    def __init__(self, record: dict[str, Any], username: str, password_file: Path) -> None:
        self.address = BrokerAddress.parse(record["broker"]["url"], username=username,
                                           password=password_file.read_text().strip(),
                                           ca_file=record["secure"]["ca_file"])
        self.client = make_client(self.address, new_client_id("attacker"))
        connect_blocking(self.client, self.address, keepalive=30, timeout=10)

    def send(self, topic: str, payload: bytes, *, retain: bool = False, wait: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if wait:
            info.wait_for_publish(timeout=10)

    def close(self) -> None:
        close_client(self.client)


def hub_rejects(hub_url: str) -> dict[tuple[str, str], Counter[str]]:
    """The hub's reject counters from its Prometheus endpoint: ``(receiver, device) -> kinds``."""
    from prometheus_client.parser import text_string_to_metric_families

    result: dict[tuple[str, str], Counter[str]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{hub_url}/metrics", timeout=10).text):
        if family.name == "workbench_hub_rejected_messages":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["receiver"], sample.labels["device"])
                    result.setdefault(key, Counter())[sample.labels["kind"]] += int(sample.value)
    return result


class Observer:
    """Reads every receiver's reject counters: agents (by a command), fleet client, sync state, the outbox's
    receiver (this process's, or the hub's through /metrics), deployment state."""

    def __init__(self, fleet: Fleet, deploy_state: DeployState, hub_url: str | None) -> None:
        self.fleet = fleet
        self.deploy_state = deploy_state
        self.hub_url = hub_url

    def outbox_rejects(self) -> dict[str, Counter[str]]:
        """Per device, what the receiver of the outboxes rejected."""
        if self.hub_url is not None:
            return {device: kinds for (receiver, device), kinds in hub_rejects(self.hub_url).items()
                    if receiver == "sync"}
        receiver = self.fleet.sync.receiver
        assert receiver is not None
        return {device: Counter(kinds) for device, kinds in receiver.reject_log.by_device().items()}

    def counts(self) -> dict[str, Counter[str]]:
        return {
            **{f"agent:{d}": Counter(self.fleet[d].stats(timeout=15)["rejected_payloads"]) for d in DEVICES},
            "fleet": Counter(self.fleet.rejects().get(ROGUE, {})),
            "sync": Counter(self.fleet.sync.reject_log.by_device().get(ROGUE, {})),
            "outbox": self.outbox_rejects().get(ROGUE, Counter()),
            "deploy": Counter(self.deploy_state.reject_log.by_kind()),  # reported (sim-02) and desired (both)
        }

    def since(self, baseline: dict[str, Counter[str]]) -> dict[str, Counter[str]]:
        """What each receiver counted since ``baseline`` (receivers that counted nothing map to an empty Counter)."""
        now = self.counts()
        return {name: now[name] - baseline[name] for name in now}

    def wait_for(self, expected: dict[str, Counter[str]], baseline: dict[str, Counter[str]]) -> dict[str, Counter[str]]:
        """Poll until every receiver counted at least ``expected`` since ``baseline``; then, after a grace period in
        which a message counted twice would show, return the counts since ``baseline``."""
        deadline = time.monotonic() + _COUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            delta = self.since(baseline)
            if all(delta[name][kind] >= n for name, kinds in expected.items() for kind, n in kinds.items()):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        return self.since(baseline)



def _eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _drained(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Stop telemetry on every device, wait until every outbox is empty and stored; each device's telemetry.status."""
    for device in DEVICES:
        fleet.call(device, "telemetry.configure", {"enabled": False}, timeout=15)
    telemetry = fleet.telemetry

    def empty() -> bool:
        return all(fleet.call(d, "sync.status", timeout=15)["outbox_bytes"] == 0 for d in DEVICES) \
            and telemetry.flush(timeout=2)

    assert _eventually(empty, 60), {d: fleet.call(d, "sync.status", timeout=15)["counters"] for d in DEVICES}
    return {d: fleet.call(d, "telemetry.status", timeout=15) for d in DEVICES}


def _table(sent: Counter[str], counted: dict[str, Counter[str]], broker: str) -> str:
    lines = [f"live fuzz on {broker}: messages sent by kind", *(f"  {n:>5}  {k}" for k, n in sorted(sent.items())),
             "rejects counted by receiver and kind"]
    for name, kinds in sorted(counted.items()):
        lines += [f"  {name:<14} {dict(sorted(kinds.items()))}"]
    return "\n".join(lines)


# With the hub, as `workbench up` starts a fleet, on both brokers; without it, this process's receivers are attacked.
@pytest.mark.parametrize("broker, hub", [(broker, True) for broker in BROKERS] + [("embedded", False)],
                         ids=[*(f"{broker}-hub" for broker in BROKERS), "embedded-no-hub"])
def test_fleet_survives_and_counts_every_reject_when_every_topic_gets_hostile_payloads(
    broker: str, hub: bool, fleet_factory: FleetFactory, keys_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = fleet_factory(devices=2, broker=broker, secure=True, hub=hub)
    hub_url = record["hub"]["url"] if hub else None
    secure = record["secure"]
    started = time.monotonic()
    sent: Counter[str] = Counter()
    with workbench.connect(run_dir=record["run_dir"]) as fleet:
        fleet.wait_for(2, timeout=30)
        for device in DEVICES:  # telemetry flows through the whole attack: synthetic points plus device metrics
            fleet.call(device, "telemetry.configure", {"synthetic_points_per_s": 500, "publish_interval_s": 0.2})
        # On a connection of its own: a second subscriber of a filter on the fleet's bus would take the retained
        # deployment state from the rollout's DeployState, which subscribes later on that bus.
        deploy_bus = Bus(fleet.address, client_prefix="wb-fuzz-deploy")
        deploy_state = DeployState(deploy_bus)
        observer = Observer(fleet, deploy_state, hub_url)
        sync = fleet.sync
        assert (sync.receiver is None) == hub and fleet.telemetry is not None
        baseline = observer.counts()
        assert all(not kinds for kinds in baseline.values()), baseline
        rogue = Attacker(record, ROGUE, Path(secure["credentials_dir"]) / f"{ROGUE}.password")
        controller = Attacker(record, secure["controller"]["username"], Path(secure["controller"]["password_file"]))
        hits = [(rogue if t.attacker == "rogue" else controller, t) for t in targets(fleet.client_id)]
        try:
            # Phase 1: undecodable payloads; every receiver counts each one exactly once, by a known kind.
            expected: dict[str, Counter[str]] = {name: Counter() for name in baseline}
            rng = random.Random(12)
            for attacker, target in hits:
                for hostile in undecodable_payloads(rng):
                    attacker.send(target.topic, hostile.payload, retain=target.retain)
                    sent[hostile.name] += 1
                    for receiver in target.receivers:
                        expected[receiver][hostile.outbox_kind if receiver == "outbox" else hostile.json_kind] += 1
            # What sim-02's credentials may not write never reaches a receiver: the ACLs drop it.
            trespasser = Attacker(record, ROGUE, Path(secure["credentials_dir"]) / f"{ROGUE}.password")
            try:
                for topic in denied_topics():
                    trespasser.send(topic, b"[" * 20_000, wait=False)
                    sent["denied by the ACLs (sim-02 on others' topics)"] += 1
            finally:
                trespasser.close()
            phase_one = observer.wait_for(expected, baseline)
            assert phase_one == expected, _table(sent, phase_one, broker)
            assert set(fleet.rejects()) == set(sync.reject_log.by_device()) == \
                set(observer.outbox_rejects()) == {ROGUE}  # nothing got in under sim-01's prefix
            assert set(deploy_state.reject_log.by_device()) == set(DEVICES)  # desired/<both>/model, dev/sim-02/deploy

            # Phase 2: decodable JSON of the wrong types, huge numbers and NUL characters, on the same topics. Each
            # topic ends with a marker of a kind phase 2 cannot produce: one publisher's messages on one topic arrive
            # in order, so once every marker is counted, every phase-2 message was handled.
            before_two = observer.counts()
            markers: dict[str, Counter[str]] = {name: Counter() for name in baseline}
            for attacker, target in hits:
                for payload in wrong_type_payloads():
                    attacker.send(target.topic, payload, retain=target.retain)
                    sent["wrong types / huge numbers"] += 1
                marker = SYNC_MARKER if "outbox" in target.receivers else MARKER
                attacker.send(target.topic, marker, retain=target.retain)
                sent["end-of-phase marker (an unknown version)"] += 1
                for receiver in target.receivers:
                    markers[receiver]["unknown_version"] += 1
            during_two = observer.wait_for(markers, before_two)
            for name, kinds in markers.items():
                for kind, n in kinds.items():
                    assert during_two[name][kind] == n, (name, kind, during_two[name])
            after_two = observer.counts()
            # The tables built from what devices report still build, with sim-02's wrong-typed reports in them.
            assert set(fleet.inventory(wide=True)["device_id"]) == set(DEVICES)
            assert set(fleet.sync_state(wide=True)["device_id"]) >= set(DEVICES)
            assert set(fleet.telemetry.health()["device_id"]) == set(DEVICES)

            # Last, retained garbage: what every new subscriber of a retained topic gets is NUL bytes.
            garbage: dict[str, Counter[str]] = {name: Counter() for name in baseline}
            for attacker, target in hits:
                if target.retain:
                    attacker.send(target.topic, bytes(64), retain=True)
                    sent["retained NUL garbage (left behind)"] += 1
                    for receiver in target.receivers:
                        garbage[receiver]["malformed"] += 1
            assert observer.wait_for(garbage, after_two) == garbage
        finally:
            rogue.close()
            controller.close()

        # The fleet still works: pings, a new client, telemetry with exact counts, a rollout.
        for device in DEVICES:
            assert fleet[device].ping(timeout=10) > 0
            assert fleet[device].stats()["network_alive"] is True
        assert fleet.network_alive()
        if sync.receiver is not None:
            assert sync.receiver.network_alive()
        if hub_url is not None:
            assert httpx.get(f"{hub_url}/healthz", timeout=10).json()["status"] == "ok"
        with workbench.connect(run_dir=record["run_dir"]) as fresh:
            # sim-02's agent answered the garbage over its retained status by publishing "online" again.
            fresh.wait_until(lambda f: {d.device_id for d in f.online()} == set(DEVICES), timeout=20)
            assert _eventually(lambda: fresh.rejects() == {ROGUE: {"malformed": 1}}, 5), fresh.rejects()
            assert fresh.network_alive()
        status = _drained(fleet)
        stored = fleet.telemetry.counters()
        for device in DEVICES:
            assert status[device]["batches_dropped"] == 0
            assert stored[device]["batches"] == status[device]["batches_sent"] > 0, (device, stored[device])
            assert stored[device]["points"] == status[device]["points_sent"], (device, stored[device])
            assert stored[device]["missing"] == 0
        package = make_package(keys_env, "after-fuzz", seed=21)
        report = fleet.deploy(package.path).wait(timeout=90)
        assert report.status == "succeeded", str(report)
        assert report.counts == {"active": 2}
        total = observer.since(baseline)
        deploy_state.close()
        deploy_bus.close()
    points = ", ".join(f"{d}: {stored[d]['points']} points in {stored[d]['batches']} batches" for d in DEVICES)
    with capsys.disabled():  # the figures for the README's hardening section
        print()
        print(_table(sent, phase_one, f"{broker}, {'with' if hub else 'without'} the hub"))
        print("rejects counted in all, phases 1 and 2 and the retained garbage")
        print("\n".join(f"  {name:<14} {dict(sorted(kinds.items()))}" for name, kinds in sorted(total.items())))
        print(f"survived: ping {', '.join(DEVICES)}; a new client saw both online; telemetry exact ({points}); "
              f"rollout {report.status}; {time.monotonic() - started:.0f} s")
