"""The outbox's batched put and its in-flight bookkeeping (which items a take may hand out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.agent._outbox import Outbox
from workbench.errors import ConfigError


def test_put_many_numbers_items_in_order_and_counts_them_when_queued_together(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    assert box.put(b"first") == 1
    assert box.put_many([b"a", b"b", b"c"], kind="telemetry") == [2, 3, 4]
    assert [(item.seq, item.payload) for item in box.take(max_bytes=10_000)] == [
        (1, b"first"), (2, b"a"), (3, b"b"), (4, b"c")]
    assert box.counters()["produced"] == 4


def test_put_many_queues_nothing_when_one_payload_is_not_bytes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    with pytest.raises(ConfigError, match="must be bytes"):
        box.put_many([b"ok", "text"])  # type: ignore[list-item]
    assert box.pending() == 0 and box.put(b"next") == 1


def test_put_many_drops_and_counts_what_does_not_fit_when_over_the_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=1024)
    seqs = box.put_many([b"x" * 600, b"y" * 600], priority="bulk")
    assert seqs == [1, 2]  # the second evicts the first: the oldest bulk item goes
    assert [item.seq for item in box.take(max_bytes=10_000)] == [2]
    assert box.counters()["dropped_bulk"] == 1


def test_take_skips_items_in_flight_and_hands_out_the_next_ones_when_called_again(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.put_many([bytes([i]) * 100 for i in range(10)])
    first = box.take(max_bytes=300, now=100.0)
    second = box.take(max_bytes=300, now=100.5)
    assert [item.seq for item in first] == [1, 2, 3]
    assert [item.seq for item in second] == [4, 5, 6]


def test_take_hands_out_released_items_first_when_they_are_older(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.put_many([bytes([i]) * 100 for i in range(6)])
    box.take(max_bytes=300, now=100.0)  # 1-3 in flight
    box.take(max_bytes=300, now=100.1)  # 4-6 in flight
    box.release([2])
    again = box.take(max_bytes=10_000, now=100.2)
    assert [(item.seq, item.attempts) for item in again] == [(2, 1)]


def test_take_hands_out_expired_items_again_when_their_ack_timed_out(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.put_many([bytes([i]) * 100 for i in range(4)])
    box.take(max_bytes=200, ack_timeout=5.0, now=100.0)  # 1-2, due again at 105
    box.take(max_bytes=200, ack_timeout=5.0, now=103.0)  # 3-4, due again at 108
    box.ack([1])
    assert box.take(max_bytes=10_000, now=104.0) == []
    assert [item.seq for item in box.take(max_bytes=10_000, now=105.5)] == [2]
    assert [item.seq for item in box.take(max_bytes=10_000, now=108.5)] == [3, 4]
    assert box.counters()["resent"] == 3


def test_take_resends_unacknowledged_items_when_the_outbox_is_reopened(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.put_many([b"a", b"b"])
    box.take(max_bytes=10_000)
    box.close()
    again = Outbox(tmp_path / "outbox.db")
    assert [(item.seq, item.attempts) for item in again.take(max_bytes=10_000)] == [(1, 1), (2, 1)]
    assert again.counters()["resent"] == 2
