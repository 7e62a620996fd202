"""Live telemetry: the wire format, ingestion into a time-series store, queries and alerts.

Example:
    >>> fleet = workbench.connect()                                                    # doctest: +SKIP
    >>> fleet.telemetry.query("latency_p95_ms", devices="all", since="10m", every="5s")  # doctest: +SKIP
    >>> fleet.telemetry.alerts()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.telemetry._wire import MAX_BATCH_BYTES, WIRE_VERSION, Batch, decode_batch, encode_batch

if TYPE_CHECKING:
    from workbench.telemetry._alerts import AlertRule
    from workbench.telemetry._client import Telemetry
    from workbench.telemetry._examples import build_digits_model, build_sensor_anomaly_model
    from workbench.telemetry._ingest import Ingestor
    from workbench.telemetry._store import DuckDBStore

# The agent imports the wire format; keep pandas and duckdb out of that import.
_LAZY = {
    "AlertRule": "workbench.telemetry._alerts",
    "Telemetry": "workbench.telemetry._client",
    "Ingestor": "workbench.telemetry._ingest",
    "DuckDBStore": "workbench.telemetry._store",
    "PostgresStore": "workbench.telemetry._postgres",
    "build_digits_model": "workbench.telemetry._examples",
    "build_sensor_anomaly_model": "workbench.telemetry._examples",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.telemetry' has no attribute {name!r}")


__all__ = ["MAX_BATCH_BYTES", "WIRE_VERSION", "AlertRule", "Batch", "DuckDBStore", "Ingestor", "PostgresStore",
           "Telemetry", "build_digits_model", "build_sensor_anomaly_model", "decode_batch", "encode_batch"]
