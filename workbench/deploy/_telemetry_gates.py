"""Gate metrics from live telemetry when the deployed devices send it, from a probe otherwise.

During a soak, a device whose telemetry arrives (``fleet.telemetry``) and is tagged with the
deployed model's hash answers from the telemetry store, using only points since the device
activated the model: ``p95_latency_ms`` is the worst ``latency_p95_ms`` window, ``p50_latency_ms``
the mean ``latency_p50_ms``, ``error_rate`` the growth of ``errors`` over the growth of
``inference_count`` and ``errors`` that growth alone. A device without such telemetry (no
inference source configured, or no points yet) is measured by :class:`ProbeMetrics`. Each value
says where it came from, and the rollout's gate entries record it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from workbench.deploy._gates import ProbeMetrics

if TYPE_CHECKING:
    from workbench.fleet._fleet import Fleet

log = logging.getLogger("workbench.deploy")

TELEMETRY, PROBE = "telemetry", "probe"
# A device's telemetry counts as flowing when its last batch is at most this old.
FRESH_S = 5.0


class GateMetrics:
    """A :class:`~workbench.deploy.MetricSource` reading telemetry where it flows, else probing.

    ``model_sha256`` is the deployed model's hash: telemetry tagged with another model (the
    one before the swap) is not used. :meth:`read` returns ``(value, source)``.

    Example:
        >>> metrics = GateMetrics(fleet, model_sha256=package.describe()["model_sha256"])   # doctest: +SKIP
        >>> metrics.activated("sim-01", time.time()); metrics.read("sim-01", "p95_latency_ms", 10)  # doctest: +SKIP
        (0.21, 'telemetry')
    """

    def __init__(self, fleet: Fleet, *, model_sha256: str, probe: ProbeMetrics | None = None) -> None:
        self.fleet = fleet
        self.model_tag = model_sha256[:12]
        self.probe = probe or ProbeMetrics(fleet)
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()
        self._telemetry: Any = None
        try:  # start ingesting now, so points exist by the time the soak reads them
            self._telemetry = fleet.telemetry
        except Exception as exc:  # no telemetry extras, or a broken store: the gates still work with probes
            log.info("gates use probes only: telemetry is unavailable (%s)", exc)

    def activated(self, device_id: str, ts: float) -> None:
        """The device serves the deployed model since ``ts``: only later telemetry counts."""
        with self._lock:
            self._since[device_id] = ts

    def settle(self, devices: list[str], timeout: float = FRESH_S) -> None:
        """Wait (at most ``timeout``) until devices sending telemetry on the new model have a point since activation.

        Without this, the soak's first reading right after activation would find no telemetry
        yet and probe a device that does send it.
        """
        deadline = time.monotonic() + timeout
        # Right after the swap the newest batch may still carry the old model's tag: any live source counts here.
        waiting = [d for d in devices if self._flowing(d, any_model=True)]
        while waiting and time.monotonic() < deadline:
            waiting = [d for d in waiting if self._from_telemetry(d, "p95_latency_ms", timeout) is None]
            if waiting:
                time.sleep(0.1)

    def _flowing(self, device_id: str, *, any_model: bool = False) -> bool:
        telemetry = self._telemetry
        feed = telemetry.feed(device_id) if telemetry is not None else None
        return bool(feed is not None and feed.last_received is not None
                    and time.time() - feed.last_received <= FRESH_S and feed.tags.get("source") not in (None, "none")
                    and (any_model or feed.tags.get("model_sha256") == self.model_tag))

    def invalidate(self) -> None:
        self.probe.invalidate()

    def __call__(self, device_id: str, metric: str, window_s: float) -> float | None:
        return self.read(device_id, metric, window_s)[0]

    def read(self, device_id: str, metric: str, window_s: float) -> tuple[float | None, str]:
        """The metric's value on the device and where it came from (``telemetry`` or ``probe``)."""
        value = self._from_telemetry(device_id, metric, window_s)
        if value is not None:
            return value, TELEMETRY
        return self.probe(device_id, metric, window_s), PROBE

    def _from_telemetry(self, device_id: str, metric: str, window_s: float) -> float | None:
        telemetry = self._telemetry
        with self._lock:
            activated = self._since.get(device_id)
        if telemetry is None or activated is None:
            return None
        if not self._flowing(device_id):
            return None
        now = time.time()
        telemetry.flush(timeout=1.0)
        since = max(activated, now - window_s)
        if metric in ("p95_latency_ms", "p50_latency_ms"):
            name = "latency_p95_ms" if metric == "p95_latency_ms" else "latency_p50_ms"
            frame = telemetry.query(name, devices=[device_id], since=since)
            if frame.empty:
                return None
            values = frame["value"]
            return float(values.max() if metric == "p95_latency_ms" else values.mean())
        if metric in ("error_rate", "errors"):
            frame = telemetry.query(["errors", "inference_count"], devices=[device_id], since=since)
            if frame.empty:
                return None
            growth = {}
            for name, rows in frame.sort_values("time").groupby("metric"):
                if len(rows) < 2:
                    return None
                growth[name] = float(rows["value"].iloc[-1] - rows["value"].iloc[0])
            errors, count = growth.get("errors"), growth.get("inference_count")
            if errors is None or count is None or errors < 0 or count <= 0:
                return None  # no inferences in the window, or the counters restarted: ask the probe
            return errors if metric == "errors" else errors / count
        return None
