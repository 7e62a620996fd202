"""The agent's sync service: a durable outbox, a sender paced to an emulated link, and the device twin.

Other parts of the agent queue items with ``agent.services["sync"].put(payload,
priority=..., kind=...)``; the item is on disk when ``put`` returns and leaves the
outbox only when the workbench has stored it (see :mod:`workbench.sync`).

The twin: the workbench publishes desired sync configuration, retained, on
``wb/v1/desired/{device}/sync`` (and the ``sync.configure`` command applies the same
keys at once). The device applies it and reports what it applied (``reported``, with
the ``desired`` it came from) in its sync state on ``wb/v1/dev/{device}/sync``.
Conflicts resolve one way: desired state is written only by the workbench, reported
state only by the device; a key the device cannot apply is reported with its error
and the old value stays in force.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from workbench.agent._commands import register_command
from workbench.agent._outbox import Outbox
from workbench.agent._sender import Sender
from workbench.agent._services import apply_desired, register_service
from workbench.agent._shaper import LinkShaper
from workbench.agent._tasks import Task, shared_pool
from workbench.errors import ConfigError, PayloadError, WorkbenchError
from workbench.protocol import schema, topics
from workbench.protocol.acks import decode_ack
from workbench.protocol.budget import Budget, check_budget
from workbench.protocol.codec import Codec
from workbench.protocol.links import LinkProfile, link_profile
from workbench.protocol.priority import PRIORITIES, priority_rank

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

log = logging.getLogger("workbench.agent.sync")

DEFAULTS: dict[str, Any] = {
    "link": "lan",               # a profile name or {"bandwidth_bps", "latency_ms", "loss", ...}
    "budget_mb_per_day": None,   # None: unmetered
    "max_mb": 256.0,             # the outbox's disk bound (payload bytes)
    "state_interval_s": 1.0,     # how often the sync state is reported
}


def validate_config(changes: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``changes`` into ``current`` (or the defaults); raise :class:`ConfigError` naming a bad key.

    Example:
        >>> validate_config({"link": "lte"})["link"]
        'lte'
    """
    config = dict(current or DEFAULTS)
    for key, value in changes.items():
        if key not in DEFAULTS:
            raise ConfigError(f"unknown sync setting {key!r}; known: {', '.join(sorted(DEFAULTS))}")
        if key == "link":
            link_profile(value)  # raises naming the problem
        elif key == "budget_mb_per_day":
            value = check_budget(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0.01 <= value <= (1e6 if key == "max_mb" else 3600)):
            raise ConfigError(f"sync setting {key} must be a positive number, got {value!r}")
        config[key] = value
    return config


class SyncService:
    """Per-device outbox, sender and twin (an :class:`AgentService`)."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        self.config = validate_config({}, {**DEFAULTS, **(agent.state.get("sync") or {})})
        self.desired: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.outbox = Outbox(agent.config.data_dir / "outbox.db", max_bytes=int(self.config["max_mb"] * 1e6))
        day = int(self.outbox.get_meta("budget_day", "-1") or -1)
        used = int(self.outbox.get_meta("budget_used", "0") or 0)
        self.budget = Budget(self.config["budget_mb_per_day"], day=day, used=used)
        self._saved_budget: tuple[int, int] | None = (day, used)
        self.shaper = LinkShaper(link_profile(self.config["link"]))
        self._topic = topics.outbox_topic(agent.device_id)
        self.sender = Sender(self.outbox, Codec(), self.shaper, self._publish, budget=self.budget,
                             online=lambda: agent.online, overhead_bytes=len(self._topic) + 4)
        self._stop = threading.Event()
        self._state_task = Task(f"{agent.device_id}: sync state", self._report_state)
        self._producers: list[threading.Thread] = []
        self._lock = threading.RLock()
        self.producer_error: str | None = None

    # -- AgentService ---------------------------------------------------------------------------

    def topics(self) -> list[str]:
        return [topics.sync_ack_topic(self.agent.device_id), topics.desired_topic(self.agent.device_id, "sync")]

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == topics.sync_ack_topic(self.agent.device_id):
            try:
                seqs = decode_ack(payload)
            except PayloadError as exc:
                kind = self.agent.rejected.reject(exc)
                self.agent.reject_log.count(self.agent.device_id, kind, f"sync ack: {exc}")
                return
            # The ack is an SQLite delete: on the shared workers, not on the network loop that delivers it.
            self.shaper.receive(lambda: self._ack_later(seqs))
        else:
            shared_pool().submit(self._apply_desired, payload)  # off the network loop: it writes files

    def _ack_later(self, seqs: list[int]) -> None:
        shared_pool().submit(self.sender.on_ack, seqs)

    def start(self) -> None:
        self.sender.start()
        self._state_task.start(float(self.config["state_interval_s"]))

    @property
    def stopped(self) -> bool:
        """True once the agent is shutting the service down: :meth:`put` is refused from then on."""
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._producers:
            thread.join(timeout=2)
        self.sender.stop()
        self._state_task.stop(timeout=2)
        self.shaper.close()
        self._save_budget()
        self.outbox.close()

    # -- the outbox -----------------------------------------------------------------------------

    def put(self, payload: bytes, *, priority: str | int = "normal", kind: str = "event") -> int | None:
        """Queue an item durably; returns its sequence number (None: dropped by the disk bound, counted)."""
        return self.put_many([payload], priority=priority, kind=kind)[0]

    def put_many(self, payloads: list[bytes], *, priority: str | int = "normal",
                 kind: str = "event") -> list[int | None]:
        """Queue items durably in one transaction; their sequence numbers (None: dropped by the disk bound)."""
        if self._stop.is_set():
            raise ConfigError(f"sync on {self.agent.device_id} is shutting down; the items were not queued")
        seqs = self.outbox.put_many(payloads, priority=priority, kind=kind)
        self.sender.wake()
        return seqs

    def put_state(self, state: dict[str, Any], *, priority: str = "high") -> int | None:
        """Sync a state dictionary by delta: only keys that changed since the last call are sent."""
        previous = json.loads(self.outbox.get_meta("state", "{}") or "{}")
        changed = {k: v for k, v in state.items() if previous.get(k, object()) != v}
        removed = [k for k in previous if k not in state]
        if not changed and not removed:
            return None
        seq = self.put(json.dumps({"set": changed, "removed": removed}).encode(), priority=priority, kind="state")
        self.outbox.set_meta("state", json.dumps(state))
        return seq

    def _publish(self, message: bytes) -> bool:
        info = self.agent.publish(self._topic, message, qos=1)
        return info.rc == 0

    # -- configuration (the twin) ---------------------------------------------------------------

    def configure(self, changes: dict[str, Any], *, desired: bool = False) -> dict[str, Any]:
        """Apply and persist sync settings; return the sync state with what is now applied."""
        with self._lock:
            config = validate_config(changes, self.config)
            if desired:
                self.desired = dict(changes)
            if "link" in changes:
                self.shaper.set_link(link_profile(config["link"]))
            if "budget_mb_per_day" in changes:
                self.budget.mb_per_day = config["budget_mb_per_day"]
            if "max_mb" in changes:
                self.outbox.max_bytes = int(config["max_mb"] * 1e6)
            self.config = config
            self.agent.state["sync"] = dict(config)
            self.agent.save_state()
            self.errors.clear()
            self.sender.wake()
            return self.state()

    def _apply_desired(self, payload: bytes) -> None:
        error = apply_desired(self.agent, payload, "sync", lambda body: self.configure(body, desired=True))
        if error is not None:
            self.errors["desired"] = error

    def partition(self, seconds: float) -> dict[str, Any]:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 86_400:
            raise ConfigError(f"partition seconds must be a number from 0 to 86400, got {seconds!r}")
        self.shaper.partition(float(seconds))
        return self.state()

    # -- sync state -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        link: LinkProfile = self.shaper.link
        return {
            "ts": time.time(),
            "device_id": self.agent.device_id,
            "link": link.to_dict(),
            "link_up": self.shaper.up(),
            "partitioned_for_s": self.shaper.partitioned_for,
            "backlog": self.outbox.backlog(),
            "outbox_bytes": self.outbox.bytes,
            "outbox_max_bytes": self.outbox.max_bytes,
            "counters": self.outbox.counters(),
            "sender": self.sender.stats(),
            "budget": self.budget.to_dict(),
            "desired": self.desired,
            "reported": dict(self.config),
            "errors": dict(self.errors),
            "producer_error": self.producer_error,
        }

    def _save_budget(self) -> None:
        # Two commits a second per device for an unchanged budget were most of an idle device's disk writes.
        saved = (self.budget.day, self.budget.used)
        if saved == self._saved_budget:
            return
        self.outbox.set_meta("budget_day", str(self.budget.day))
        self.outbox.set_meta("budget_used", str(self.budget.used))
        self._saved_budget = saved

    def _report_state(self) -> float:
        # A task on the shared workers; returns the seconds until the next report.
        try:
            self._save_budget()
            if self.agent.online:
                self.agent.publish(topics.sync_state_topic(self.agent.device_id), schema.encode(self.state()), qos=0,
                                   retain=True)
        except Exception:  # reporting must not end the service
            log.exception("%s: sync state report failed", self.agent.device_id)
        return float(self.config["state_interval_s"])

    # -- a load generator (tests, notebook, benchmark) ------------------------------------------

    def produce(self, count: int, *, priority: str = "normal", rate_hz: float = 100.0, size: int = 200,
                kind: str = "event") -> dict[str, Any]:
        """Queue ``count`` items of ``size`` bytes at ``rate_hz`` in a background thread.

        A command anyone on the broker may send must not fill the device's disk or CPU: the byte
        rate, the bytes of one call and the producers running at once are capped (issue 12, item 6).
        """
        rank = priority_rank(priority)
        for name, value, low, high in (("count", count, 1, 10_000_000), ("size", size, 16, 1_000_000),
                                       ("rate_hz", rate_hz, 0.01, 1e6)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"sync.produce {name} must be a number from {low} to {high}, got {value!r}")
        if rate_hz * size > MAX_PRODUCE_BYTES_PER_S:
            raise ConfigError(f"sync.produce would write {rate_hz * size / 2**20:.1f} MiB/s, over the device's cap of "
                              f"{MAX_PRODUCE_BYTES_PER_S // 2**20} MiB/s; lower rate_hz or size")
        if count * size > MAX_PRODUCE_BYTES:
            raise ConfigError(f"sync.produce would write {count * size / 2**20:.1f} MiB, over the cap of "
                              f"{MAX_PRODUCE_BYTES // 2**20} MiB for one call; lower count or size")
        self._producers = [t for t in self._producers if t.is_alive()]
        if len(self._producers) >= MAX_PRODUCERS:
            raise ConfigError(f"{MAX_PRODUCERS} sync.produce runs are still going on this device; wait for one "
                              "to finish before starting another")

        def run() -> None:
            period = 1.0 / float(rate_hz)
            next_at = time.monotonic()
            for index in range(int(count)):
                if self._stop.is_set():
                    return
                body = json.dumps({"i": index, "ts": time.time(), "priority": PRIORITIES[rank]})
                try:
                    self.put(body.encode().ljust(int(size)), priority=rank, kind=kind)
                except WorkbenchError as exc:  # the outbox's hard cap: stop, and say why in the sync state
                    self.producer_error = f"sync.produce stopped after {index} of {int(count)} items: {exc}"
                    log.warning("%s: %s", self.agent.device_id, self.producer_error)
                    return
                next_at += period
                self._stop.wait(max(next_at - time.monotonic(), 0.0))

        thread = threading.Thread(target=run, name="wb-sync-produce", daemon=True)
        self._producers.append(thread)
        thread.start()
        return {"producing": int(count), "priority": PRIORITIES[rank]}


# Caps on the load generator (issue 12, item 6): it exists for tests and demos, not to fill a device's disk.
MAX_PRODUCE_BYTES_PER_S = 16 * 2**20
MAX_PRODUCE_BYTES = 256 * 2**20
MAX_PRODUCERS = 4


def sync_service(agent: DeviceAgent) -> SyncService:
    """The device's sync service, or raise :class:`ConfigError` saying it is not running."""
    return agent.service("sync", SyncService)


@register_command("sync.configure")
def _configure(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    """Change sync settings (keys of DEFAULTS) now."""
    return sync_service(agent).configure(args)


@register_command("sync.partition")
def _partition(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    """Cut the device's sync link for ``seconds`` (0 heals it)."""
    return sync_service(agent).partition(args.get("seconds", 30.0))


@register_command("sync.status")
def _status(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    return sync_service(agent).state()


@register_command("sync.produce")
def _produce(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    """Generate test items: count, priority, rate_hz, size."""
    unknown = set(args) - {"count", "priority", "rate_hz", "size", "kind"}
    if unknown:
        raise ConfigError(f"unknown sync.produce arguments {', '.join(sorted(unknown))}; use count, priority, "
                          "rate_hz, size, kind")
    return sync_service(agent).produce(args.get("count", 100), priority=args.get("priority", "normal"),
                                       rate_hz=args.get("rate_hz", 100.0), size=args.get("size", 200),
                                       kind=str(args.get("kind", "event")))


register_service("sync", SyncService)
