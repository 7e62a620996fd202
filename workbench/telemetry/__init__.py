"""Live telemetry: the wire format, ingestion into a time-series store, queries and alerts.

Example:
    >>> fleet = workbench.connect()                                                    # doctest: +SKIP
    >>> fleet.telemetry.query("latency_p95_ms", devices="all", since="10m", every="5s")  # doctest: +SKIP
    >>> fleet.telemetry.alerts()                                                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench._lazy import lazy_getattr
from workbench.protocol.wire import MAX_BATCH_BYTES, WIRE_VERSION, Batch, decode_batch, encode_batch

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


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["MAX_BATCH_BYTES", "WIRE_VERSION", "AlertRule", "Batch", "DuckDBStore", "Ingestor", "PostgresStore",
           "Telemetry", "build_digits_model", "build_sensor_anomaly_model", "decode_batch", "encode_batch"]
