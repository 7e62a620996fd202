"""Rollouts: preflight, waves, desired state, waiting for reports, soak with gates, rollback, history.

``fleet.deploy(...)`` returns a :class:`Rollout` at once; the rollout runs in a background
thread, so a notebook shows its progress live (a :class:`widgets.RolloutProgress` when it is
displayed) and :meth:`Rollout.wait` returns the :class:`RolloutReport`.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench._settings import settings
from workbench.deploy import _history
from workbench.deploy._desired import desired_install, desired_rollback, stage_package
from workbench.deploy._gates import Gate, MetricSource, ProbeMetrics
from workbench.deploy._preflight import preflight
from workbench.deploy._state import DeployState
from workbench.deploy._strategies import AllAtOnce, Outcome, Strategy, WaveResult, failure_limit
from workbench.errors import ConfigError, DeployConflictError, DeployError
from workbench.protocol.artifacts import ArtifactServer, ArtifactStore
from workbench.protocol.keys import load_signing_key
from workbench.protocol.package import Package, load_package, sign_package, verify_package
from workbench.protocol.states import TERMINAL

if TYPE_CHECKING:
    import pandas as pd

    from workbench.fleet._device import Device
    from workbench.fleet._fleet import Fleet

log = logging.getLogger("workbench.deploy")

# Devices being deployed by a rollout of this process: a second rollout to one of them is refused.
_BUSY: dict[str, str] = {}
_BUSY_LOCK = threading.Lock()
# A desired install older than this no longer blocks another rollout (its rollout is long gone).
CONFLICT_LEASE_S = 600.0
# Inferences per probe for relative gates: a p95 of 100 runs moves little when a few are preempted.
RELATIVE_PROBE_N = 100


@dataclass
class DeviceProgress:
    """One device in a rollout."""

    device_id: str
    wave: int | None = None
    state: str = "planned"
    reason: str | None = None
    deployment_id: str | None = None
    model: str | None = None
    started: float | None = None
    finished: float | None = None

    def row(self) -> dict[str, Any]:
        seconds = (self.finished - self.started) if self.started and self.finished else None
        return {"device_id": self.device_id, "wave": self.wave, "state": self.state, "reason": self.reason,
                "model": self.model, "seconds": seconds}


@dataclass
class RolloutReport:
    """What a rollout did: which devices run what, which rolled back and why.

    Example:
        >>> report = rollout.wait()          # doctest: +SKIP
        >>> report.status, report.counts     # doctest: +SKIP
        ('succeeded', {'active': 3})
    """

    rollout_id: str
    package: dict[str, Any]
    strategy: str
    status: str
    reason: str | None
    devices: list[dict[str, Any]]
    waves: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    started: float
    finished: float
    shadow: dict[str, Any] | None = None

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self.devices:
            counts[device["state"]] = counts.get(device["state"], 0) + 1
        return counts

    def to_frame(self) -> pd.DataFrame:
        """One row per device."""
        import pandas as pd

        return pd.DataFrame(self.devices, columns=["device_id", "wave", "state", "reason", "model", "seconds"])

    def wave_frame(self) -> pd.DataFrame:
        """One row per wave: devices, activated, failed, rolled back, time to activate p50/p95, durations.

        Example:
            >>> rollout.wait().wave_frame()[["index", "devices_n", "activated", "activate_p95_s"]]   # doctest: +SKIP
        """
        import pandas as pd

        return pd.DataFrame([{key: value for key, value in wave.items() if key != "devices"} for wave in self.waves],
                            columns=["index", *WAVE_FIGURES, "sent_s", "seconds", "duration_s", "started", "finished"])

    def to_dict(self) -> dict[str, Any]:
        return {"rollout_id": self.rollout_id, "package": self.package, "strategy": self.strategy,
                "status": self.status, "reason": self.reason, "counts": self.counts, "devices": self.devices,
                "waves": self.waves, "gates": self.gates, "started": self.started, "finished": self.finished,
                "shadow": self.shadow}

    def __str__(self) -> str:
        lines = [f"rollout {self.rollout_id} of {self.package.get('name')} {self.package.get('version')}: "
                 f"{self.status}" + (f" ({self.reason})" if self.reason else "")]
        for device in self.devices:
            lines.append(f"  {device['device_id']:<16} {device['state']:<12} {device['reason'] or ''}")
        return "\n".join(lines)


WAVE_FIGURES = ("devices_n", "activated", "failed", "rolled_back", "pending_offline", "activate_p50_s",
                "activate_p95_s")


def wave_figures(devices: list[DeviceProgress]) -> dict[str, Any]:
    """A wave's figures from its devices' progress: counts per outcome, and time to activate (sent to active).

    Times are as the rollout saw them (it polls every 0.2 s), not the devices' own clocks.

    Example:
        >>> done = [DeviceProgress("a", 0, "active", started=1.0, finished=2.0), DeviceProgress("b", 0, "failed")]
        >>> wave_figures(done)["activated"], wave_figures(done)["failed"], wave_figures(done)["activate_p95_s"]
        (1, 1, 1.0)
    """
    times = sorted(p.finished - p.started for p in devices
                   if p.state == "active" and p.started is not None and p.finished is not None)
    states = [p.state for p in devices]
    return {"devices_n": len(devices), "activated": states.count("active"),
            "failed": states.count("failed") + states.count("rejected"), "rolled_back": states.count("rolled_back"),
            "pending_offline": states.count("pending_offline"), "activate_p50_s": _percentile(times, 50),
            "activate_p95_s": _percentile(times, 95)}


def rollout_summary(rollout: Any) -> dict[str, Any]:
    """A rollout's status, devices per state and per-wave figures, from a :class:`Rollout` or a hub's rollout.

    Example:
        >>> rollout_summary(fleet.rollout("3f2a9c1b7d"))["counts"]   # doctest: +SKIP
        {'active': 1000}
    """
    rows = rollout.rows()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    waves = [{key: value for key, value in dict(info).items() if key != "devices"} for info in list(rollout.waves)]
    return {"rollout_id": rollout.id, "status": rollout.status, "reason": rollout.reason,
            "current_wave": rollout.current_wave, "devices": len(rows), "counts": counts, "waves": waves}


def _percentile(ordered: list[float], q: float) -> float | None:
    # Nearest rank: with a few devices per wave, interpolating between two of them invents a time nobody took.
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class _Context:
    """Per-fleet deployment machinery: the state watcher and the artifact server (made on first use)."""

    def __init__(self, fleet: Fleet) -> None:
        self.state = DeployState(fleet.bus)
        self.server: ArtifactServer | None = None
        self.lock = threading.Lock()

    def artifact_store(self, fleet: Fleet, directory: Path | None) -> ArtifactStore:
        """The local fleet's artifact server (it outlives this process), else one served from this process."""
        if directory is None and fleet.local_record is not None:
            from workbench.deploy._serve import store_for_record

            store = store_for_record(fleet.local_record)
            if store is not None:
                return store
        with self.lock:
            if self.server is None:
                env = settings()
                folder = directory or env.artifacts or Path.home() / ".workbench" / "artifacts"
                host = env.artifact_host or "127.0.0.1"
                self.server = ArtifactServer(folder, host=host).start()
            return self.server


_CONTEXTS: weakref.WeakKeyDictionary[Fleet, _Context] = weakref.WeakKeyDictionary()


def context(fleet: Fleet) -> _Context:
    """The fleet's deployment context; the artifact server and watcher live as long as the fleet object."""
    with _BUSY_LOCK:
        ctx = _CONTEXTS.get(fleet)
        if ctx is None:
            ctx = _CONTEXTS[fleet] = _Context(fleet)
        return ctx


def prepare_package(package: str | os.PathLike[str] | Package, keys_dir: str | os.PathLike[str] | None) -> Package:
    """A signed, verified package: sign an unsigned directory (an optimizer's output) with the workbench key."""
    key = load_signing_key(keys_dir, create=True)
    trusted = {key.key_id: key.private_key.public_key()}
    path = package.path if isinstance(package, Package) else Path(package)
    if not (path / "signature.json").exists():
        return sign_package(path, key)
    return verify_package(path, trusted)


class Rollout:
    """A running (or finished) rollout; ``wait()`` for the report.

    After ``import widgets``, displaying it in Jupyter shows its live :class:`widgets.RolloutProgress`
    (the widgets register that display; the core never imports them).

    Example:
        >>> rollout = fleet.deploy("out/digits-int8", strategy=workbench.Canary(first=1))   # doctest: +SKIP
        >>> rollout.wait().status                                                         # doctest: +SKIP
        'succeeded'
    """

    def __init__(self, fleet: Fleet, package: Package, targets: list[str], *, strategy: Strategy,
                 gates: Sequence[Gate], metrics: MetricSource | None, max_failures: int | float | None,
                 device_timeout: float, artifacts: ArtifactStore | None, artifact_dir: Path | None,
                 force: bool, keys_dir: str | os.PathLike[str] | None = None) -> None:
        self.fleet = fleet
        self.keys_dir = keys_dir  # the key that signs a rollback: devices trust the one that signed the package
        self.package = package
        self.strategy = strategy
        self.gates = list(gates)
        # Relative gates compare two readings of one kind: the same probe before the wave and during the soak
        # (telemetry windows and probes measure latency differently), or the caller's own source for both.
        self.relative_metrics: MetricSource = metrics or ProbeMetrics(fleet, n=RELATIVE_PROBE_N)
        if metrics is None and gates:
            from workbench.deploy._telemetry_gates import GateMetrics

            metrics = GateMetrics(fleet, model_sha256=str(package.describe()["model_sha256"]))
        self.metrics: MetricSource = metrics or ProbeMetrics(fleet)
        self.baselines: dict[str, dict[str, float | None]] = {}
        self.device_timeout = device_timeout
        self.id = uuid.uuid4().hex[:10]
        self.started = time.time()
        self.finished: float | None = None
        self.status = "running"
        self.reason: str | None = None
        self.current_wave: int | None = None
        self.waves: list[dict[str, Any]] = []
        self.gate_values: list[dict[str, Any]] = []
        self.shadow: dict[str, Any] | None = None
        self.devices = {d: DeviceProgress(d) for d in targets}
        self._ctx = context(fleet)
        self._server = artifacts or self._ctx.artifact_store(fleet, artifact_dir)
        self._listeners: list[Callable[[Rollout], None]] = []
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._report: RolloutReport | None = None
        self._failure_limit = failure_limit(strategy, len(targets), max_failures)
        self._ctx.state.settle()
        self._claim(force)
        self._thread = threading.Thread(target=self._run, name=f"rollout-{self.id}", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------

    def on_change(self, listener: Callable[[Rollout], None]) -> None:
        """Call ``listener(rollout)`` after every change (from the rollout's thread)."""
        self._listeners.append(listener)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> RolloutReport:
        """Block until the rollout finishes; return its report.

        Raises :class:`DeployError` when it is still running after ``timeout``.
        """
        if not self._done.wait(timeout):
            raise DeployError(f"rollout {self.id} still running after {timeout:g} s; wait longer or watch "
                              "its progress")
        assert self._report is not None
        return self._report

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.row() for d in self.devices.values()]

    def summary(self) -> dict[str, Any]:
        """Where the rollout stands: status, devices per state, and each wave's figures so far.

        A wave's figures (see :func:`wave_figures`) appear once its devices reached a final state;
        ``duration_s`` once its soak ended, ``rolled_back`` once an abort sent it back.

        Example:
            >>> rollout = fleet.deploy("out/digits-int8", strategy=workbench.Waves(size=500))   # doctest: +SKIP
            >>> waves = rollout.summary()["waves"]                                                   # doctest: +SKIP
            >>> [(w["devices_n"], w["activated"], w["activate_p95_s"]) for w in waves]             # doctest: +SKIP
            [(500, 500, 3.1), (500, 498, 2.9)]
        """
        with self._lock:
            return rollout_summary(self)

    def __repr__(self) -> str:
        return f"<Rollout {self.id} {self.package.name} {self.package.version}: {self.status}>"

    # -- internals -----------------------------------------------------------------------

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a UI bug must not stop the rollout
                log.exception("rollout listener failed")

    def _claim(self, force: bool) -> None:
        state = self._ctx.state
        with _BUSY_LOCK:
            busy = {d: r for d, r in _BUSY.items() if d in self.devices}
            if busy and not force:
                device, rollout = next(iter(busy.items()))
                raise DeployConflictError(f"device {device!r} is being deployed by rollout {rollout} in this "
                                          "session; wait for it (rollout.wait()) or pass force=True to supersede it")
            if not force:
                for device in self.devices:
                    desired, reported = state.desired(device), state.reported(device)
                    pending = desired.get("action") in ("install", "shadow") and not (
                        reported.get("deployment_id") == desired.get("deployment_id")
                        and reported.get("state") in TERMINAL)
                    fresh = time.time() - float(desired.get("set_at") or 0) < CONFLICT_LEASE_S
                    online = device in self.fleet and self.fleet[device].online
                    if pending and fresh and online:
                        raise DeployConflictError(
                            f"device {device!r} is being deployed {desired.get('name')} {desired.get('version')} "
                            f"by rollout {desired.get('rollout_id')} (state: {reported.get('state', 'pending')}); "
                            "wait for it to finish or pass force=True to supersede it")
            for device in self.devices:
                _BUSY[device] = self.id

    def _release(self) -> None:
        with _BUSY_LOCK:
            for device in self.devices:
                if _BUSY.get(device) == self.id:
                    del _BUSY[device]

    def _run(self) -> None:
        try:
            self._execute()
        except Exception as exc:  # the report must say what happened, whatever happened
            log.exception("rollout %s failed", self.id)
            self.status, self.reason = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self._finish()

    def _execute(self) -> None:
        eligible = []
        for device_id, progress in self.devices.items():
            inventory = self.fleet[device_id].inventory_data if device_id in self.fleet else {}
            reasons = preflight(self.package, inventory)
            if reasons:
                progress.state, progress.reason = "skipped", "; ".join(reasons)
            else:
                eligible.append(device_id)
        self._changed()
        if not eligible:
            self.status, self.reason = "failed", "no device passed preflight"
            return
        staged = stage_package(self.package, self._server)
        steps = self.strategy.steps(eligible)
        updated: list[str] = []
        result: WaveResult | None = None
        index = 0
        while True:
            try:
                wave = steps.send(result)  # type: ignore[arg-type]  # the first send must be None
            except StopIteration as stop:
                outcome: Outcome | None = stop.value
                break
            if wave.shadow is not None:
                self.shadow = wave.shadow
            self.current_wave = index
            wave_info: dict[str, Any] = {"index": index, "devices": wave.devices, "started": time.time()}
            if wave.action == "shadow":
                wave_info["shadow"] = True
            self.waves.append(wave_info)
            extra = None
            if wave.action == "install":
                self._measure_baselines(wave.devices)
            else:
                extra = {"action": wave.action, "duration": wave.duration_s}
            self._deploy_wave(index, wave.devices, staged, extra=extra, timeout=self.device_timeout + wave.duration_s)
            wave_info["finished"] = time.time()
            wave_info["seconds"] = time.time() - float(wave_info["started"])
            with self._lock:
                wave_info.update(wave_figures([self.devices[d] for d in wave.devices]))
            updated += [d for d in wave.devices if self.devices[d].state == "active" and d not in updated]
            failed = [d for d in eligible if self.devices[d].state in ("failed", "rejected")]
            if self._failure_limit is not None and len(failed) > self._failure_limit:
                self._abort(updated, f"{len(failed)} device(s) failed, over the limit of {self._failure_limit}")
                return
            problem = self._soak(updated)
            wave_info["duration_s"] = time.time() - float(wave_info["started"])
            self._changed()
            if problem:
                self._abort(updated, problem)
                return
            result = WaveResult({d: self._wave_entry(d) for d in wave.devices})
            index += 1
        if outcome is not None:
            self.status, self.reason = outcome.status, outcome.reason
            if outcome.shadow is not None:
                self.shadow = outcome.shadow
            return
        failed = [d for d in eligible if self.devices[d].state in ("failed", "rejected")]
        pending = [d for d in eligible if self.devices[d].state == "pending_offline"]
        self.status = "succeeded" if not failed and not pending else "partial"
        if failed or pending:
            self.reason = f"{len(failed)} failed, {len(pending)} offline (they install when back online)"

    def _wave_entry(self, device_id: str) -> dict[str, Any]:
        """A device's outcome in the wave just run, for the strategy: state, reason, and its report if current."""
        progress, report = self.devices[device_id], self._ctx.state.reported(device_id)
        current = report.get("deployment_id") == progress.deployment_id
        return {"state": progress.state, "reason": progress.reason, "report": report if current else None}

    def _deploy_wave(self, index: int, wave: list[str], staged: dict[str, Any], *,
                     extra: dict[str, Any] | None = None, timeout: float | None = None) -> None:
        state = self._ctx.state
        # One publish and PUBACK after another: publishing the whole wave at once was measured no faster on one
        # machine (a wave of 500: 26.2 s against 22.9 s; docs/scaling.md), the devices' installs being the limit.
        for device_id in wave:
            progress = self.devices[device_id]
            desired = {**desired_install(staged, rollout_id=self.id), **(extra or {})}
            progress.wave, progress.deployment_id, progress.started = index, desired["deployment_id"], time.time()
            progress.state = "sent"
            state.set_desired(device_id, desired)
        if self.waves and self.waves[-1].get("index") == index:  # how much of the wave was publishing its desired state
            self.waves[-1]["sent_s"] = time.time() - float(self.waves[-1]["started"])
        self._changed()
        self._await(wave, timeout)

    def _await(self, wave: list[str], timeout: float | None = None) -> None:
        state = self._ctx.state
        limit = self.device_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            waiting = []
            for device_id in wave:
                progress = self.devices[device_id]
                report = state.reported(device_id)
                if report.get("deployment_id") == progress.deployment_id and progress.state != report.get("state"):
                    progress.state = str(report.get("state"))
                    progress.reason = report.get("reason")
                    active = report.get("active") or {}
                    progress.model = f"{active.get('name')} {active.get('version')}" if active else None
                    if progress.state in TERMINAL:
                        progress.finished = time.time()
                    if progress.state == "active" and hasattr(self.metrics, "activated"):
                        self.metrics.activated(device_id, float(report.get("finished") or time.time()))
                    self._changed()
                if progress.state in TERMINAL or progress.state == "pending_offline":
                    continue
                online = device_id in self.fleet and self.fleet[device_id].online
                if not online and report.get("deployment_id") != progress.deployment_id:
                    progress.state = "pending_offline"
                    progress.reason = "offline: the retained desired state installs it when the device returns"
                    self._changed()
                    continue
                waiting.append(device_id)
            if not waiting:
                return
            if time.monotonic() > deadline:
                for device_id in waiting:
                    progress = self.devices[device_id]
                    progress.reason = f"no final state within {limit:g} s (last: {progress.state})"
                    progress.state = "failed"
                self._changed()
                return
            state.wait(lambda s: False, timeout=0.2)

    def _measure_baselines(self, wave: list[str]) -> None:
        """Each relative gate's metric on each device of the wave with the model it runs now (None: no model)."""
        metrics = sorted({g.metric for g in self.gates if g.relative})
        if not metrics:
            return
        self._invalidate()
        for device_id in wave:
            # A long window: one probe answers every metric of the device (the caches were just cleared).
            values = {m: self.relative_metrics(device_id, m, 60.0) for m in metrics}
            with self._lock:
                self.baselines[device_id] = values
        self._invalidate()  # the soak must measure the new model, not reuse these readings

    def _invalidate(self) -> None:
        """Forget cached readings of every metric source: what the devices run has changed."""
        for source in (self.metrics, self.relative_metrics):
            invalidate = getattr(source, "invalidate", None)
            if invalidate is not None:
                invalidate()

    def _read_gate(self, gate: Gate, updated: list[str]) -> tuple[dict[str, float | None], dict[str, str]]:
        """The gate's metric on each updated device, and where each value came from."""
        if gate.relative:
            source = self.relative_metrics
            values = {d: source(d, gate.metric, gate.window_s) for d in updated}
            name = "probe" if isinstance(source, ProbeMetrics) else type(source).__name__
            return values, dict.fromkeys(updated, name)
        read = getattr(self.metrics, "read", None)
        if read is not None:
            readings = {d: read(d, gate.metric, gate.window_s) for d in updated}
            return {d: v for d, (v, _) in readings.items()}, {d: s for d, (_, s) in readings.items()}
        return ({d: self.metrics(d, gate.metric, gate.window_s) for d in updated},
                {d: type(self.metrics).__name__ for d in updated})

    def _soak(self, updated: list[str]) -> str | None:
        if not self.gates or not updated:
            return None
        soak = max(self.strategy.soak_s, 0.0)
        self._invalidate()
        settle = getattr(self.metrics, "settle", None)
        if settle is not None:
            settle(updated)
        end = time.monotonic() + soak
        while True:
            for gate in self.gates:
                values, sources = self._read_gate(gate, updated)
                with self._lock:
                    baselines = {d: self.baselines.get(d, {}).get(gate.metric) for d in updated}
                failing = {d: v for d, v in values.items() if not gate.passes(v, baselines[d])}
                numbers = [v for v in values.values() if v is not None]
                worst = max(numbers) if gate.op in ("<=", "<") and numbers else min(numbers) if numbers else None
                entry = {"ts": time.time(), "wave": self.current_wave, "gate": str(gate), "metric": gate.metric,
                         "value": worst, "passed": not failing, "devices": values, "sources": sources}
                if gate.relative:
                    entry["baselines"] = baselines
                with self._lock:
                    self.gate_values.append(entry)
                self._changed()
                if failing:
                    device, value = next(iter(failing.items()))
                    return f"gate {gate} failed on {device} ({_shown(gate, value, baselines[device])}, " \
                           f"from {sources[device]})"
            if time.monotonic() >= end:
                return None
            time.sleep(min(1.0, max(0.05, end - time.monotonic())))
            self._invalidate()

    def _abort(self, updated: list[str], reason: str) -> None:
        self.status, self.reason = "aborted", reason
        state = self._ctx.state
        try:
            key = load_signing_key(self.keys_dir)
        except ConfigError as exc:  # without the key no device would accept the rollback: say so, send nothing
            for device_id in updated:
                self.devices[device_id].reason = f"{reason}; not rolled back: {exc}"
            self._changed()
            return
        for device_id in updated:
            progress = self.devices[device_id]
            desired = desired_rollback(rollout_id=self.id, reason=reason, device_id=device_id, key=key)
            progress.deployment_id, progress.state, progress.reason = desired["deployment_id"], "rolling_back", reason
            state.set_desired(device_id, desired)
        for progress in self.devices.values():
            if progress.state == "planned":
                progress.state, progress.reason = "not_started", f"rollout aborted: {reason}"
        self._changed()
        self._await(updated)
        for device_id in updated:
            progress = self.devices[device_id]
            if progress.state == "rolled_back":
                progress.reason = reason
        with self._lock:
            for info in self.waves:
                info["rolled_back"] = sum(1 for d in info["devices"] if self.devices[d].state == "rolled_back")
                info.setdefault("duration_s", time.time() - float(info["started"]))

    def _finish(self) -> None:
        self.finished = time.time()
        self.current_wave = None
        self._release()
        report = RolloutReport(
            self.id, self.package.describe(), type(self.strategy).__name__, self.status, self.reason, self.rows(),
            [dict(w) for w in self.waves], list(self.gate_values), self.started, self.finished, self.shadow)
        self._report = report
        counts = report.counts
        try:
            _history.append({
                "rollout_id": self.id, "started": self.started, "finished": self.finished, "user": _user(),
                "package": self.package.name, "version": self.package.version, "package_id": self.package.id,
                "strategy": report.strategy, "status": self.status, "reason": self.reason,
                "devices": len(self.devices), "active": counts.get("active", 0),
                "failed": counts.get("failed", 0) + counts.get("rejected", 0),
                "rolled_back": counts.get("rolled_back", 0), "skipped": counts.get("skipped", 0),
                "pending": counts.get("pending_offline", 0), "broker": self.fleet.address.url})
        except OSError as exc:
            log.warning("could not record rollout %s in the history: %s", self.id, exc)
        self._done.set()
        self._changed()


def _shown(gate: Gate, value: float | None, baseline: float | None) -> str:
    """``p95_latency_ms = 6.256``, and for a relative gate what the device measured before."""
    shown = f"{gate.metric} = {'no data' if value is None else f'{value:.4g}'}"
    if gate.relative and baseline is not None:
        shown += f", {gate.relative_to} model {baseline:.4g}"
        if baseline < gate.floor:
            shown += f" (counted as the floor {gate.floor:g})"
    return shown


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _device_ids(fleet: Fleet, devices: Any) -> list[str]:
    if devices is None or devices == "all":
        return [d.device_id for d in fleet.devices]
    if isinstance(devices, str):
        devices = [devices]
    ids = []
    for entry in devices:
        device_id = entry if isinstance(entry, str) else getattr(entry, "device_id", None)
        if not isinstance(device_id, str):
            raise ConfigError(f"devices must be device ids or Device objects, got {entry!r}")
        fleet[device_id]  # raises UnknownDeviceError naming the known ids
        ids.append(device_id)
    if not ids:
        raise ConfigError("no devices to deploy to; pass devices=fleet.where(...) matching at least one device")
    return list(dict.fromkeys(ids))


def deploy(
    fleet: Fleet,
    package: str | os.PathLike[str] | Package,
    devices: Sequence[str | Device] | str | None = None,
    *,
    strategy: Strategy | None = None,
    gates: Sequence[Gate] = (),
    metrics: MetricSource | None = None,
    max_failures: int | float | None = None,
    device_timeout: float = 120.0,
    keys_dir: str | os.PathLike[str] | None = None,
    artifacts: ArtifactStore | str | None = None,
    artifact_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Rollout:
    """Deploy a model package to devices of ``fleet``; returns the running :class:`Rollout`.

    The package is signed with the workbench key if it is not yet (an optimizer's output),
    verified, put into the artifact store and set as each device's desired model wave by
    wave. The store is, in order: ``artifacts`` (an :class:`ArtifactStore`, or a base URL
    together with ``artifact_dir``, the directory that server serves), the artifact server
    process of a local fleet (``workbench up``), or a server in this process. ``metrics`` is
    where gates read live values (default: the deployed devices' telemetry where it flows,
    a real probe on the device otherwise). ``strategy=workbench.Shadow(...)`` runs the
    candidate beside the active model instead, then promotes or discards it.

    Raises :class:`DeployConflictError` when another rollout is deploying to one of the devices.

    Example:
        >>> rollout = fleet.deploy("out/digits-int8", devices=fleet.where(profile="raspberry-pi-5"),
        ...                        strategy=workbench.Canary(first=1, waves=[0.5, 1.0]),
        ...                        gates=[workbench.gate("p95_latency_ms", "<=", 20)])   # doctest: +SKIP
        >>> rollout.wait().status                                                      # doctest: +SKIP
        'succeeded'
    """
    strategy = strategy or AllAtOnce()
    if not callable(getattr(strategy, "steps", None)) or not hasattr(strategy, "soak_s"):
        raise ConfigError(f"unknown strategy {strategy!r}; use workbench.Canary(...), workbench.Shadow(...) "
                          "or leave it out for all at once (a strategy of your own needs steps(devices), soak_s "
                          "and max_failures)")
    if isinstance(artifacts, str):
        if artifact_dir is None:
            raise ConfigError(f"artifacts={artifacts!r} names a server; also pass artifact_dir=, the directory it "
                              "serves as BASE_URL/artifacts/<sha256>, so the package can be put there")
        artifacts = ArtifactStore(artifact_dir, artifacts)
    signed = prepare_package(package, keys_dir)
    targets = _device_ids(fleet, devices)
    return Rollout(fleet, signed, targets, strategy=strategy, gates=gates, metrics=metrics,
                   max_failures=max_failures, device_timeout=device_timeout, artifacts=artifacts,
                   artifact_dir=Path(artifact_dir) if artifact_dir else None, force=force, keys_dir=keys_dir)


def history(fleet: Fleet | None = None) -> pd.DataFrame:
    """Every recorded rollout (of ``fleet``'s broker when given): who, what, when, result.

    Example:
        >>> fleet.history()[["package", "status"]].tail(1)   # doctest: +SKIP
    """
    return _history.read(broker=fleet.address.url if fleet is not None else None)


__all__ = ["DeviceProgress", "Rollout", "RolloutReport", "deploy", "history", "load_package", "rollout_summary",
           "wave_figures"]
