"""Payloads on the wire: versioned JSON objects with a size limit.

Every payload is a JSON object with ``"v": 1``. A payload that is not JSON, not an
object, larger than :data:`MAX_PAYLOAD_BYTES`, nested deeper than :data:`MAX_DEPTH` or of
another schema version raises :class:`~workbench.errors.PayloadError`; receivers count it
and keep running. Python's ``json`` recurses once per nesting level, so 20 KB of ``[``
would raise ``RecursionError`` inside it: the depth is checked by a scan first, and a
``RecursionError`` that still escapes is turned into a ``too_deep`` reject.

Example:
    >>> decode(encode({"state": "online"}))["state"]
    'online'
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import numpy as np

from workbench.errors import PayloadError

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024
# No payload of ours nests deeper than a handful of levels; desired state and commands stay far below this.
MAX_DEPTH = 32
_STRING = re.compile(rb'"[^"]*"')  # only applied once escapes are gone, so it cannot backtrack
_IRRELEVANT = bytes(range(256)).translate(None, b'[]{}"')  # every byte that says nothing about nesting
_STEP = np.zeros(256, dtype=np.int32)
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


def nesting_depth(payload: bytes) -> int:
    r"""How deep the JSON arrays and objects in ``payload`` nest, brackets inside strings aside.

    Linear and in C: escapes are dropped first (JSON pairs backslashes left to right), then
    every byte but brackets and quotes, then the strings. A payload with fewer brackets
    than :data:`MAX_DEPTH` is not scanned at all.

    Example:
        >>> nesting_depth(b'{"a": [[1]], "s": "' + b"[" * 40 + b'\\\\"}')
        3
    """
    brackets = payload.count(b"[") + payload.count(b"{")
    if brackets <= MAX_DEPTH:
        return brackets
    skeleton = _STRING.sub(b"", payload.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _IRRELEVANT))
    if not skeleton:
        return 0
    return max(int(np.cumsum(_STEP[np.frombuffer(skeleton, dtype=np.uint8)]).max()), 0)


def encode(body: dict[str, Any]) -> bytes:
    """Serialize a payload, stamping the schema version."""
    return json.dumps({"v": SCHEMA_VERSION, **body}, separators=(",", ":"), default=str).encode()


def decode(payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Parse and check a payload; raise :class:`PayloadError` naming the problem."""
    if not isinstance(payload, (bytes, bytearray)):
        raise PayloadError(f"malformed payload: expected bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise PayloadError(f"oversized payload: {len(payload)} bytes, limit {max_bytes}", kind="oversized")
    payload = bytes(payload)
    if nesting_depth(payload) > MAX_DEPTH:
        raise PayloadError(f"payload nested deeper than {MAX_DEPTH} levels", kind="too_deep")
    try:
        body = json.loads(payload)
    except RecursionError:
        raise PayloadError(f"payload nested deeper than {MAX_DEPTH} levels", kind="too_deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise PayloadError(f"malformed payload: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise PayloadError(f"malformed payload: expected a JSON object, got {type(body).__name__}")
    version = body.get("v")
    if version != SCHEMA_VERSION:
        raise PayloadError(
            f"unknown schema version {version!r}: this workbench speaks v{SCHEMA_VERSION}; "
            "upgrade the older side (agent or workbench)",
            kind="unknown_version",
        )
    return body


class PayloadCounters(Counter[str]):
    """Counts of rejected payloads by kind, shared by agent and fleet."""

    def reject(self, error: PayloadError) -> str:
        self[error.kind] += 1
        return error.kind
