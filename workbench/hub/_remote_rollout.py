"""``fleet.deploy`` on a fleet with a hub: the hub runs the rollout; this is a handle that follows it.

The handle has what :class:`~workbench.deploy.Rollout` shows (status, waves, per-device rows, gate
readings, ``wait()``, ``on_change``), read from the hub every half second by one thread while the
rollout runs. Closing the notebook leaves the rollout running in the hub; ``fleet.rollout(id)``
from any client follows it again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from workbench.deploy._gates import Gate, MetricSource
from workbench.deploy._rollout import RolloutReport, _device_ids, prepare_package
from workbench.deploy._strategies import AllAtOnce, Strategy
from workbench.errors import ConfigError, DeployError, WorkbenchError
from workbench.hub._rollouts import strategy_spec

if TYPE_CHECKING:
    import pandas as pd

    from workbench.fleet._fleet import Fleet
    from workbench.hub._client import HubClient
    from workbench.protocol.package import Package

log = logging.getLogger("workbench.deploy")

POLL_S = 0.5


@dataclass(frozen=True)
class PackageInfo:
    """The name and version of a rollout's package, as the progress widget shows them."""

    name: str
    version: str


class HubRollout:
    """A rollout the fleet's hub runs, followed from this process.

    Example:
        >>> rollout = fleet.deploy("out/digits", strategy=workbench.Canary(first=1))   # doctest: +SKIP
        >>> rollout.wait(timeout=120).status                                         # doctest: +SKIP
        'succeeded'
    """

    def __init__(self, hub: HubClient, snapshot: dict[str, Any]) -> None:
        self.hub = hub
        self.id = str(snapshot["rollout_id"])
        self._snapshot: dict[str, Any] = {}
        self._listeners: list[Callable[[HubRollout], None]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._closed = threading.Event()
        self.poll_errors = 0
        self._apply(snapshot)
        self._thread: threading.Thread | None = None
        if not self._done.is_set():
            self._thread = threading.Thread(target=self._follow, name=f"hub-rollout-{self.id}", daemon=True)
            self._thread.start()

    # -- what the hub says ------------------------------------------------------------------------

    def _apply(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            changed = snapshot != self._snapshot
            self._snapshot = snapshot
        if snapshot.get("done"):
            self._done.set()
        if changed:
            for listener in list(self._listeners):
                try:
                    listener(self)
                except Exception:  # a UI bug must not stop following the rollout
                    log.exception("rollout listener failed")

    def _follow(self) -> None:
        while not self._done.is_set() and not self._closed.is_set():
            self._closed.wait(POLL_S)
            if self.hub.closed:  # the fleet that started it was closed: the rollout goes on in the hub
                return
            try:
                self._apply(self.hub.rollout(self.id))
            except WorkbenchError:  # the hub restarting: keep asking; the rollout's record survives it
                self.poll_errors += 1
            except Exception:  # never die silently: count it and go on
                self.poll_errors += 1
                log.exception("following rollout %s failed", self.id)

    def refresh(self) -> HubRollout:
        """Read the rollout's state from the hub now."""
        self._apply(self.hub.rollout(self.id))
        return self

    def _get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._snapshot.get(key, default)

    @property
    def status(self) -> str:
        return str(self._get("status", "running"))

    @property
    def reason(self) -> str | None:
        return self._get("reason")

    @property
    def current_wave(self) -> int | None:
        return self._get("current_wave")

    @property
    def package(self) -> PackageInfo:
        package = self._get("package") or {}
        return PackageInfo(str(package.get("name")), str(package.get("version")))

    @property
    def gate_values(self) -> list[dict[str, Any]]:
        return list(self._get("gate_values") or [])

    @property
    def waves(self) -> list[dict[str, Any]]:
        return list(self._get("waves") or [])

    @property
    def shadow(self) -> dict[str, Any] | None:
        return self._get("shadow")

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def rows(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._get("rows") or []]

    def summary(self) -> dict[str, Any]:
        """Status, devices per state and per-wave figures, as the hub last said (see ``Rollout.summary``)."""
        from workbench.deploy._rollout import rollout_summary

        return rollout_summary(self)

    def on_change(self, listener: Callable[[HubRollout], None]) -> None:
        """Call ``listener(rollout)`` after every change seen (from the following thread)."""
        self._listeners.append(listener)

    def wait(self, timeout: float | None = None) -> RolloutReport:
        """Block until the hub finishes the rollout; return its report.

        Raises :class:`DeployError` when it is still running after ``timeout``.
        """
        if not self._done.wait(timeout):
            raise DeployError(f"rollout {self.id} still running in the hub after {timeout:g} s; it goes on without "
                              "this process: fleet.rollout(id).wait() follows it again")
        report: dict[str, Any] = self._get("report") or {}
        fields = ("rollout_id", "package", "strategy", "status", "reason", "devices", "waves", "gates", "started",
                  "finished", "shadow")
        values: dict[str, Any] = {key: report.get(key) for key in fields}
        return RolloutReport(**values)

    def close(self) -> None:
        """Stop following (the rollout goes on in the hub)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"<HubRollout {self.id} {self.package.name} {self.package.version}: {self.status}>"


def deploy_via_hub(fleet: Fleet, package: str | os.PathLike[str] | Package, devices: Sequence[Any] | str | None = None,
                   *, strategy: Strategy | None = None, gates: Sequence[Gate] = (), metrics: MetricSource | None = None,
                   max_failures: int | float | None = None, device_timeout: float = 120.0,
                   keys_dir: str | os.PathLike[str] | None = None, artifacts: Any = None, artifact_dir: Any = None,
                   force: bool = False) -> HubRollout:
    """Sign the package here (with the workbench key), upload it, and have the fleet's hub run the rollout.

    The hub may be on another machine: it gets the package over its API, never a path on this disk.

    Example:
        >>> deploy_via_hub(fleet, "out/digits", strategy=workbench.Canary(first=1)).wait()   # doctest: +SKIP
    """
    if metrics is not None:
        raise ConfigError("metrics= of your own cannot travel to the hub, which reads its own telemetry and probes; "
                          "leave it out, or deploy on a fleet started with `workbench up --no-hub`")
    if artifacts is not None or artifact_dir is not None:
        raise ConfigError("the hub serves packages from the fleet's artifact server; leave artifacts= and "
                          "artifact_dir= out")
    spec = {
        "package": fleet.hub.upload_package(prepare_package(package, keys_dir).path),
        "devices": _device_ids(fleet, devices),
        "strategy": strategy_spec(strategy or AllAtOnce()),
        "gates": [asdict(g) for g in gates],
        "max_failures": max_failures,
        "device_timeout": device_timeout,
        "force": force,
    }
    return HubRollout(fleet.hub, fleet.hub.start_rollout(spec))


def rollouts_frame(hub: HubClient) -> pd.DataFrame:
    """The hub's rollouts, newest first."""
    import pandas as pd

    frame = pd.DataFrame(hub.rollouts(), columns=["rollout_id", "package", "version", "strategy", "status",
                                                  "reason", "started", "finished"])
    for column in ("started", "finished"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame


__all__ = ["HubRollout", "deploy_via_hub", "rollouts_frame"]
