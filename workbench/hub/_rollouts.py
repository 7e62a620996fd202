"""Rollouts run by the hub: they outlive the client that started them, and a hub restart finishes them safely.

Each rollout's progress is written to ``DATA_DIR/rollouts/<id>.json`` as it changes. A hub that
starts and finds a rollout that never finished (it was killed mid-rollout) does not guess where
to go on: it finds the devices that rollout had sent its install to from their retained desired
state on the broker (not from the record, which may be half a second behind), waits for those
installs to settle, sends every device that activated the new package back to its previous one,
and records the rollout as aborted with that reason. No device is left without a verified model:
an agent switches only between verified slots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench._files import write_private
from workbench.deploy._desired import desired_rollback
from workbench.deploy._gates import gate
from workbench.deploy._rollout import Rollout, _device_ids, context
from workbench.deploy._strategies import AllAtOnce, Canary, Shadow, Strategy, Waves
from workbench.errors import ConfigError, FleetTimeoutError, HubError
from workbench.protocol.keys import load_signing_key
from workbench.protocol.package import load_package
from workbench.protocol.states import TERMINAL
from workbench.telemetry._alerts import AlertRule
from workbench.telemetry._client import TelemetryViews
from workbench.telemetry._ingest import FeedInfo
from workbench.telemetry._time import Duration, Instant, epoch, seconds

if TYPE_CHECKING:
    import pandas as pd

    from workbench.fleet._fleet import Fleet
    from workbench.hub._service import Hub
    from workbench.protocol._bus import Bus
    from workbench.telemetry._ingest import PointsListener

log = logging.getLogger("workbench.hub")

STRATEGIES: dict[str, type[AllAtOnce] | type[Canary] | type[Shadow] | type[Waves]] = {
    "AllAtOnce": AllAtOnce, "Canary": Canary, "Shadow": Shadow, "Waves": Waves}
# Progress is written at most this often while a rollout runs (and always when it ends).
SAVE_EVERY_S = 0.5
INTERRUPTED = ("the hub stopped during this rollout; the devices it had activated were sent back to their previous "
               "package")


def strategy_spec(strategy: Strategy) -> dict[str, Any]:
    """A strategy as JSON for the hub; raises :class:`ConfigError` for one the hub cannot rebuild.

    Example:
        >>> strategy_spec(Canary(first=1, waves=[1.0]))["kind"]
        'Canary'
    """
    kind = type(strategy).__name__
    if STRATEGIES.get(kind) is not type(strategy):
        raise ConfigError(f"the hub runs Canary, Shadow and AllAtOnce rollouts, not {kind}: run a strategy of your own "
                          "in this process on a fleet started with `workbench up --no-hub`")
    return {"kind": kind, **asdict(strategy)}


def strategy_from_spec(spec: Any) -> Strategy:
    if not isinstance(spec, dict) or spec.get("kind") not in STRATEGIES:
        raise ConfigError(f"unknown strategy {spec!r}: give {{'kind': 'Canary'|'Shadow'|'AllAtOnce', ...}}")
    fields = {k: v for k, v in spec.items() if k != "kind"}
    try:
        return STRATEGIES[spec["kind"]](**fields)
    except TypeError as exc:
        raise ConfigError(f"strategy {spec['kind']}: {exc}") from None


def _report(saved: dict[str, Any]) -> dict[str, Any]:
    """The report of a rollout a hub restart finished, in the shape of ``RolloutReport.to_dict()``."""
    return {"rollout_id": saved.get("rollout_id"), "package": saved.get("package") or {},
            "strategy": saved.get("strategy"), "status": saved.get("status"), "reason": saved.get("reason"),
            "devices": saved.get("rows") or [], "waves": saved.get("waves") or [],
            "gates": saved.get("gate_values") or [], "started": saved.get("started"),
            "finished": saved.get("finished"), "shadow": saved.get("shadow")}


class HubViews(TelemetryViews):
    """The hub's own store and ingestor as telemetry views, for the gates of the rollouts it runs."""

    def __init__(self, fleet: Fleet, hub: Hub) -> None:
        self.fleet = fleet
        self.hub = hub

    def query(self, metric: str | list[str], *, devices: str | list[str] | None = "all", since: Instant = "10m",
              until: Instant = None, every: Duration | None = None, agg: str = "mean") -> pd.DataFrame:
        now = time.time()
        return self.hub.query(metric, devices=self._devices(devices), since=epoch(since, now=now, what="since"),
                              until=epoch(until, now=now, what="until"),
                              every=seconds(every, "every") if every is not None else None, agg=agg)

    def counters(self) -> dict[str, dict[str, Any]]:
        return self.hub.stats()

    def feeds(self) -> dict[str, FeedInfo]:
        return self.hub.ingestor.feed_infos()

    def flush(self, timeout: float = 1.0) -> bool:
        return self.hub.wait_idle(timeout)

    def subscribe(self, metrics: list[str], listener: PointsListener) -> Callable[[], None]:
        return self.hub.subscribe(metrics, listener)

    def add_rule(self, name: str, metric: str, **conditions: Any) -> AlertRule:
        rule = AlertRule(name, metric, **conditions)
        self.hub.add_rule(rule)
        return rule

    def rules(self) -> list[AlertRule]:
        return self.hub.rules()

    def alerts(self, since: Instant = None) -> pd.DataFrame:
        return self.hub.alerts(epoch(since, what="since"))

    def close(self, timeout: float = 5.0) -> None:
        """Nothing to close: the hub owns the store."""


class HubRollouts:
    """The rollouts of one hub: started over its API, persisted, listed, and finished after a restart.

    ``connect`` makes the hub's fleet connection on first use (the hub receives without one).

    Example:
        >>> rollouts = HubRollouts(hub, connect=lambda bus: Fleet(hub_address, bus=bus))  # doctest: +SKIP
        >>> rollouts.start({"package": "/tmp/pkg", "strategy": {"kind": "Canary", "first": 1}})    # doctest: +SKIP
    """

    def __init__(self, hub: Hub, *, connect: Callable[[Bus | None], Fleet]) -> None:
        self.hub = hub
        self.folder = hub.data_dir / "rollouts"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._connect = connect
        self._fleet: Fleet | None = None
        self._running: dict[str, Rollout] = {}
        self._saved_at: dict[str, float] = {}
        self._lock = threading.RLock()
        self._recovering: list[threading.Thread] = []

    def fleet(self) -> Fleet:
        with self._lock:
            if self._fleet is None:
                fleet = self._connect(self.hub.bus)  # the hub's own connection, not a second one
                fleet.attach_telemetry(HubViews(fleet, self.hub))  # gates read the hub's store, not HTTP to itself
                self._fleet = fleet
            return self._fleet

    # -- starting ---------------------------------------------------------------------------------

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start a rollout from its JSON spec; returns its first snapshot.

        The spec names a signed package uploaded to this hub (``HubClient.upload_package``), the devices (ids or "all"),
        a strategy spec, gates (``gate()``'s arguments), and optionally max_failures,
        device_timeout and force.
        """
        if not isinstance(spec, dict):
            raise ConfigError("a rollout is a JSON object with package, devices, strategy and gates")
        path = spec.get("package")
        uploaded = (self.hub.data_dir / "packages").resolve()
        # Only what was uploaded, never any folder of the hub's disk a token holder names.
        if not isinstance(path, str) or Path(path).resolve().parent != uploaded or not Path(path).is_dir():
            raise ConfigError(f"package {str(path)[:200]!r} was not uploaded to this hub; send it first with "
                              "HubClient.upload_package (fleet.deploy does)")
        package = load_package(path)
        if not (Path(path) / "signature.json").exists():
            raise ConfigError(f"package {path} is not signed; fleet.deploy signs it before handing it to the hub")
        strategy = strategy_from_spec(spec.get("strategy") or {"kind": "AllAtOnce"})
        gates = []
        for entry in spec.get("gates") or []:
            if not isinstance(entry, dict):
                raise ConfigError(f"a gate is an object of gate()'s arguments, got {entry!r}")
            try:
                gates.append(gate(**entry))
            except TypeError as exc:
                raise ConfigError(f"gate {entry!r}: {exc}") from None
        fleet = self.fleet()
        self._known(fleet, spec.get("devices") or "all")
        targets = _device_ids(fleet, spec.get("devices") or "all")
        rollout = Rollout(fleet, package, targets, strategy=strategy, gates=gates, metrics=None,
                          max_failures=spec.get("max_failures"), device_timeout=float(spec.get("device_timeout", 120)),
                          artifacts=None, artifact_dir=None, force=bool(spec.get("force", False)))
        with self._lock:
            self._running[rollout.id] = rollout
        self._save(rollout, force=True)
        rollout.on_change(self._save)
        log.info("rollout %s of %s %s to %d device(s) started", rollout.id, package.name, package.version,
                 len(targets))
        return self.snapshot(rollout)

    @staticmethod
    def _known(fleet: Fleet, devices: Any, timeout: float = 10.0) -> None:
        """Give a fresh connection time to hear the named devices (or, for "all", until no new one appears)."""
        deadline = time.monotonic() + timeout
        if isinstance(devices, list) and all(isinstance(d, str) for d in devices):
            with contextlib.suppress(FleetTimeoutError):  # an unknown id is named by _device_ids next
                fleet.wait_until(lambda f: all(d in f for d in devices), timeout=timeout)
            return
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.5:
            count = len(fleet.devices)
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            time.sleep(0.05)

    # -- reading ----------------------------------------------------------------------------------

    @staticmethod
    def snapshot(rollout: Rollout) -> dict[str, Any]:
        report = rollout.wait(0) if rollout.done else None
        return {"rollout_id": rollout.id, "status": rollout.status, "reason": rollout.reason,
                "current_wave": rollout.current_wave, "done": rollout.done, "package": rollout.package.describe(),
                "strategy": type(rollout.strategy).__name__, "rows": rollout.rows(),
                "deployments": {d: p.deployment_id for d, p in rollout.devices.items()},
                "gate_values": list(rollout.gate_values), "waves": [dict(w) for w in rollout.waves],
                "shadow": rollout.shadow, "started": rollout.started, "finished": rollout.finished,
                "report": report.to_dict() if report is not None else None}

    def get(self, rollout_id: str) -> dict[str, Any]:
        with self._lock:
            running = self._running.get(rollout_id)
        if running is not None:
            return self.snapshot(running)
        if not rollout_id.isalnum():
            raise ConfigError(f"{rollout_id!r} is not a rollout id")
        path = self.folder / f"{rollout_id}.json"
        if not path.exists():
            raise HubError(f"no rollout {rollout_id} in this hub; fleet.rollouts() lists them")
        return dict(json.loads(path.read_text()))

    def summaries(self) -> list[dict[str, Any]]:
        """Every rollout this hub ran or runs, newest first: id, package, status, reason, times."""
        entries = []
        for path in self.folder.glob("*.json"):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            package = entry.get("package") or {}
            entries.append({"rollout_id": entry.get("rollout_id"), "package": package.get("name"),
                            "version": package.get("version"), "strategy": entry.get("strategy"),
                            "status": entry.get("status"), "reason": entry.get("reason"), "done": entry.get("done"),
                            "started": entry.get("started"), "finished": entry.get("finished")})
        return sorted(entries, key=lambda e: e.get("started") or 0, reverse=True)

    # -- persistence and restart -----------------------------------------------------------------------

    def _save(self, rollout: Rollout, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not rollout.done and now - self._saved_at.get(rollout.id, 0.0) < SAVE_EVERY_S:
            return
        self._saved_at[rollout.id] = now
        try:
            write_private(self.folder / f"{rollout.id}.json", json.dumps(self.snapshot(rollout), default=str))
        except OSError as exc:  # the rollout goes on; its record is behind until the next write works
            log.warning("could not record rollout %s: %s", rollout.id, exc)
        if rollout.done:
            with self._lock:
                self._running.pop(rollout.id, None)

    def recover(self) -> list[str]:
        """Finish, in the background, every rollout a previous hub left unfinished; returns their ids.

        Also connects to the fleet now, so the first rollout finds its devices known.
        """
        threading.Thread(target=self._connect_quietly, name="hub-fleet-connect", daemon=True).start()
        interrupted = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("unreadable rollout record %s; left as it is", path)
                continue
            if saved.get("done") is False and saved.get("rollout_id") not in self._running:
                interrupted.append(saved)
        for saved in interrupted:
            thread = threading.Thread(target=self._finish_interrupted, args=(saved,), daemon=True,
                                      name=f"recover-{saved['rollout_id']}")
            self._recovering.append(thread)
            thread.start()
        return [str(s["rollout_id"]) for s in interrupted]

    def _connect_quietly(self) -> None:
        try:
            self.fleet()
        except Exception as exc:  # the first rollout tries again, and says why
            log.warning("the hub could not connect to its fleet yet: %s", exc)

    def _finish_interrupted(self, saved: dict[str, Any], timeout: float = 120.0) -> None:
        rollout_id = str(saved["rollout_id"])
        try:
            state = context(self.fleet()).state
            state.settle()
            # Which devices this rollout had sent its install to: the retained desired state on the broker says so,
            # whatever the record managed to write before the hub died.
            deployments = {}
            for row in saved.get("rows") or []:
                desired = state.desired(str(row["device_id"]))
                if desired.get("rollout_id") == rollout_id and desired.get("action") == "install":
                    deployments[str(row["device_id"])] = str(desired.get("deployment_id"))
            # Installs already sent go on in the agents: wait until each has settled, then undo those that activated.
            deadline = time.monotonic() + timeout

            def settled(device: str) -> bool:
                report = state.reported(device)
                return report.get("deployment_id") != deployments[device] or report.get("state") in TERMINAL

            while time.monotonic() < deadline and not all(settled(d) for d in deployments):
                state.wait(lambda s: False, timeout=0.2)
            activated = [d for d, i in deployments.items()
                         if state.reported(d).get("deployment_id") == i and state.reported(d).get("state") == "active"]
            rollbacks = {}
            if activated:
                # Devices accept a rollback only with a grant signed by a key they trust: the hub's machine's
                # workbench key (never a key folder a token holder names).
                key = load_signing_key()
                for device in activated:
                    desired = desired_rollback(rollout_id=rollout_id, reason=INTERRUPTED, device_id=device, key=key)
                    rollbacks[device] = desired["deployment_id"]
                    state.set_desired(device, desired)
            while time.monotonic() < deadline and not all(
                    state.reported(d).get("deployment_id") == i and state.reported(d).get("state") in TERMINAL
                    for d, i in rollbacks.items()):
                state.wait(lambda s: False, timeout=0.2)
            rows = {row["device_id"]: row for row in saved.get("rows") or []}
            for device, deployment in rollbacks.items():
                report = state.reported(device)
                if report.get("deployment_id") == deployment:
                    rows[device] = {**rows.get(device, {"device_id": device}), "state": report.get("state"),
                                    "reason": INTERRUPTED}
            saved.update(status="aborted", reason=INTERRUPTED, done=True, finished=time.time(),
                         rows=list(rows.values()), current_wave=None)
            saved["report"] = _report(saved)
            log.warning("rollout %s was interrupted by a hub restart: %d device(s) sent back", rollout_id,
                        len(rollbacks))
        except Exception:  # never leave it looking like it runs: say so, and keep the record
            log.exception("finishing the interrupted rollout %s failed", rollout_id)
            saved.update(status="failed", reason=f"{INTERRUPTED}; finishing it failed (see the hub's log)", done=True)
            saved["report"] = _report(saved)
        write_private(self.folder / f"{rollout_id}.json", json.dumps(saved, default=str))

    def close(self) -> None:
        with self._lock:
            fleet, self._fleet = self._fleet, None
        if fleet is not None:
            fleet.close()
