"""The agent side of deployments: desired state in, A/B install with health check, reported state out.

The workbench publishes the model a device should run as a retained message on
``wb/v1/desired/{device}/model``; the broker hands it to the device whenever it (re)connects,
so an offline device catches up. The service installs it into the inactive slot
(download, verify signature and hashes, load, health check), switches slots atomically and
reports every transition, retained, on ``wb/v1/dev/{device}/deploy``. Any failure leaves the
active model serving and reports why.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._settings import settings
from workbench.agent._commands import register_command
from workbench.agent._origin import ArtifactOrigin
from workbench.agent._runtime import LoadedModel, ModelRuntime
from workbench.agent._services import register_service
from workbench.agent._slots import SlotStore
from workbench.agent._tasks import Task
from workbench.errors import (
    DeployError,
    HealthCheckError,
    PackageError,
    PayloadError,
    SignatureError,
    WorkbenchError,
)
from workbench.protocol import schema, topics
from workbench.protocol.keys import load_trusted_keys
from workbench.protocol.package import (
    FORMAT,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE,
    Package,
    load_package,
    verify_files,
    verify_package,
    verify_signature,
)
from workbench.protocol.rollback import verify_rollback
from workbench.protocol.states import MAX_SHADOW_S

if TYPE_CHECKING:
    from workbench.agent._device import DeviceAgent

log = logging.getLogger("workbench.agent")

Reporter = Callable[..., None]


def deploy_topic(device_id: str) -> str:
    """Where a device reports its deployment state (retained)."""
    return topics.device_topic(device_id, "deploy")


def health_check(model: LoadedModel, package: Package, *, runs: int = 5) -> dict[str, Any]:
    """Run the package's sample input through ``model``; raise :class:`HealthCheckError` unless it passes.

    Passing means every output matches the expected one within the manifest's tolerance and
    the median latency over ``runs`` stays under the package's SLO.

    Example:
        >>> health_check(runtime.load(pkg.model_file), pkg)["latency_ms"]   # doctest: +SKIP
    """
    feeds, expected = package.sample()
    health = package.health
    atol, rtol = package.tolerance
    slo_ms = float(health.get("slo_ms", 1000.0))
    timings = []
    outputs: list[Any] = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        try:
            outputs = model.session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises untyped errors
            raise HealthCheckError(f"the candidate failed on the sample input: {exc}; check the model's "
                                   "input spec against the package's sample") from None
        timings.append((time.perf_counter() - start) * 1000)
    if len(outputs) != len(expected):
        raise HealthCheckError(f"the candidate returned {len(outputs)} outputs, the package expects {len(expected)}")
    for index, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        got = np.asarray(got)
        if got.shape != want.shape or not np.allclose(got, want, atol=atol, rtol=rtol, equal_nan=True):
            worst = float(np.max(np.abs(got.astype(np.float64) - want))) if got.shape == want.shape else float("nan")
            raise HealthCheckError(f"output {index} differs from the expected output (max abs diff {worst:.3g}, "
                                   f"tolerance atol={atol:g} rtol={rtol:g}); the model or its sample is wrong")
    latency = float(np.median(timings))
    if latency > slo_ms:
        raise HealthCheckError(f"the candidate takes {latency:.1f} ms on the sample input, over the package's "
                               f"SLO of {slo_ms:g} ms; deploy a faster model or raise its SLO")
    return {"latency_ms": round(latency, 3), "slo_ms": slo_ms, "rss_growth_mb": round(model.rss_growth_mb, 3),
            "load_ms": round(model.load_ms, 3)}


class Installer:
    """Installs packages into a device's slots and serves them through its runtime (no MQTT here).

    Example:
        >>> installer = Installer(SlotStore(root), runtime, trusted_keys=lambda: keys)   # doctest: +SKIP
        >>> installer.install(desired, report=print)                                    # doctest: +SKIP
    """

    def __init__(self, store: SlotStore, runtime: ModelRuntime, *, trusted_keys: Callable[[], dict[str, Any]],
                 download_attempts: int = 3, retry_delay: float = 0.5, background: bool = True,
                 origin: Callable[[], ArtifactOrigin] | None = None) -> None:
        self.store = store
        self.origin = origin  # where downloads may come from (None: a test's installer, any http(s) URL)
        self.background = background  # download, verify and load in a low-priority thread (serving comes first)
        self.runtime = runtime
        self.trusted_keys = trusted_keys
        self.download_attempts = download_attempts
        self.retry_delay = retry_delay
        self.package: Package | None = None  # the package the active model came from
        self.base: LoadedModel | None = runtime.active  # what the device started with (--model)
        self.boot_problem: str | None = None

    def boot(self) -> Package | None:
        """Serve the verified package the slots name (after a restart), or keep the start model."""
        _slot, package, self.boot_problem = self.store.boot(self.trusted_keys())
        if package is not None:
            loaded = self.runtime.load(package.model_file, sha256=package.describe()["model_sha256"],
                                       name=package.name, version=package.version)
            self.runtime.activate(loaded)
            self.package = package
            # A device installed before anti-rollback existed has no floor yet: the package it serves is one.
            self.store.accept_install(package.sequence)
        return package

    def active_description(self) -> dict[str, Any] | None:
        model = self.runtime.active
        if model is None:
            return None
        info = {k: v for k, v in model.describe().items() if k not in ("inputs", "outputs")}
        if self.package is not None:
            info |= {"package_id": self.package.id, "slot": self.store.current()}
        return info

    def _fetch(self, base_url: str, sha256: str, dest: Path, size: int | None, report: Reporter,
               max_bytes: int | None = None) -> None:
        from workbench.protocol.artifacts import ArtifactError, fetch

        for attempt in range(1, self.download_attempts + 1):
            try:
                fetch(f"{base_url.rstrip('/')}/artifacts/{sha256}", sha256, dest, size=size, timeout=15.0,
                      attempts=1, max_bytes=max_bytes)
                return
            except ArtifactError as exc:
                if "but its sha256 is" in str(exc):  # fetch's verification failed, not the transfer
                    raise PackageError(f"{dest.name} as served does not match the signed manifest: {exc}") from None
                if attempt == self.download_attempts:
                    raise DeployError(f"download of {dest.name} failed after {attempt} attempt(s): {exc}") from None
                report("downloading", detail=f"retrying {dest.name} (attempt {attempt + 1}): {exc}")
                time.sleep(self.retry_delay * attempt)
            except OSError as exc:  # disk full, file too large: nothing a retry fixes
                raise DeployError(f"cannot write {dest.name} to {dest.parent}: {exc}; free disk space on the "
                                  "device and deploy again (the download resumes)") from None

    def _prepare(self, desired: dict[str, Any], slot: str, report: Reporter) -> tuple[Package, LoadedModel,
                                                                                       dict[str, Any]]:
        """Download, verify, load and health-check ``desired`` into ``slot``; raise on any failure.

        The heavy part runs behind the serving threads (see :mod:`workbench.agent._priority`);
        the health check runs at normal priority, so its latency is not inflated by that.
        """
        from workbench.agent._priority import run_in_background

        def stage() -> tuple[Package, LoadedModel]:
            return self._stage(desired, slot, report)

        package, loaded = run_in_background(stage) if self.background else stage()
        report("health_checking", slot=slot)
        return package, loaded, health_check(loaded, package)

    def _stage(self, desired: dict[str, Any], slot: str, report: Reporter) -> tuple[Package, LoadedModel]:
        package_id = str(desired.get("package_id", ""))
        base_url = str(desired.get("base_url", ""))
        if self.origin is not None:
            self.origin().check(base_url, "the deployment's base_url")
        report("downloading", slot=slot)
        needed = int(desired.get("size") or 0)
        free = shutil.disk_usage(self.store.root).free
        if needed and free < needed:
            raise DeployError(f"not enough disk: the package needs {needed} bytes, {free} are free on the "
                              "device; free space and deploy again")
        # Manifest and signature are checked in staging, size-capped: the slot (which may hold the package a
        # rollback returns to) is touched only once the signature has verified.
        staged = self.store.staging(package_id)
        self._fetch(base_url, package_id, staged / MANIFEST, desired.get("manifest_size"), report,
                    max_bytes=MAX_MANIFEST_BYTES)
        self._fetch(base_url, str(desired.get("signature_sha256")), staged / SIGNATURE,
                    desired.get("signature_size"), report, max_bytes=MAX_SIGNATURE_BYTES)
        report("verifying", slot=slot, detail="signature")
        candidate = load_package(staged)
        verify_signature(candidate, self.trusted_keys())
        self._check_not_older(candidate)  # before adopt: a refused package never touches a slot
        folder = self.store.adopt(slot, package_id, staged)
        package = load_package(folder)
        verify_signature(package, self.trusted_keys())  # what the slot now holds, not only what staging held
        report("downloading", slot=slot, detail="files")
        for name, entry in sorted(package.files.items()):
            if "/" in name or name.startswith("."):
                raise PackageError(f"the manifest lists {name!r}; packages may only hold plain file names")
            self._fetch(base_url, str(entry["sha256"]), folder / name, int(entry["size"]), report)
        report("verifying", slot=slot, detail="files")
        verify_files(package)
        report("loading", slot=slot)
        loaded = self.runtime.load(package.model_file, sha256=package.describe()["model_sha256"],
                                   name=package.name, version=package.version)
        return package, loaded

    def _check_not_older(self, package: Package) -> None:
        if package.manifest.get("format") != FORMAT:
            raise PackageError(f"the signed manifest's format is {str(package.manifest.get('format'))[:40]!r}, not "
                               f"{FORMAT!r}: it is not a model package; deploy one made by `workbench package`")
        floor = self.store.floor()
        if package.sequence < floor:
            raise PackageError(
                f"package {package.name[:64]} {package.version[:64]} has sequence {package.sequence}, older than the "
                f"{floor} of the newest package this device installed: a downgrade is refused unless the workbench "
                "sends a signed rollback (a rollout's abort does); to deploy this model again, re-sign it "
                "(workbench.deploy.sign_package) so it gets a new sequence")

    def install(self, desired: dict[str, Any], report: Reporter) -> dict[str, Any]:
        """Download, verify, load, health-check and activate ``desired``; return the final report fields.

        Never raises for a bad package or a failed step: the active model keeps serving and
        the returned state (``failed`` or ``rejected``) says why.
        """
        package_id = str(desired.get("package_id", ""))
        if self.package is not None and self.package.id == package_id:
            return {"state": "active", "detail": "already running this package"}
        slot = self.store.inactive()
        try:
            package, loaded, health = self._prepare(desired, slot, report)
            report("activating", slot=slot, health=health)
            self.store.accept_install(package.sequence)
            self.store.commit(slot)
            self.runtime.activate(loaded)
            self.package = package
            return {"state": "active", "slot": slot, "health": health}
        except Exception as exc:  # every failure is reported; the old model keeps serving
            return self._failure(exc, slot)

    def shadow(self, desired: dict[str, Any], report: Reporter, duration: float) -> dict[str, Any]:
        """Run ``desired``'s model next to the active one for ``duration`` s; never activates it.

        The candidate stays in the inactive slot (a later install of the same package downloads
        nothing); the result's ``shadow`` holds agreement and both models' latency.
        """
        from workbench.agent._shadow import ShadowRun

        slot = self.store.inactive()
        try:
            if self.runtime.active is None:
                raise DeployError("shadow mode needs an active model to compare with; deploy one first")
            package, loaded, health = self._prepare(desired, slot, report)
            report("shadowing", slot=slot, health=health, detail=f"{duration:g} s next to the active model")
            atol, rtol = package.tolerance
            stats = ShadowRun(self.runtime, loaded, atol=atol, rtol=rtol).run(duration)
            return {"state": "shadowed", "slot": slot, "health": health, "shadow": stats}
        except Exception as exc:  # every failure is reported; the active model keeps serving
            return self._failure(exc, slot)

    @staticmethod
    def _failure(exc: Exception, slot: str) -> dict[str, Any]:
        if isinstance(exc, WorkbenchError):
            state = "rejected" if isinstance(exc, PackageError) else "failed"
            return {"state": state, "reason": str(exc), "slot": slot}
        log.exception("install failed")  # an unexpected bug must still leave a report and the old model serving
        return {"state": "failed", "reason": f"{type(exc).__name__}: {exc}", "slot": slot}

    def rollback(self, report: Reporter, *, grant: Any, device_id: str, deployment_id: str) -> dict[str, Any]:
        """Serve the previous slot's package again (or the model the device started with), if ``grant`` allows it.

        ``grant`` is the workbench's signed permission (see :mod:`workbench.protocol.rollback`); without
        a valid one the device refuses, since a rollback is a downgrade.
        """
        try:
            sequence = verify_rollback(grant, device_id=device_id, deployment_id=deployment_id,
                                       trusted_keys=self.trusted_keys(), above=self.store.newest())
        except SignatureError as exc:
            return {"state": "rejected", "reason": f"{exc}; the current model keeps serving"}
        self.store.consume_grant(sequence)
        target = self.store.previous()
        try:
            if target is None:
                if self.base is None:
                    raise DeployError("nothing to roll back to: no previous package and no start model")
                report("activating", detail="back to the start model")
                self.store.lower_floor(0)
                self.store.revert()
                self.runtime.activate(self.base)
                self.package = None
                return {"state": "rolled_back", "slot": None}
            report("verifying", slot=target)
            package = verify_package(self.store.slot_dir(target), self.trusted_keys())
            report("loading", slot=target)
            loaded = self.runtime.load(package.model_file, sha256=package.describe()["model_sha256"],
                                       name=package.name, version=package.version)
            report("activating", slot=target)
            self.store.lower_floor(package.sequence)
            self.store.revert()
            self.runtime.activate(loaded)
            self.package = package
            return {"state": "rolled_back", "slot": target}
        except WorkbenchError as exc:
            return {"state": "failed", "reason": f"rollback failed: {exc}; the current model keeps serving"}


def trusted_keys_dir(agent: DeviceAgent) -> Path:
    """The trusted keys: ``--trusted-keys``, ``$WORKBENCH_TRUSTED_KEYS`` or ``DATA_DIR/trusted_keys``."""
    if agent.config.trusted_keys is not None:
        return agent.config.trusted_keys
    return settings().trusted_keys or agent.config.data_dir / "trusted_keys"


class DeployService:
    """Follows the device's desired model and reports what it runs (a task on the process's shared workers)."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        self.installer = Installer(SlotStore(agent.config.data_dir / "deploy"), agent.runtime,
                                   trusted_keys=lambda: load_trusted_keys(trusted_keys_dir(agent)),
                                   origin=lambda: ArtifactOrigin.for_device(agent.config.data_dir,
                                                                            agent.config.broker.host))
        self._pending: dict[str, Any] | None = None
        self._wake = threading.Lock()
        self._stopping = False
        # Installs block (download, verify, load into ONNX Runtime): a shared worker runs them, one at a time
        # per device; a desired state arriving meanwhile wakes the task to run again after.
        self._task = Task(f"{agent.device_id}: deploy", self._run)
        self.current: dict[str, Any] = {}
        if self.installer.boot() is not None or self.installer.boot_problem:
            self._record_active()

    def topics(self) -> list[str]:
        return [topics.desired_topic(self.agent.device_id, "model")]

    def on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            body = schema.decode(payload)
        except PayloadError as exc:
            self.agent.rejected.reject(exc)
            self.agent.reject_log.count(self.agent.device_id, "desired_model", f"rejected desired state: {exc}")
            return
        with self._wake:
            self._pending = body
        self._task.wake()

    def start(self) -> None:
        state = self.agent.state.get("deploy") or {}
        self.current = dict(state.get("last") or {})
        if self.installer.boot_problem:
            self._publish({**self.current, "state": "failed", "reason": self.installer.boot_problem})
        elif self.current:
            self._publish({**self.current, "active": self.installer.active_description()})
        self._task.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
        self._task.stop(timeout=0)  # an install in progress ends with the process, as a killed thread's would

    def _record_active(self) -> None:
        self.agent.state["active_model"] = self.installer.active_description()

    def _publish(self, body: dict[str, Any]) -> None:
        self.current = body
        self.agent.publish(deploy_topic(self.agent.device_id), schema.encode(body), qos=1, retain=True)

    def _run(self) -> None:
        with self._wake:
            if self._stopping:
                return None
            desired, self._pending = self._pending, None
        if desired is not None:
            try:
                self._apply(desired)
            except Exception:  # the task must survive to apply the next desired state
                log.exception("%s: applying desired state failed", self.agent.device_id)
        return None

    def _apply(self, desired: dict[str, Any]) -> None:
        deployment = str(desired.get("deployment_id", ""))
        state = self.agent.state.setdefault("deploy", {})
        if deployment and deployment == state.get("handled"):
            return  # already done (the broker re-sends the retained desired state on every connect)
        base = {"deployment_id": deployment, "rollout_id": desired.get("rollout_id"),
                "action": desired.get("action", "install"),
                "package": {k: desired.get(k) for k in ("package_id", "name", "version")}}
        started = time.time()
        transitions: list[dict[str, Any]] = []

        def report(step: str, **info: Any) -> None:
            transitions.append({"state": step, "ts": time.time(), **{k: v for k, v in info.items() if k == "detail"}})
            self._publish({**base, "state": step, "ts": time.time(), "started": started,
                           "active": self.installer.active_description(), "transitions": transitions[-20:], **info})

        report("pending")
        if desired.get("action") == "rollback":
            result = self.installer.rollback(report, grant=desired.get("grant"), device_id=self.agent.device_id,
                                             deployment_id=deployment)
        elif desired.get("action") == "shadow":
            duration = desired.get("duration") or 10.0
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or \
                    not 0 < duration <= MAX_SHADOW_S:
                result = {"state": "rejected", "reason": f"shadow duration must be a number of seconds above 0 and "
                          f"at most {MAX_SHADOW_S:g}, got {str(duration)[:40]!r}; nothing was downloaded"}
            else:
                result = self.installer.shadow(desired, report, float(duration))
        else:
            result = self.installer.install(desired, report)
        self._record_active()
        final = {**base, **result, "ts": time.time(), "started": started, "finished": time.time(),
                 "active": self.installer.active_description()}
        transitions.append({"state": result["state"], "ts": final["ts"]})
        final["transitions"] = transitions[-20:]
        state["handled"] = deployment
        state["last"] = {k: v for k, v in final.items() if k != "transitions"}
        self.agent.save_state()
        self._publish(final)
        if result["state"] in ("active", "rolled_back"):
            self.agent.publish_inventory()
        log.info("%s: deployment %s -> %s %s", self.agent.device_id, deployment, result["state"],
                 result.get("reason", ""))


register_service("deploy", DeployService)


def _deploy_service(agent: DeviceAgent) -> DeployService:
    return agent.service("deploy", DeployService)


@register_command("deploy_status")
def _deploy_status(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    service = _deploy_service(agent)
    return {"state": service.current, "slots": service.installer.store.describe(),
            "active": service.installer.active_description()}


@register_command("probe")
def _probe(agent: DeviceAgent, args: dict[str, Any]) -> dict[str, Any]:
    """Run N inferences of the active model on its package's sample input: latency and errors, measured."""
    service = _deploy_service(agent)
    count = int(args.get("n", 20))
    if not 1 <= count <= 10_000:
        raise DeployError(f"probe n must be between 1 and 10000, got {count}")
    package = service.installer.package
    expected: list[np.ndarray] | None = None
    if package is not None:
        feeds, expected = package.sample()
        atol, rtol = package.tolerance
    else:
        from workbench.protocol.package import _sample_feeds

        model = agent.runtime.active
        if model is None:
            raise DeployError("no model is active on this device; deploy one before probing it")
        feeds = _sample_feeds(model.session)
    timings, errors = [], 0
    for _ in range(count):
        start = time.perf_counter()
        try:
            outputs = agent.runtime.infer(feeds)
        except WorkbenchError:
            raise
        except Exception:  # an inference error is what the probe counts
            errors += 1
            continue
        timings.append((time.perf_counter() - start) * 1000)
        if expected is not None and not all(
            np.allclose(np.asarray(o), e, atol=atol, rtol=rtol, equal_nan=True) for o, e in zip(outputs, expected,
                                                                                               strict=False)
        ):
            errors += 1
    result: dict[str, Any] = {"count": count, "errors": errors, "error_rate": errors / count,
                              "active": service.installer.active_description()}
    if timings:
        result |= {"p50_latency_ms": float(np.percentile(timings, 50)),
                   "p95_latency_ms": float(np.percentile(timings, 95)),
                   "mean_latency_ms": float(np.mean(timings))}
    return result
