"""Payloads on the wire: versioned JSON objects with a size limit.

Every payload is a JSON object with ``"v": 1``. A payload that is not JSON, not an
object, larger than :data:`MAX_PAYLOAD_BYTES` or of another schema version raises
:class:`~workbench.errors.PayloadError`; receivers count it and keep running.

Example:
    >>> decode(encode({"state": "online"}))["state"]
    'online'
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from workbench.errors import PayloadError

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024


def encode(body: dict[str, Any]) -> bytes:
    """Serialize a payload, stamping the schema version."""
    return json.dumps({"v": SCHEMA_VERSION, **body}, separators=(",", ":"), default=str).encode()


def decode(payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Parse and check a payload; raise :class:`PayloadError` naming the problem."""
    if len(payload) > max_bytes:
        raise PayloadError(f"oversized payload: {len(payload)} bytes, limit {max_bytes}", kind="oversized")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"malformed payload: {exc}") from None
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
