"""The pieces of `workbench demo`: the curated notebooks, a local fleet to run them on, a fresh run dir."""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, FleetAlreadyRunningError

# Voila apps are served, not executed top to bottom.
EXCLUDED = frozenset({"dashboard.ipynb"})
# What the fleet serves after a demo: enough to see lines move, next to nothing on a laptop's CPU.
LIVE_RATE_HZ = 10.0


@dataclass
class DemoFleet:
    """The fleet a demo ran against, and whether the demo started it."""

    run_dir: str
    devices: int
    started: bool
    broker: str


def curated_notebooks(pattern: str = "notebooks/*.ipynb") -> list[Path]:
    """The notebooks matching ``pattern`` in name order, without Voila apps (dashboard.ipynb).

    Example:
        >>> [p.name for p in curated_notebooks()]   # doctest: +SKIP
        ['01_connect_fleet.ipynb']
    """
    paths = sorted((Path(p) for p in glob.glob(pattern)), key=lambda p: p.name)
    chosen = [p for p in paths if p.suffix == ".ipynb" and p.name not in EXCLUDED
              and ".ipynb_checkpoints" not in p.parts]
    if not chosen:
        raise ConfigError(f"no notebooks match {pattern!r} (from {Path.cwd()}); run from the repository root "
                          "or pass --notebooks 'path/to/*.ipynb'")
    return chosen


def ensure_fleet(devices: int, run_dir: str | os.PathLike[str] | None = None) -> DemoFleet:
    """Start a local fleet of ``devices`` in ``run_dir`` unless one is up there already; never stop it.

    Example:
        >>> ensure_fleet(3).started   # doctest: +SKIP
        True
    """
    from workbench.sim import RunDir, up

    rd = RunDir.resolve(run_dir)
    try:
        record = up(devices=devices, run_dir=rd.path)
        started = True
    except FleetAlreadyRunningError:
        record = rd.read() or {}
        started = False
    return DemoFleet(run_dir=str(rd.path), devices=len(record.get("devices", [])), started=started,
                     broker=str((record.get("broker") or {}).get("url", "?")))


def new_run_dir(out: str | os.PathLike[str]) -> Path:
    """A fresh ``OUT/<timestamp>`` directory (suffixed if two demos start in the same second)."""
    base = Path(out) / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")



def demo_parameters(fleet: DemoFleet) -> dict[str, Any]:
    """What every curated notebook gets from the demo (each takes the ones its parameters cell declares).

    Example:
        >>> demo_parameters(DemoFleet("/tmp/wb", 3, True, "mqtt://127.0.0.1:1883"))
        {'run_dir': '/tmp/wb', 'expected_devices': 3}
    """
    return {"run_dir": fleet.run_dir, "expected_devices": fleet.devices}


def leave_serving(fleet: DemoFleet, *, rate_hz: float = LIVE_RATE_HZ, timeout: float = 30.0) -> list[str]:
    """Have every device of the demo's fleet serve a digits classifier on replayed digits; return their ids.

    The curated notebooks leave the devices idle, so without this `workbench dashboard` would
    open on empty charts. The model is packaged and signed in ``<run dir>/demo/digits`` and
    deployed (a device serves only signed packages); the devices serve until
    ``telemetry.configure(source="none")`` or ``workbench down``. Commands go straight to the
    devices; the fleet's hub stores what they report, and the dashboard shows it from the hub.

    Example:
        >>> leave_serving(ensure_fleet(3))   # doctest: +SKIP
        ['sim-01', 'sim-02', 'sim-03']
    """
    import shutil

    import workbench
    from workbench.deploy import build_package, load_signing_key
    from workbench.errors import DeployError
    from workbench.telemetry import build_digits_model

    folder = Path(fleet.run_dir) / "demo"
    model = build_digits_model(folder / "digits.onnx")
    shutil.rmtree(folder / "digits", ignore_errors=True)  # a new package (a new sequence) for every demo run
    package = build_package(model, folder / "digits", load_signing_key(create=True), name="digits")
    settings = {"enabled": True, "source": "digits", "rate_hz": rate_hz, "publish_interval_s": 1.0}
    with workbench.connect(run_dir=fleet.run_dir) as connected:
        connected.wait_for(fleet.devices, timeout=timeout)
        serving = sorted(device.device_id for device in connected.online())
        report = connected.deploy(package.path, devices=serving).wait(timeout=max(timeout, 120.0))
        if report.status != "succeeded":
            raise DeployError(f"the demo's digits package did not deploy: {report.reason}; see `workbench status`")
        for device_id in serving:
            connected.call(device_id, "telemetry.configure", settings, timeout=timeout)
    return serving
