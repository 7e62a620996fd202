"""The telemetry wire format: one binary, versioned, columnar batch per MQTT message.

Layout (little-endian)::

    b"WBT"  version:u8  header_len:u32  header (JSON, UTF-8)
    ts:float64[n]  metric:uint16[n]  value:float64[n]

The header carries ``device``, ``seq`` (per-device batch sequence number, strictly
increasing across restarts), ``sent`` (device clock when the batch was encoded), ``names`` (the metric
names that ``metric`` indexes), ``n`` and free-form ``tags`` (the agent's: model, model_version,
model_sha256, instance, source).
Columns decode with ``np.frombuffer`` (no per-point Python work), which is what lets
one subscriber decode millions of points a second; JSON caps near 0.7 M.

The agent only needs numpy for this module, so it stays importable on a Raspberry Pi.

Example:
    >>> import numpy as np
    >>> raw = encode_batch("sim-01", 7, np.array([1.0, 2.0]), ["cpu_percent"], np.array([0, 0]), np.array([3.0, 4.0]))
    >>> batch = decode_batch(raw)
    >>> batch.seq, batch.n, batch.names
    (7, 2, ['cpu_percent'])
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.errors import PayloadError
from workbench.protocol.schema import MAX_DEPTH, nesting_depth

MAGIC = b"WBT"
WIRE_VERSION = 1
# Binary batches have their own limit: 500 points are ~9 KiB, so 4 MiB leaves room for big batches.
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_NAMES = 65535
# Sequence numbers are stored as a signed 64-bit integer by PostgreSQL (UBIGINT by DuckDB): a batch beyond
# that would fail the whole insert it shares with other devices' batches, so it is rejected here.
MAX_SEQ = 2**63 - 1
_PREFIX = struct.Struct("<3sBI")
POINT_BYTES = 8 + 2 + 8

PROBLEM_KINDS = ("oversized", "unknown_version", "truncated", "malformed")


@dataclass
class Batch:
    """One decoded telemetry batch."""

    device: str
    seq: int
    sent: float
    names: list[str]
    ts: np.ndarray
    metric: np.ndarray
    value: np.ndarray
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.ts.shape[0])


def encode_batch(
    device: str,
    seq: int,
    ts: np.ndarray,
    names: list[str],
    metric: np.ndarray,
    value: np.ndarray,
    *,
    sent: float | None = None,
    tags: dict[str, Any] | None = None,
) -> bytes:
    """Encode ``n`` points (timestamps, indexes into ``names``, values) as one batch.

    Example:
        >>> len(encode_batch("d", 1, np.zeros(500), ["x"], np.zeros(500), np.zeros(500))) > 500 * 18
        True
    """
    n = len(ts)
    if not (len(metric) == len(value) == n):
        raise ValueError(f"columns differ in length: ts {n}, metric {len(metric)}, value {len(value)}")
    if len(names) > MAX_NAMES:
        raise ValueError(f"{len(names)} metric names in one batch; at most {MAX_NAMES}")
    header = json.dumps(
        {"device": device, "seq": int(seq), "sent": time.time() if sent is None else float(sent),
         "names": list(names), "n": n, "tags": tags or {}},
        separators=(",", ":"),
    ).encode()
    return b"".join((
        _PREFIX.pack(MAGIC, WIRE_VERSION, len(header)),
        header,
        np.ascontiguousarray(ts, dtype="<f8").tobytes(),
        np.ascontiguousarray(metric, dtype="<u2").tobytes(),
        np.ascontiguousarray(value, dtype="<f8").tobytes(),
    ))


def decode_batch(payload: bytes, *, max_bytes: int = MAX_BATCH_BYTES) -> Batch:
    """Decode and check a batch; raise :class:`PayloadError` whose message starts with its kind.

    The kinds are those of :data:`PROBLEM_KINDS` (see :func:`problem_kind`).
    """
    size = len(payload)
    if size > max_bytes:
        raise PayloadError(f"oversized batch: {size} bytes, limit {max_bytes}; publish smaller batches")
    if size < _PREFIX.size:
        raise PayloadError(f"truncated batch: {size} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, header_len = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise PayloadError(f"malformed batch: starts with {magic!r}, not {MAGIC!r}; is this a telemetry batch?")
    if version != WIRE_VERSION:
        raise PayloadError(f"unknown version {version} of the telemetry batch: this workbench reads v{WIRE_VERSION}; "
                           "upgrade the workbench or the agent so they match")
    if header_len > MAX_HEADER_BYTES:
        raise PayloadError(f"malformed batch: header of {header_len} bytes, limit {MAX_HEADER_BYTES}")
    body_start = _PREFIX.size + header_len
    if size < body_start:
        raise PayloadError(f"truncated batch: header needs {header_len} bytes, {size - _PREFIX.size} arrived")
    raw_header = bytes(payload[_PREFIX.size:body_start])
    if nesting_depth(raw_header) > MAX_DEPTH:
        raise PayloadError(f"malformed batch: header nested deeper than {MAX_DEPTH} levels")
    try:
        header = json.loads(raw_header)
    except RecursionError:
        raise PayloadError(f"malformed batch: header nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise PayloadError(f"malformed batch: header is not JSON ({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise PayloadError("malformed batch: header is not a JSON object")
    device, seq, sent, names, n = (header.get(k) for k in ("device", "seq", "sent", "names", "n"))
    tags = header.get("tags") or {}
    if not (isinstance(device, str) and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
            and isinstance(sent, (int, float)) and isinstance(n, int) and n >= 0 and isinstance(tags, dict)
            and isinstance(names, list) and all(isinstance(x, str) for x in names)):
        raise PayloadError("malformed batch: header needs device (str), seq (int >= 0), sent (number), "
                           "names (list of str), n (int >= 0)")
    if seq > MAX_SEQ:
        raise PayloadError(f"malformed batch: seq {seq} is out of range (at most 2**63 - 1)")
    try:
        sent = float(sent)
    except OverflowError:  # an integer beyond any float
        sent = math.inf
    if not math.isfinite(sent):
        raise PayloadError("malformed batch: sent is not a finite number")
    if len(names) > MAX_NAMES:
        raise PayloadError(f"malformed batch: {len(names)} metric names, at most {MAX_NAMES}")
    expected = body_start + n * POINT_BYTES
    if size < expected:
        raise PayloadError(f"truncated batch: {n} points need {expected} bytes, {size} arrived")
    if size > expected:
        raise PayloadError(f"malformed batch: {size - expected} bytes after the {n} points")
    ts = np.frombuffer(payload, dtype="<f8", count=n, offset=body_start)
    metric = np.frombuffer(payload, dtype="<u2", count=n, offset=body_start + 8 * n)
    value = np.frombuffer(payload, dtype="<f8", count=n, offset=body_start + 10 * n)
    if n and int(metric.max()) >= len(names):
        raise PayloadError(f"malformed batch: metric index {int(metric.max())} but only {len(names)} names")
    if n and not np.isfinite(ts).all():
        raise PayloadError("malformed batch: a timestamp is not a finite number")
    return Batch(device, seq, sent, names, ts, metric, value, tags)


def problem_kind(error: PayloadError) -> str:
    """The counter a rejected batch goes to: one of :data:`PROBLEM_KINDS`."""
    text = str(error)
    if text.startswith("unknown version"):
        return "unknown_version"
    for kind in ("oversized", "truncated"):
        if text.startswith(kind):
            return kind
    return "malformed"
