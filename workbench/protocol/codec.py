"""The outbox wire format: many items in one zstd-compressed message.

Layout (little-endian)::

    b"WBS"  version:u8  dict_id:u32  raw_len:u32  sent:f64  zstd(frame)
    frame = item*   item = seq:u64  priority:u8  kind_len:u8  kind  payload_len:u32  payload

Telemetry batches (``kind == "telemetry"``, the ``WBT`` columns of
:mod:`workbench.protocol.wire`) are stored column-transformed inside the frame:
timestamps as deltas, and the float columns byte-shuffled, so that zstd sees the
slowly changing high bytes together. The transform is exact (bit for bit) and is
undone on decode. The format has room for a dictionary (``dict_id`` not 0), which helps
small items and which both sides must hold; the receiver accepts one sent as an item of
kind ``zstd-dict``, but agents do not train one yet, so they send ``dict_id`` 0. ``sent`` is the
device's clock when the message was made: arrival minus ``sent`` is the device's clock
offset plus the link's delay, where an item's own timestamps also count the time it
waited in the outbox.
"""

from __future__ import annotations

import io
import struct
import time
from dataclasses import dataclass

import numpy as np
import zstandard

from workbench.errors import PayloadError

MAGIC = b"WBS"
VERSION = 2
_HEAD = struct.Struct("<3sBIId")
_ITEM = struct.Struct("<QBB")
_LEN = struct.Struct("<I")
MAX_MESSAGE_BYTES = 4 * 2**20
MAX_RAW_BYTES = 64 * 2**20
# A sender's batch is at most ~768 KiB of items of at least 14 bytes each: far fewer than this.
MAX_ITEMS = 100_000
MAX_DICTIONARIES = 64
_CHUNK = 1 << 20
_WBT_PREFIX = struct.Struct("<3sBI")


@dataclass(frozen=True)
class WireItem:
    """One item as it travels: sequence number, priority rank, kind and payload."""

    seq: int
    priority: int
    kind: str
    payload: bytes


def _shuffle(column: bytes, width: int) -> bytes:
    return np.frombuffer(column, dtype=np.uint8).reshape(-1, width).T.tobytes()


def _unshuffle(column: bytes, width: int) -> bytes:
    return np.frombuffer(column, dtype=np.uint8).reshape(width, -1).T.tobytes()


def _transform_telemetry(payload: bytes, forward: bool) -> bytes:
    """Delta the timestamps and byte-shuffle the columns of a WBT batch (or undo it); exact both ways."""
    if len(payload) < _WBT_PREFIX.size or payload[:3] != b"WBT":
        return payload
    _, _, header_len = _WBT_PREFIX.unpack_from(payload)
    start = _WBT_PREFIX.size + header_len
    body = len(payload) - start
    if body % 18:
        return payload  # not a well-formed batch: carry it untouched
    n = body // 18
    ts, metric, value = (payload[start:start + 8 * n], payload[start + 8 * n:start + 10 * n],
                         payload[start + 10 * n:])
    if forward:
        bits = np.frombuffer(ts, dtype="<u8")
        deltas = np.diff(bits, prepend=np.uint64(0)) if n else bits
        ts_out = _shuffle(deltas.astype("<u8").tobytes(), 8)
        return payload[:start] + ts_out + _shuffle(metric, 2) + _shuffle(value, 8)
    deltas = np.frombuffer(_unshuffle(ts, 8), dtype="<u8")
    bits = np.cumsum(deltas, dtype=np.uint64) if n else deltas
    return payload[:start] + bits.astype("<u8").tobytes() + _unshuffle(metric, 2) + _unshuffle(value, 8)


class Codec:
    """Encode and decode outbox messages, with an optional zstd dictionary.

    Example:
        >>> codec = Codec()
        >>> raw = codec.encode([WireItem(1, 0, "event", b'{"door": "open"}')])
        >>> codec.decode(raw)[0].payload
        b'{"door": "open"}'
    """

    def __init__(self, *, level: int = 3, dictionary: bytes | None = None) -> None:
        self.level = level
        self.dictionaries: dict[int, zstandard.ZstdCompressionDict] = {}
        self.dict_id = 0
        if dictionary:
            self.dict_id = self.add_dictionary(dictionary)

    def add_dictionary(self, raw: bytes) -> int:
        """Make a dictionary known (for decoding); return its id."""
        dictionary = zstandard.ZstdCompressionDict(raw)
        dict_id = dictionary.dict_id()
        while len(self.dictionaries) >= MAX_DICTIONARIES and dict_id not in self.dictionaries:
            del self.dictionaries[next(iter(self.dictionaries))]  # the oldest: a device resends its own
        self.dictionaries[dict_id] = dictionary
        return dict_id

    def use_dictionary(self, raw: bytes) -> int:
        """Compress with this dictionary from now on; return its id."""
        self.dict_id = self.add_dictionary(raw)
        return self.dict_id

    def encode(self, items: list[WireItem], *, sent: float | None = None) -> bytes:
        parts: list[bytes] = []
        for item in items:
            kind = item.kind.encode()
            payload = _transform_telemetry(item.payload, True) if item.kind == "telemetry" else item.payload
            parts += [_ITEM.pack(item.seq, item.priority, len(kind)), kind, _LEN.pack(len(payload)), payload]
        raw = b"".join(parts)
        dictionary = self.dictionaries.get(self.dict_id) if self.dict_id else None
        compressor = zstandard.ZstdCompressor(level=self.level, dict_data=dictionary) if dictionary else \
            zstandard.ZstdCompressor(level=self.level)
        head = _HEAD.pack(MAGIC, VERSION, self.dict_id if dictionary else 0, len(raw),
                          time.time() if sent is None else sent)
        return head + compressor.compress(raw)

    @staticmethod
    def sent_at(message: bytes) -> float | None:
        """The device clock when ``message`` was made (None if the header is not readable).

        Example:
            >>> Codec.sent_at(Codec().encode([], sent=12.5))
            12.5
        """
        if len(message) < _HEAD.size or message[:3] != MAGIC or message[3] != VERSION:
            return None
        return float(_HEAD.unpack_from(message)[4])

    def decode(self, message: bytes) -> list[WireItem]:
        """Decode one message; raise :class:`PayloadError` saying what is wrong with it."""
        if len(message) > MAX_MESSAGE_BYTES:
            raise PayloadError(f"oversized sync message: {len(message)} bytes, limit {MAX_MESSAGE_BYTES}",
                               kind="oversized")
        if len(message) < _HEAD.size:
            raise PayloadError(f"malformed sync message: {len(message)} bytes is shorter than its header")
        magic, version, dict_id, raw_len, _sent = _HEAD.unpack_from(message)
        if magic != MAGIC:
            raise PayloadError(f"malformed sync message: starts with {magic!r}, not {MAGIC!r}")
        if version != VERSION:
            raise PayloadError(f"unknown sync message version {version}: this workbench reads v{VERSION}; upgrade the "
                               "older side", kind="unknown_version")
        if raw_len > MAX_RAW_BYTES:
            raise PayloadError(f"oversized sync message: {raw_len} bytes uncompressed, limit {MAX_RAW_BYTES}",
                               kind="oversized")
        if dict_id and dict_id not in self.dictionaries:
            raise PayloadError(f"malformed sync message: compressed with dictionary {dict_id}, which this side does "
                               "not have; the device resends it after a restart")
        dictionary = self.dictionaries.get(dict_id) if dict_id else None
        decompressor = zstandard.ZstdDecompressor(dict_data=dictionary) if dictionary else \
            zstandard.ZstdDecompressor()
        raw = _decompress_bounded(decompressor, message[_HEAD.size:], raw_len)
        if len(raw) != raw_len:
            raise PayloadError(f"malformed sync message: {len(raw)} bytes decompressed, header says {raw_len}")
        items: list[WireItem] = []
        offset = 0
        try:
            while offset < len(raw):
                if len(items) >= MAX_ITEMS:
                    raise PayloadError(f"oversized sync message: more than {MAX_ITEMS} items", kind="oversized")
                seq, priority, kind_len = _ITEM.unpack_from(raw, offset)
                offset += _ITEM.size
                kind = raw[offset:offset + kind_len].decode()
                offset += kind_len
                (length,) = _LEN.unpack_from(raw, offset)
                offset += _LEN.size
                if offset + length > len(raw):
                    raise PayloadError("malformed sync message: an item runs past the end")
                payload = raw[offset:offset + length]
                offset += length
                if kind == "telemetry":
                    payload = _transform_telemetry(payload, False)
                items.append(WireItem(seq, priority, kind, payload))
        except (struct.error, UnicodeDecodeError) as exc:
            raise PayloadError(f"malformed sync message: {exc}") from None
        return items


def _decompress_bounded(decompressor: zstandard.ZstdDecompressor, frame: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes (plus one, to tell), streaming: the frame's declared size is not trusted.

    ``decompress`` allocates whatever the frame header declares (512 MiB, 1 TiB) before
    looking at ``max_output_size``; a stream reader only ever holds a chunk.
    """
    out = bytearray()
    try:
        with decompressor.stream_reader(io.BytesIO(frame), read_across_frames=True) as reader:
            while len(out) <= limit:
                chunk = reader.read(min(_CHUNK, limit + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise PayloadError(f"malformed sync message: zstd could not decompress it ({exc})") from None
    if len(out) > limit:
        raise PayloadError(f"malformed sync message: decompresses to more than the {limit} bytes its header says")
    return bytes(out)


def train_dictionary(samples: list[bytes], size: int = 16 * 1024) -> bytes | None:
    """A zstd dictionary from sample payloads, or None where there are too few samples to train one.

    Example:
        >>> train_dictionary([b"x"]) is None
        True
    """
    if len(samples) < 32:
        return None
    try:
        return zstandard.train_dictionary(size, list[bytes | bytearray | memoryview](samples)).as_bytes()
    except zstandard.ZstdError:
        return None
