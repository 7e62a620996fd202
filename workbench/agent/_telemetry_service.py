"""The agent's telemetry service: runs inference on a source and queues metrics in binary batches.

Configured per device by the ``telemetry.configure`` command or the retained desired
state ``wb/v1/desired/{device}/telemetry`` (both take the same keys, see
:data:`DEFAULTS`); the configuration persists in the device's state.

Every ``publish_interval_s`` the publisher drains the window's points, adds the
device metrics (CPU, memory, disk, temperature where a sensor exists, uptime) and
queues them in batches of at most ``batch_size`` points, each with the next sequence
number, in the device's sync outbox (kind ``telemetry``, priority ``priority``). The
outbox is the one way to the workbench: a batch is on disk when queued, survives a
broker outage, a partition or ``kill -9``, and leaves the device only once the
workbench has committed it to its telemetry store. It keeps being produced while the
device is offline. Sequence numbers start at ``boot << 32`` with a boot counter kept
in the device's state, so they only ever grow, across restarts too.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from workbench.agent._commands import register_command
from workbench.agent._inference import SOURCES, InferenceLoop, Metrics, Point
from workbench.agent._services import apply_desired, register_service
from workbench.agent._sync_service import SyncService, sync_service
from workbench.agent._tasks import Task, shared_pool
from workbench.errors import ConfigError
from workbench.protocol import topics
from workbench.protocol.priority import PRIORITIES
from workbench.protocol.wire import encode_batch

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

log = logging.getLogger("workbench.agent.telemetry")

# Sources that run inputs through the active model (the others report device metrics or synthetic points).
MODEL_SOURCES = ("digits", "sensors", "http")

# The synthetic load generator's cap (issue 12, item 6): the benchmarks offer 1 M points/s to a whole fleet.
MAX_SYNTHETIC_POINTS_PER_S = 2_000_000

DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "publish_interval_s": 1.0,
    "batch_size": 500,
    "qos": 1,                   # unused: the outbox always sends at QoS 1 (kept so old configs still apply)
    "priority": "normal",       # the outbox priority of telemetry batches (evictable under the disk bound)
    "source": "none",           # digits | sensors | synthetic | http | none
    "rate_hz": 10.0,
    "confidence_threshold": 0.5,
    "sensor_activities": ["Standing", "Walking"],
    "window": 20,
    "http_port": 0,
    "synthetic_points_per_s": 0,
}
_LIMITS = {"publish_interval_s": (0.01, 3600.0), "batch_size": (1, 100_000), "qos": (0, 1), "rate_hz": (0.01, 10_000.0),
           "confidence_threshold": (0.0, 1.0), "window": (1, 10_000), "http_port": (0, 65535),
           "synthetic_points_per_s": (0, MAX_SYNTHETIC_POINTS_PER_S)}


# Serving a file named by a command let anyone who can publish a command serve an unsigned model (issue 12, row 7).
MODEL_BY_PATH_REFUSED = ("telemetry setting 'model' is refused: a device serves only signed packages it has verified; "
                         "deploy one first (fleet.deploy(workbench.deploy.build_package(MODEL.onnx, OUT_DIR).path)), "
                         "then configure the source; the telemetry settings are unchanged")


def validate_config(changes: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``changes`` into ``current`` (or the defaults); raise :class:`ConfigError` naming a bad key.

    Example:
        >>> validate_config({"rate_hz": 5})["rate_hz"]
        5.0
    """
    config = dict(current or DEFAULTS)
    config.pop("model", None)  # a setting older agents kept; a device no longer serves a file by its path
    for key, value in changes.items():
        if key == "model":
            raise ConfigError(MODEL_BY_PATH_REFUSED)
        if key not in DEFAULTS:
            raise ConfigError(f"unknown telemetry setting {key!r}; known: {', '.join(sorted(DEFAULTS))}")
        if key in _LIMITS:
            low, high = _LIMITS[key]
            kind = int if isinstance(low, int) and isinstance(high, int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"telemetry setting {key} must be a number from {low} to {high}, got {value!r}")
            value = kind(value)
        elif key == "priority" and value not in PRIORITIES:
            raise ConfigError(f"telemetry priority must be one of {', '.join(PRIORITIES)}, got {value!r}")
        elif key == "source" and value not in SOURCES:
            raise ConfigError(f"unknown telemetry source {value!r}; choose one of {', '.join(SOURCES)}")
        elif key == "enabled" and not isinstance(value, bool):
            raise ConfigError(f"telemetry setting enabled must be true or false, got {value!r}")
        config[key] = value
    return config


class TelemetryService:
    """Per-device inference loop plus batched publisher (an :class:`AgentService`)."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        self.config = validate_config({}, {**DEFAULTS, **(agent.state.get("telemetry") or {})})
        self.metrics = Metrics()
        self.loop: InferenceLoop | None = None
        self.batches_sent = 0  # queued in the outbox
        self.points_sent = 0
        self.batches_dropped = 0  # refused by the outbox's disk bound (counted there too)
        self._seq = 0
        self._lock = threading.RLock()
        self._synthetic_carry = 0.0
        # A task on the process's shared workers, not a thread per device; configure() wakes it.
        self._task = Task(f"{agent.device_id}: telemetry", self._publish_round)
        self._started = False
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement

    # -- AgentService --------------------------------------------------------------------------

    def topics(self) -> list[str]:
        return [topics.desired_topic(self.agent.device_id, "telemetry")]

    def on_message(self, topic: str, payload: bytes) -> None:
        # A retained desired state arrives on every connect; apply it off the network loop (it writes files).
        shared_pool().submit(self._apply_desired, payload)

    def start(self) -> None:
        boot = int(self.agent.state.get("telemetry_boot", 0)) + 1
        self.agent.state["telemetry_boot"] = boot
        self.agent.save_state()
        self._seq = boot << 32
        self._restart_loop()
        self._started = True
        self._task.start(float(self.config["publish_interval_s"]))

    def stop(self) -> None:
        self._task.stop(timeout=5)
        with self._lock:
            if self.loop is not None:
                self.loop.stop()

    # -- configuration ------------------------------------------------------------------------------

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply and persist new settings; restart the inference loop; return the full config."""
        with self._lock:
            config = validate_config(changes, self.config)
            self._check_servable(changes, config)
            self.config = config
            self.agent.state["telemetry"] = dict(config)
            self.agent.save_state()
            if self._started:
                self._restart_loop()
            self._task.wake()
            return self.status()

    def _check_servable(self, changes: dict[str, Any], config: dict[str, Any]) -> None:
        # Without a model, a serving source would be accepted and then serve nothing, silently.
        source = config["source"]
        if ("source" in changes and source in MODEL_SOURCES and config["enabled"]
                and self.agent.runtime.active is None):
            raise ConfigError(
                f"device {self.agent.device_id} has no model to serve telemetry source {source!r}: deploy a model "
                "first (fleet.deploy(package)); its telemetry settings are unchanged")

    def _apply_desired(self, payload: bytes) -> None:
        apply_desired(self.agent, payload, "telemetry", self.configure)

    def _restart_loop(self) -> None:
        with self._lock:
            if self.loop is not None:
                self.loop.stop()
            self.loop = InferenceLoop(self.agent.runtime, self.metrics, self.config)
            if self.config["enabled"]:
                self.loop.start()

    def status(self) -> dict[str, Any]:
        loop = self.loop
        return {"config": dict(self.config), "seq": self._seq, "batches_sent": self.batches_sent,
                "points_sent": self.points_sent, "batches_dropped": self.batches_dropped,
                "http_port": loop.http_port if loop else None,
                "queued_results": len(loop.results) if loop else 0}

    # -- publishing -----------------------------------------------------------------------------------

    def _device_metrics(self, now: float) -> list[Point]:
        points: list[Point] = [
            (now, "cpu_percent", self._process.cpu_percent(None)),
            (now, "memory_mb", self._process.memory_info().rss / 2**20),
            (now, "uptime_s", now - self.agent.started_at),
        ]
        try:
            points.append((now, "disk_free_mb", shutil.disk_usage(self.agent.config.data_dir).free / 2**20))
        except OSError:
            pass
        read_temperatures = getattr(psutil, "sensors_temperatures", None)
        if read_temperatures is not None:
            try:
                readings = [t.current for entries in read_temperatures().values() for t in entries if t.current]
            except (OSError, RuntimeError):
                readings = []
            if readings:  # absent, never invented, where the hardware has no sensor
                points.append((now, "temperature_c", float(max(readings))))
        return points

    def _tags(self) -> dict[str, Any]:
        model = self.agent.runtime.active
        return {"model": model.name if model else None, "model_version": model.version if model else None,
                "model_sha256": model.sha256[:12] if model else None, "instance": self.agent.instance,
                "source": self.config["source"]}

    def _publish_round(self) -> float:
        # One round of the task; returns the seconds until the next.
        interval = float(self.config["publish_interval_s"])
        if not self.config["enabled"]:
            return interval  # offline is fine: the outbox keeps the batches until the link is back
        now = time.time()
        points, summary = self.metrics.drain()
        points += [(now, name, value) for name, value in summary.items()]
        points += self._device_metrics(now)
        try:
            self._publish(points)
            rate = float(self.config["synthetic_points_per_s"])
            if rate > 0:
                self._synthetic_carry += rate * interval
                count = int(self._synthetic_carry)
                self._synthetic_carry -= count
                self._publish_synthetic(count, now)
        except Exception:  # a publish bug must not end the device's telemetry
            log.exception("%s: telemetry publish failed", self.agent.device_id)
        return interval

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _outbox(self) -> SyncService:
        return sync_service(self.agent)

    def _queue(self, batches: list[tuple[bytes, int]]) -> None:
        """Queue encoded batches (raw, points) in the outbox in one transaction: a commit per batch cost more
        than encoding it (profiled: ~0.6 ms per 500-point batch)."""
        if not batches:
            return
        service = self._outbox()
        if service.stopped:  # the agent is shutting down (sync stops first); the points end with the process
            return
        seqs = service.put_many([raw for raw, _ in batches], priority=str(self.config["priority"]), kind="telemetry")
        for seq, (_, points) in zip(seqs, batches, strict=True):
            if seq is None:
                self.batches_dropped += 1
                continue
            self.batches_sent += 1
            self.points_sent += points

    def _publish(self, points: list[Point]) -> None:
        size = int(self.config["batch_size"])
        tags = self._tags()
        batches = []
        for start in range(0, len(points), size):
            chunk = points[start:start + size]
            names: dict[str, int] = {}
            index = np.fromiter((names.setdefault(p[1], len(names)) for p in chunk), dtype=np.uint16, count=len(chunk))
            ts = np.fromiter((p[0] for p in chunk), dtype=np.float64, count=len(chunk))
            values = np.fromiter((p[2] for p in chunk), dtype=np.float64, count=len(chunk))
            raw = encode_batch(self.agent.device_id, self._next_seq(), ts, list(names), index, values, tags=tags)
            batches.append((raw, len(chunk)))
        self._queue(batches)

    def _publish_synthetic(self, count: int, now: float) -> None:
        # A load generator for benchmarks: columns are built with numpy, not point by point.
        size = int(self.config["batch_size"])
        names = [f"synthetic_{i}" for i in range(10)]
        tags = {"source": "synthetic"}
        index = (np.arange(size) % len(names)).astype(np.uint16)
        values = np.random.default_rng(self._seq & 0xFFFF).normal(size=size)
        batches = []
        for start in range(0, count, size):
            n = min(size, count - start)
            ts = now + np.arange(n) * 1e-6
            raw = encode_batch(self.agent.device_id, self._next_seq(), ts, names, index[:n], values[:n],
                               sent=time.time(), tags=tags)
            batches.append((raw, n))
            if len(batches) >= 64:  # bounded transactions: the sender reads the outbox meanwhile
                self._queue(batches)
                batches = []
        self._queue(batches)


def _service(agent: DeviceAgent) -> TelemetryService:
    return agent.service("telemetry", TelemetryService)


@register_command("telemetry.configure")
def _configure(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    """Change the device's telemetry and inference settings (keys of DEFAULTS)."""
    return _service(agent).configure(args)


@register_command("telemetry.status")
def _status(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return _service(agent).status()


register_service("telemetry", TelemetryService)
