"""The outbox, codec, links, budget and store on their own: durability, eviction, order, exactness."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.agent import LinkShaper, Outbox
from workbench.agent._sender import Sender
from workbench.errors import ConfigError, PayloadError
from workbench.protocol.acks import decode_ack, encode_ack, from_ranges, to_ranges
from workbench.protocol.wire import encode_batch
from workbench.sync import LINKS, Budget, Codec, WireItem, link_profile
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import SyncStore


def test_outbox_keeps_unacked_items_and_sequence_when_reopened(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = [box.put(f"item {i}".encode(), priority="normal") for i in range(5)]
    box.take(max_bytes=10_000)  # in flight, never acknowledged
    box.ack([1, 2])
    box.close()  # as after kill -9: nothing else is written on close
    again = Outbox(tmp_path / "o.db")
    assert seqs == [1, 2, 3, 4, 5]
    assert [item.seq for item in again.take(max_bytes=10_000)] == [3, 4, 5]
    assert again.put(b"next") == 6
    assert again.counters()["produced"] == 6 and again.counters()["acked"] == 2


def test_outbox_takes_critical_first_then_oldest_when_priorities_mixed() -> None:
    box = Outbox(":memory:")
    box.put(b"b", priority="bulk")
    box.put(b"n", priority="normal")
    box.put(b"c", priority="critical")
    box.put(b"h", priority="high")
    assert [item.priority_name for item in box.take(max_bytes=1)] == ["critical"]  # at least one item
    assert [item.priority_name for item in box.take(max_bytes=10_000)] == ["high", "normal", "bulk"]


def test_outbox_resends_items_when_ack_times_out() -> None:
    box = Outbox(":memory:")
    box.put(b"x")
    assert len(box.take(max_bytes=100, ack_timeout=5.0, now=100.0)) == 1
    assert box.take(max_bytes=100, now=101.0) == []
    again = box.take(max_bytes=100, now=106.0)
    assert [item.attempts for item in again] == [1]
    assert box.counters()["resent"] == 1


def test_outbox_evicts_oldest_bulk_then_normal_and_counts_when_bound_reached() -> None:
    box = Outbox(":memory:", max_bytes=2048)
    for priority in ("bulk", "bulk", "normal", "normal"):
        assert box.put(b"x" * 500, priority=priority) is not None
    box.put(b"c" * 500, priority="critical")  # evicts the oldest bulk (seq 1)
    box.put(b"c" * 500, priority="critical")  # then seq 2
    box.put(b"c" * 500, priority="critical")  # then the oldest normal (seq 3)
    remaining = [item.seq for item in box.take(max_bytes=100_000)]
    assert remaining == [5, 6, 7, 4]
    counters = box.counters()
    assert (counters["dropped_bulk"], counters["dropped_normal"], counters["produced"]) == (2, 1, 7)


def test_outbox_keeps_critical_over_bound_and_drops_new_bulk_when_full_of_critical() -> None:
    box = Outbox(":memory:", max_bytes=1024)
    for _ in range(3):
        assert box.put(b"c" * 500, priority="critical") is not None
    assert box.put(b"b" * 10, priority="bulk") is None
    counters = box.counters()
    assert counters["dropped_bulk"] == 1 and counters["over_bound"] == 1 and box.pending() == 3


def test_outbox_rejects_bad_input_with_clear_error() -> None:
    box = Outbox(":memory:")
    with pytest.raises(ConfigError, match="unknown sync priority 'urgent'"):
        box.put(b"x", priority="urgent")
    with pytest.raises(ConfigError, match="must be bytes"):
        box.put("text", priority="high")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_bytes"):
        Outbox(":memory:", max_bytes=10)


def test_codec_restores_telemetry_batches_bit_exact_when_compressed() -> None:
    rng = np.random.default_rng(3)
    raw = encode_batch("sim-01", 9, 1.7e9 + np.arange(1000) * 1e-3, ["a", "b"], np.arange(1000) % 2,
                       rng.normal(size=1000), sent=1.7e9)
    items = [WireItem(1, 2, "telemetry", raw), WireItem(2, 0, "event", b'{"door":"open"}')]
    codec = Codec()
    message = codec.encode(items)
    assert codec.decode(message) == items
    assert len(message) < 0.7 * len(raw)


def test_codec_uses_dictionary_and_refuses_message_when_dictionary_unknown() -> None:
    samples = [json.dumps({"sensor": f"s{i % 7}", "reading": i * 0.5, "status": "ok"}).encode() for i in range(200)]
    from workbench.sync import train_dictionary

    dictionary = train_dictionary(samples, size=2048)
    assert dictionary is not None
    sender = Codec(dictionary=dictionary)
    items = [WireItem(i, 2, "event", s) for i, s in enumerate(samples[:3])]
    assert Codec(dictionary=dictionary).decode(sender.encode(items)) == items
    with pytest.raises(PayloadError, match="dictionary"):
        Codec().decode(sender.encode(items))


@pytest.mark.parametrize("message", [b"", b"XYZ\x01" + b"\x00" * 8, b"WBS\x01" + b"\x00" * 8 + b"junk"])
def test_codec_raises_payload_error_when_message_malformed(message: bytes) -> None:
    with pytest.raises(PayloadError, match="sync message"):
        Codec().decode(message)


def test_ack_ranges_round_trip_and_reject_garbage() -> None:
    seqs = [1, 2, 3, 10, 11, 40]
    assert to_ranges(seqs) == [[1, 3], [10, 11], [40, 40]]
    assert decode_ack(encode_ack(seqs)) == seqs
    with pytest.raises(PayloadError, match="ranges"):
        from_ranges([[3, 1]])


def test_link_profile_raises_config_error_naming_problem_when_numbers_bad() -> None:
    assert link_profile("satellite").latency_ms == 600.0
    assert link_profile("lte", loss=0.2).name == "lte*"
    with pytest.raises(ConfigError, match="unknown link profile 'dialup'"):
        link_profile("dialup")
    with pytest.raises(ConfigError, match="loss"):
        link_profile(bandwidth_bps=1e6, loss=2)
    with pytest.raises(ConfigError, match="bandwidth_bps"):
        link_profile(latency_ms=3)


def test_budget_stops_bulk_then_normal_then_high_but_never_critical() -> None:
    budget = Budget(1.0)
    ranks = []
    for spend in (550_000, 300_000, 200_000, 0):
        ranks.append(budget.max_rank(now=10.0))
        budget.spend(spend, now=10.0)
    assert ranks == [3, 2, 1, 0]  # 0 %, 55 %, 85 %, 105 %: critical still allowed
    assert budget.max_rank(now=86_400 + 10.0) == 3  # a new day
    with pytest.raises(ConfigError, match="mb_per_day"):
        Budget(-5)


def test_store_counts_duplicates_and_merges_state_deltas() -> None:
    store = SyncStore()
    store.store("d", [WireItem(1, 1, "state", b'{"set": {"a": 1, "b": 2}, "removed": []}')])
    store.store("d", [WireItem(2, 1, "state", b'{"set": {"a": 5}, "removed": ["b"]}'),
                      WireItem(1, 1, "state", b'{"set": {"a": 1, "b": 2}, "removed": []}')])
    assert store.state("d") == {"a": 5}
    assert store.counters()["d"] == {"stored": 2, "duplicates": 1}


def test_sender_drains_outbox_exactly_once_when_link_loses_messages(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    shaper = LinkShaper(link_profile("lan", loss=0.3), seed=7)
    store = SyncStore()
    sender_ref: list[Sender] = []
    receiver = SyncReceiver(None, store, send_ack=lambda device, payload: shaper.receive(
        lambda: sender_ref[0].on_ack(decode_ack(payload))))

    def publish(message: bytes) -> bool:
        receiver.feed("d", message)
        return True

    sender = Sender(box, Codec(), shaper, publish)
    sender_ref.append(sender)
    sender.batch_bytes = 2048  # many small batches, so some are lost
    for i in range(400):
        box.put(json.dumps({"i": i}).encode().ljust(100), priority=("critical", "bulk")[i % 2])
    sender._ack_timeout = lambda: 0.3  # type: ignore[method-assign]  # resend fast in a unit test
    sender.start()
    deadline = time.monotonic() + 20
    while box.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    sender.stop()
    receiver.close(close_store=False)
    shaper.close()
    assert box.pending() == 0
    assert store.seqs("d") == list(range(1, 401))
    assert shaper.lost > 0
    assert LINKS["offline"].offline
