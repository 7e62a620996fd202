"""Sync acknowledgements: which sequence numbers a receiver has committed, as ranges.

``{"v": 1, "ranges": [[1, 500]]}`` carries at most :data:`MAX_ACK_SEQS` sequence numbers (a receiver
splits more over several acknowledgements). A device rejects one with more ranges or numbers than
that, so a forged acknowledgement cannot make it expand millions of numbers.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import PayloadError
from workbench.protocol import schema

# One acknowledgement covers the items of one message (at most MAX_ITEMS) or one telemetry flush: the
# receiver splits larger sets, so a device can refuse anything bigger without losing a real one.
MAX_ACK_SEQS = 10_000
MAX_ACK_RANGES = MAX_ACK_SEQS


def to_ranges(seqs: list[int]) -> list[list[int]]:
    """Compress sequence numbers into inclusive ranges.

    Example:
        >>> to_ranges([5, 1, 2, 3, 7])
        [[1, 3], [5, 5], [7, 7]]
    """
    ranges: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


def from_ranges(ranges: Any) -> list[int]:
    """Expand inclusive ranges; raise :class:`PayloadError` for anything else.

    Example:
        >>> from_ranges([[1, 3], [7, 7]])
        [1, 2, 3, 7]
    """
    if isinstance(ranges, list) and len(ranges) > MAX_ACK_RANGES:
        raise PayloadError(f"oversized sync ack: {len(ranges)} ranges, at most {MAX_ACK_RANGES}", kind="oversized")
    if not isinstance(ranges, list) or not all(isinstance(r, list) and len(r) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in r) and r[0] <= r[1]
            for r in ranges):
        raise PayloadError("malformed sync ack: ranges must be a list of [first, last] sequence numbers")
    if sum(last - first + 1 for first, last in ranges) > MAX_ACK_SEQS:
        raise PayloadError(f"oversized sync ack: more than {MAX_ACK_SEQS} sequence numbers", kind="oversized")
    return [seq for first, last in ranges for seq in range(first, last + 1)]


def encode_ack(seqs: list[int]) -> bytes:
    """One acknowledgement of ``seqs``, as ranges.

    Example:
        >>> encode_ack([1, 2, 3])
        b'{"v":1,"ranges":[[1,3]]}'
    """
    return schema.encode({"ranges": to_ranges(seqs)})


def decode_ack(payload: bytes) -> list[int]:
    """The sequence numbers of one acknowledgement; raise :class:`PayloadError` if malformed.

    Example:
        >>> decode_ack(encode_ack([1, 2, 3, 9]))
        [1, 2, 3, 9]
    """
    body = schema.decode(payload)
    return from_ranges(body.get("ranges"))

