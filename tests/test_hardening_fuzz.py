"""Property-based fuzzing of every decoder of network input: any bytes give a value or the module's reject error.

Each property also bounds time (hypothesis' deadline) and, for the sync codec, the output size.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import numpy as np
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.errors import PayloadError
from workbench.protocol import schema
from workbench.protocol.acks import MAX_ACK_SEQS, decode_ack, encode_ack
from workbench.protocol.codec import _HEAD, MAGIC, MAX_RAW_BYTES, VERSION, Codec, WireItem
from workbench.protocol.wire import MAX_SEQ, decode_batch, encode_batch

FUZZ = settings(max_examples=300, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-ish text: nesting, huge numbers, NUL bytes, brackets in strings, wrong types.
_atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_json = st.recursive(_atoms, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=30)
_nasty = st.sampled_from([b"[" * 5000, b"{" * 5000, b'{"a":' * 3000, b"9" * 6000, b"\0" * 100, b'"\\', b"NaN",
                          b'{"v":1,"x":' + b"[" * 40 + b"]" * 40 + b"}", b'{"v": 1e999}', b"\xff\xfe"])
_payloads = st.one_of(st.binary(max_size=2000), _nasty,
                      _json.map(lambda value: json.dumps(value).encode()),
                      st.tuples(_nasty, st.binary(max_size=50)).map(lambda parts: parts[0] + parts[1]))


@FUZZ
@given(_payloads)
def test_schema_decode_returns_a_versioned_object_or_raises_payload_error_for_any_bytes(payload: bytes) -> None:
    try:
        body = schema.decode(payload)
    except PayloadError as exc:
        assert exc.kind in ("malformed", "oversized", "too_deep", "unknown_version")
        return
    assert isinstance(body, dict) and body["v"] == schema.SCHEMA_VERSION


def _header_batch(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<3sBI", b"WBT", 1, len(header)) + header + body


_headers = st.fixed_dictionaries(
    {"device": st.one_of(st.text(max_size=10), st.integers()),
     "seq": st.one_of(st.integers(min_value=-2, max_value=2**70), st.floats(), st.just(2**64)),
     "sent": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**400),
                                                                                     max_value=10**400)),
     "names": st.one_of(st.lists(st.text(max_size=5), max_size=5), st.integers()),
     "n": st.one_of(st.integers(min_value=-3, max_value=10), st.just(2**62))},
    optional={"tags": _json},
).map(lambda header: json.dumps(header).encode())


@FUZZ
@given(st.one_of(
    st.binary(max_size=2000),
    st.tuples(st.one_of(_headers, _nasty), st.binary(max_size=200)).map(lambda parts: _header_batch(*parts)),
))
def test_decode_batch_returns_a_checked_batch_or_raises_payload_error_for_any_bytes(payload: bytes) -> None:
    try:
        batch = decode_batch(payload)
    except PayloadError:
        return
    assert 0 <= batch.seq <= MAX_SEQ and np.isfinite(batch.sent)
    assert batch.n == 0 or int(batch.metric.max()) < len(batch.names)


@FUZZ
@given(st.integers(min_value=0, max_value=MAX_SEQ), st.lists(st.tuples(st.integers(0, 3), st.floats(width=64)),
                                                            max_size=20))
def test_decode_batch_round_trips_every_valid_batch(seq: int, points: list[tuple[int, float]]) -> None:
    n = len(points)
    metric, value = np.array([p[0] for p in points], dtype=np.uint16), np.array([p[1] for p in points], dtype=float)
    batch = decode_batch(encode_batch("sim-01", seq, np.arange(n, dtype=float), ["a", "b", "c", "d"], metric, value,
                                      sent=1.0))
    assert (batch.seq, batch.n) == (seq, n)
    np.testing.assert_array_equal(batch.value, value)


def _message(raw_len: int, frame: bytes, dict_id: int = 0) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, dict_id, raw_len, time.time()) + frame


_frames = st.one_of(
    st.binary(max_size=500),
    st.binary(max_size=3000).map(lambda raw: zstandard.ZstdCompressor(level=1).compress(raw)),
    st.integers(min_value=0, max_value=2**44).map(lambda size: _declaring(size)),
)


def _declaring(size: int) -> bytes:
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False, write_checksum=False).compress(b"\1" * 300)
    return frame[:4] + bytes([frame[4] | 0xC0]) + frame[5:6] + struct.pack("<Q", size) + frame[6:]


@FUZZ
@given(st.one_of(
    st.binary(max_size=2000),
    st.tuples(st.integers(min_value=0, max_value=2**32 - 1), _frames, st.sampled_from([0, 0, 1, 2**31]))
    .map(lambda parts: _message(*parts)),
))
def test_sync_decode_returns_items_within_the_declared_size_or_raises_payload_error(message: bytes) -> None:
    try:
        items = Codec().decode(message)
    except PayloadError:
        return
    declared = _HEAD.unpack_from(message)[3]
    assert declared <= MAX_RAW_BYTES
    assert sum(len(item.payload) + 14 + len(item.kind) for item in items) <= declared


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 3), st.sampled_from(["event", "telemetry", "x"]),
                          st.binary(max_size=100)), max_size=10))
def test_sync_codec_round_trips_every_valid_message(items: list[tuple[int, int, str, bytes]]) -> None:
    wire = [WireItem(*item) for item in items]
    assert Codec().decode(Codec().encode(wire)) == wire


_ranges: Any = st.one_of(
    st.lists(st.lists(st.integers(min_value=-5, max_value=2**64), min_size=2, max_size=2), max_size=20),
    st.lists(st.tuples(st.integers(0, 2**62), st.integers(0, 2**40)).map(lambda r: [r[0], r[0] + r[1]]),
             max_size=5),
    _json,
)


@FUZZ
@given(st.one_of(_payloads, _ranges.map(lambda ranges: schema.encode({"ranges": ranges}))))
def test_decode_ack_returns_a_bounded_list_or_raises_payload_error_for_any_bytes(payload: bytes) -> None:
    try:
        seqs = decode_ack(payload)
    except PayloadError:
        return
    assert len(seqs) <= MAX_ACK_SEQS and all(0 <= seq < 2**63 for seq in seqs)


@FUZZ
@given(st.lists(st.integers(min_value=0, max_value=2**62), max_size=MAX_ACK_SEQS // 100))
def test_decode_ack_round_trips_every_acknowledgement_the_receiver_sends(seqs: list[int]) -> None:
    assert decode_ack(encode_ack(seqs)) == sorted(set(seqs))
