"""The binary telemetry batch format: round trip and every kind of bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from workbench.errors import PayloadError
from workbench.protocol.wire import WIRE_VERSION, decode_batch, encode_batch, problem_kind


def _batch(n: int = 5, seq: int = 3) -> bytes:
    rng = np.random.default_rng(0)
    return encode_batch("sim-01", seq, np.arange(n) + 1000.0, ["a", "b"], rng.integers(0, 2, n), rng.normal(size=n),
                        sent=1234.5, tags={"model": "digits"})


def test_decode_batch_returns_the_encoded_columns_when_round_tripped() -> None:
    rng = np.random.default_rng(1)
    ts, metric, value = rng.uniform(0, 1e9, 500), rng.integers(0, 3, 500), rng.normal(size=500)
    batch = decode_batch(encode_batch("d-1", 42, ts, ["x", "y", "z"], metric, value, sent=9.0, tags={"k": 1}))
    assert (batch.device, batch.seq, batch.sent, batch.names, batch.tags) == ("d-1", 42, 9.0, ["x", "y", "z"], {"k": 1})
    np.testing.assert_array_equal(batch.ts, ts)
    np.testing.assert_array_equal(batch.metric, metric)
    np.testing.assert_array_equal(batch.value, value)


def test_encoded_batch_costs_18_bytes_a_point_plus_header_when_large() -> None:
    raw = encode_batch("d", 1, np.zeros(500), ["m"], np.zeros(500), np.zeros(500))
    assert 500 * 18 < len(raw) < 500 * 18 + 200


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (lambda raw: raw[:-1], "truncated"),
        (lambda raw: raw[:6], "truncated"),
        (lambda raw: raw + b"\0", "malformed"),
        (lambda raw: b"XYZ" + raw[3:], "malformed"),
        (lambda raw: raw[:3] + bytes([WIRE_VERSION + 1]) + raw[4:], "unknown_version"),
        (lambda raw: raw[:8] + b"x" + raw[9:], "malformed"),
        (lambda raw: raw[:4] + struct.pack("<I", 10**6) + raw[8:], "malformed"),
        (lambda raw: raw + b"\0" * (5 * 1024 * 1024), "oversized"),
    ],
    ids=["last-byte-cut", "prefix-cut", "trailing-bytes", "bad-magic", "future-version", "bad-header-json",
         "huge-header", "oversized"],
)
def test_decode_batch_raises_payload_error_of_its_kind_when_batch_is_bad(mutate, kind: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_batch(mutate(_batch()))
    assert problem_kind(caught.value) == kind


def test_decode_batch_rejects_metric_index_past_names_when_header_lies() -> None:
    raw = encode_batch("d", 1, np.zeros(2), ["only"], np.array([0, 1]), np.zeros(2))
    with pytest.raises(PayloadError, match="metric index 1"):
        decode_batch(raw)


def test_encode_batch_raises_when_columns_differ_in_length() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        encode_batch("d", 1, np.zeros(3), ["m"], np.zeros(2), np.zeros(3))
