"""Hostile bytes against every decoder of network input: each attack is rejected with a counted kind, never a crash.

The rows refer to the security review's table in issue 12.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import zstandard

from workbench.agent._outbox import Outbox
from workbench.errors import ArtifactError, ConfigError, PayloadError, ResourceLimitError
from workbench.protocol import schema
from workbench.protocol.acks import MAX_ACK_SEQS, decode_ack
from workbench.protocol.codec import _HEAD, MAGIC, VERSION, Codec, WireItem
from workbench.protocol.wire import decode_batch, encode_batch
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import SyncStore
from workbench.telemetry._client import Telemetry
from workbench.telemetry._ingest import Ingestor
from workbench.telemetry._store import DuckDBStore

REPO = Path(__file__).resolve().parents[1]
BRACKETS = b"[" * 20_000  # row 1: 20 KB of '['


def _frame_declaring(content_size: int, content: bytes = b"\0" * 1000) -> bytes:
    """A zstd frame whose header declares ``content_size`` bytes, whatever it really holds."""
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False, write_checksum=False).compress(content)
    descriptor = frame[4]
    assert descriptor & 0xE0 == 0  # no content size, not single-segment: a window byte follows
    return frame[:4] + bytes([descriptor | 0xC0]) + frame[5:6] + struct.pack("<Q", content_size) + frame[6:]


def _sync_message(frame: bytes, raw_len: int) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, 0, raw_len, time.time()) + frame


# -- the JSON payload schema (rows 1 and 2) ----------------------------------------------------------------


@pytest.mark.parametrize("payload", [BRACKETS, b'{"a":' * 20_000, b'{"v":1,"x":' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_decode_rejects_payload_as_too_deep_when_it_nests_thousands_of_levels(payload: bytes) -> None:
    with pytest.raises(PayloadError, match="nested deeper") as caught:
        schema.decode(payload)
    assert caught.value.kind == "too_deep"


def test_decode_accepts_brackets_inside_strings_when_the_structure_is_shallow() -> None:
    body = schema.decode(schema.encode({"text": "[" * 10_000, "list": [[1], [2]]}))
    assert body["text"] == "[" * 10_000


def test_decode_checks_depth_in_linear_time_when_a_string_holds_100000_escaped_quotes() -> None:
    payload = b'{"v":1,"a":' + b"[" * 20 + b"]" * 20 + b',"s":"' + b"[" * 20 + b'\\"' * 100_000 + b'"}'
    started = time.perf_counter()
    body = schema.decode(payload)
    assert time.perf_counter() - started < 0.5
    assert body["s"].endswith('"' * 100_000)


def test_decode_rejects_integer_of_5000_digits_as_malformed_when_python_refuses_to_convert_it() -> None:
    with pytest.raises(PayloadError, match="malformed") as caught:
        schema.decode(b'{"v":1,"n":' + b"9" * 5000 + b"}")
    assert caught.value.kind == "malformed"


# -- the telemetry wire format ----------------------------------------------------------------------------


def _telemetry(device: str, seq: int, n: int = 3) -> bytes:
    return encode_batch(device, seq, np.arange(n) + time.time(), ["cpu"], np.zeros(n), np.ones(n), sent=time.time())


def test_decode_batch_rejects_seq_beyond_signed_64_bits_when_a_device_sends_2_pow_64() -> None:
    with pytest.raises(PayloadError, match=r"seq .* out of range"):
        decode_batch(_telemetry("evil-01", 2**64))
    with pytest.raises(PayloadError, match="out of range"):
        decode_batch(_telemetry("evil-01", 2**63))
    assert decode_batch(_telemetry("sim-01", 2**63 - 1)).seq == 2**63 - 1


def test_ingestor_stores_other_devices_batches_when_one_batch_in_the_same_flush_has_seq_2_pow_64() -> None:
    store = DuckDBStore()
    ingestor = Ingestor(store, flush_interval_s=0.5)
    try:
        ingestor.feed(_telemetry("evil-01", 2**64), "wb/v1/dev/evil-01/telemetry")
        ingestor.feed(_telemetry("sim-01", 1), "wb/v1/dev/sim-01/telemetry")
        assert ingestor.wait_idle(10)
        stats = ingestor.stats()
        assert stats["sim-01"]["points"] == 3 and stats["sim-01"]["store_errors"] == 0
        assert stats["evil-01"]["malformed"] == 1 and stats["evil-01"]["points"] == 0
        assert store.count() == 3
    finally:
        ingestor.close()
        store.close()


def test_decode_batch_rejects_deeply_nested_header_when_it_would_overflow_the_json_recursion() -> None:
    header = b"[" * 20_000
    raw = struct.pack("<3sBI", b"WBT", 1, len(header)) + header
    with pytest.raises(PayloadError, match="malformed batch: header nested deeper"):
        decode_batch(raw)


def test_ingestor_keeps_storing_when_a_batch_header_nests_20000_levels() -> None:
    store = DuckDBStore()
    ingestor = Ingestor(store)
    try:
        header = b"[" * 20_000
        ingestor.feed(struct.pack("<3sBI", b"WBT", 1, len(header)) + header, "wb/v1/dev/evil-01/telemetry")
        ingestor.feed(_telemetry("sim-01", 1), "wb/v1/dev/sim-01/telemetry")
        assert ingestor.wait_idle(10)
        assert ingestor.network_alive()
        assert ingestor.stats()["sim-01"]["points"] == 3
    finally:
        ingestor.close()
        store.close()


# -- telemetry queries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [float("nan"), float("inf"), 0, -5, 10**400])
def test_query_raises_config_error_naming_every_when_it_is_not_a_positive_finite_duration(every: Any) -> None:
    telemetry = Telemetry(cast(Any, None), store=DuckDBStore(), receive=False)
    try:
        with pytest.raises(ConfigError, match="every"):
            telemetry.query("cpu", every=every)
    finally:
        telemetry.close()


# -- the sync codec (row 3) --------------------------------------------------------------------------------


def test_sync_decode_rejects_frame_declaring_1_tib_when_the_header_says_1000_bytes() -> None:
    with pytest.raises(PayloadError, match="malformed sync message"):
        Codec().decode(_sync_message(_frame_declaring(2**40), 1000))


def test_sync_receiver_keeps_storing_every_device_when_one_sends_a_frame_declaring_1_tib() -> None:
    receiver = SyncReceiver(None, SyncStore(), send_ack=lambda device, payload: None)
    try:
        receiver.feed("evil-01", _sync_message(_frame_declaring(2**40), 1000))
        receiver.feed("sim-01", Codec().encode([WireItem(1, 0, "event", b'{"door": "open"}')]))
        assert receiver.wait_idle(10)
        assert receiver.network_alive()
        assert receiver.stats()["sim-01"]["stored"] == 1
        assert receiver.reject_log.by_device()["evil-01"] == {"malformed": 1}
    finally:
        receiver.close()


def test_sync_decode_stays_under_100_mb_when_a_frame_really_holds_512_mib_of_zeros() -> None:
    # In a fresh process, so its peak RSS is the decoder's alone. The old decoder let zstd allocate
    # and fill whatever the frame declared (RSS 545 MB here).
    script = """
import resource, sys, time, zstandard
from workbench.errors import PayloadError
from workbench.protocol.codec import _HEAD, MAGIC, VERSION, Codec
obj = zstandard.ZstdCompressor(level=1).compressobj(size=512 * 2**20)
frame = b"".join([obj.compress(b"\\0" * 2**20) for _ in range(512)] + [obj.flush()])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    Codec().decode(_HEAD.pack(MAGIC, VERSION, 0, 1000, time.time()) + frame)
    print("decoded")
except PayloadError as exc:
    print("rejected", exc.kind)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                            check=True)
    verdict, grown_mb = result.stdout.split("\n")[:2]
    assert verdict == "rejected malformed"
    assert int(grown_mb) < 100, f"decoding grew RSS by {grown_mb} MB"


# -- acknowledgements (rows 4 and 5) ------------------------------------------------------------------------


def test_forged_ack_removes_nothing_when_it_covers_critical_items_never_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.put_many([b"alarm %d" % i for i in range(40)], priority="critical")
    forged = schema.encode({"ranges": [[0, 5000]]})
    assert box.ack(decode_ack(forged)) == 0
    assert box.pending() == 40
    assert box.counters()["ack_not_sent"] == 5001
    sent = box.take(max_bytes=1_000_000)
    assert box.ack(decode_ack(forged)) == 40  # once sent, a real acknowledgement removes them
    assert len(sent) == 40 and box.pending() == 0


@pytest.mark.parametrize("ranges", [[[0, 9_999_999]], [[i, i] for i in range(MAX_ACK_SEQS + 1)]])
def test_decode_ack_rejects_as_oversized_when_ranges_cover_too_many_numbers(ranges: list[list[int]]) -> None:
    payload = schema.encode({"ranges": ranges})
    started = time.perf_counter()
    for _ in range(3):  # row 5: three such acks
        with pytest.raises(PayloadError, match="oversized sync ack") as caught:
            decode_ack(payload)
        assert caught.value.kind == "oversized"
    assert time.perf_counter() - started < 1.0


def test_receiver_splits_acknowledgements_when_one_message_holds_more_items_than_a_device_accepts() -> None:
    acks: list[list[int]] = []
    receiver = SyncReceiver(None, SyncStore(), send_ack=lambda device, payload: acks.append(decode_ack(payload)))
    try:
        count = 2 * MAX_ACK_SEQS + 5
        receiver.feed("sim-01", Codec().encode([WireItem(seq, 0, "event", b"x") for seq in range(1, count + 1)]))
        assert receiver.wait_idle(20)
    finally:
        receiver.close()
    assert len(acks) == 3 and sorted(seq for ack in acks for seq in ack) == list(range(1, count + 1))


# -- bounded resources (rows 10 and 11) -----------------------------------------------------------------------


def test_outbox_refuses_critical_items_with_clear_error_when_they_would_pass_the_hard_cap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=10_000)  # sync max_mb=0.01
    assert box.put(b"kept" * 100, priority="critical") == 1
    for _ in range(20):
        with pytest.raises(ResourceLimitError, match=r"outbox is full.*none of the 1 items was queued"):
            box.put(b"c" * 1_000_000, priority="critical")
    assert box.pending() == 1 and box.bytes == 400
    assert box.counters()["refused_critical"] == 20
    box.close()
    on_disk = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert on_disk < 1_000_000, f"{on_disk} bytes on disk against a 10 KB bound"
    assert [item.payload for item in Outbox(tmp_path / "outbox.db").take(max_bytes=10_000)] == [b"kept" * 100]


def test_outbox_still_admits_critical_items_over_the_bound_when_under_the_hard_cap() -> None:
    box = Outbox(":memory:", max_bytes=10_000)
    assert all(box.put(b"c" * 4000, priority="critical") for _ in range(4))
    assert box.counters()["over_bound"] == 2


class Flood:
    """A real HTTP server that sends ``mib`` MiB whatever was asked, and counts what it managed to send."""

    def __init__(self, mib: int = 5) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        flood = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(mib * 2**20))
                self.end_headers()
                try:
                    for _ in range(mib * 16):
                        self.wfile.write(b"\0" * 65536)
                        flood.sent += 65536
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.sent = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.base_url}/artifacts/x"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fetch_stops_after_size_bytes_when_the_server_sends_5_mib(tmp_path: Path) -> None:
    from workbench.protocol.artifacts import fetch

    flood = Flood()
    try:
        with pytest.raises(ArtifactError, match="larger than the 100 bytes its manifest says"):
            fetch(flood.url, "0" * 64, tmp_path / "m.onnx", size=100, attempts=1)
    finally:
        flood.close()
    assert not list(tmp_path.iterdir()), "the partial download must be discarded"


def test_fetch_refuses_file_urls_when_asked_for_a_local_file(tmp_path: Path) -> None:
    from workbench.protocol.artifacts import fetch

    with pytest.raises(ConfigError, match="http:// or https://") as caught:
        fetch("file:///etc/hostname", "0" * 64, tmp_path / "m.onnx")
    assert "sha256 is" not in str(caught.value)
    assert not list(tmp_path.iterdir())


# -- manifests --------------------------------------------------------------------------------------------


def test_load_package_rejects_manifest_over_the_size_limit_before_parsing_it(tmp_path: Path) -> None:
    from workbench.errors import PackageError
    from workbench.protocol.package import load_package

    (tmp_path / "manifest.json").write_bytes(b"[" * (2 * 2**20))
    with pytest.raises(PackageError, match="over the 1048576-byte limit"):
        load_package(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"[" * 100_000)
    with pytest.raises(PackageError, match="nests too deep"):
        load_package(tmp_path)


# -- rate-limited reject logging (item 1) ------------------------------------------------------------------------


def test_rejects_are_logged_once_per_device_and_kind_when_a_device_floods_garbage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = SyncReceiver(None, SyncStore(), send_ack=lambda device, payload: None)
    try:
        with caplog.at_level(logging.WARNING, logger="workbench.sync"):
            for index in range(1000):
                receiver.feed("evil-01", b"garbage %d" % index)
            receiver.feed("evil-02", b"garbage")
            assert receiver.wait_idle(10)
        lines = [r for r in caplog.records if r.name == "workbench.sync"]
        assert len(lines) == 2, [r.getMessage() for r in lines]
        assert receiver.reject_log.by_device() == {"evil-01": {"malformed": 1000}, "evil-02": {"malformed": 1}}
    finally:
        receiver.close()


# -- command arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    {"inputs": {"x": {"dtype": "V100000000", "shape": [1000], "data": [0] * 1000}}},  # 100 GB of void
    {"inputs_spec": [{"name": "x", "dtype": "float32", "shape": ["batch", 10**6, 10**6]}]},
    {"inputs_spec": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}], "batch": 10**12},
    {"inputs_spec": [{"name": "x"}]},
])
def test_benchmark_inputs_raise_config_error_before_allocating_when_shapes_or_dtypes_are_hostile(
    args: dict[str, Any],
) -> None:
    from workbench.agent._benchmark import _inputs

    with pytest.raises(ConfigError, match="benchmark input"):
        _inputs(args)


def test_outbox_refuses_critical_and_drops_bulk_items_when_they_would_eat_into_the_disk_reserve(
    tmp_path: Path,
) -> None:
    """Item 6: an absolute cap no setting can raise: the outbox never writes into the disk's last free bytes."""
    import shutil

    box = Outbox(tmp_path / "outbox.db", max_bytes=10**12)  # a bound a sync.configure could set: 1 TB
    assert box.put(b"kept" * 100, priority="critical") == 1
    box.min_free_bytes = shutil.disk_usage(tmp_path).total  # no disk has that much free: "full" from here on
    with pytest.raises(ResourceLimitError, match=r"disk is nearly full.*none of the 2 items was queued"):
        box.put_many([b"c" * 1000, b"d" * 1000], priority="critical")
    assert box.put(b"b" * 1000, priority="bulk") is None
    counters = box.counters()
    assert counters["refused_critical"] == 2 and counters["dropped_bulk"] == 1 and counters["disk_reserve"] == 2
    assert box.pending() == 1 and [item.payload for item in box.take(max_bytes=10_000)] == [b"kept" * 100]
