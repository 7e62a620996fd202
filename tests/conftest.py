"""Shared fixtures: real local fleets (broker + agent processes) started per test or per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workbench import settings
from workbench.sim import down, up

REPO = Path(__file__).resolve().parents[1]
BROKERS = ["embedded", "mosquitto"]


@pytest.fixture(scope="session", autouse=True)
def _own_signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test, its fleets, notebooks and CLI subprocesses sign and trust with the run's keys, not ~/.workbench.

    Tests that need keys of their own (``keys_env``) override these per test.
    """
    base = tmp_path_factory.mktemp("signing")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WORKBENCH_KEYS_DIR", str(base / "keys"))
        env.setenv("WORKBENCH_DEPLOY_HISTORY", str(base / "history.jsonl"))
        yield


def run_cli(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `workbench` command line in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"workbench {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def require_broker(kind: str) -> None:
    """Skip a Mosquitto test where it is not installed, except in CI, where .ci/run installs it."""
    if kind == "mosquitto" and not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed, but CI must run the Mosquitto tests (.ci/run installs it)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")


FleetFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[FleetFactory]:
    """Start local fleets in temporary run dirs; every one is stopped after the test."""
    started: list[str] = []

    def start(devices: int = 2, broker: str = "embedded", hub: bool = False, secure: bool = False,
              **kwargs: Any) -> dict[str, Any]:
        """A fleet whose clients receive for themselves unless ``hub=True`` (``workbench up``'s default).

        Insecure unless ``secure=True`` (``workbench up``'s default, no slower to start): these tests attach
        raw MQTT clients and extra agents to the broker URL. The secure default runs in test_secure.py,
        test_hardening_live_fuzz.py and every fleet started by ``up()`` itself (test_deploy_rollout.py...).
        """
        require_broker(broker)
        run_dir = tmp_path / f"fleet-{len(started)}"
        started.append(str(run_dir))
        return up(devices=devices, broker=broker, run_dir=run_dir, hub=hub, secure=secure, **kwargs)

    yield start
    for run_dir in started:
        try:
            down(run_dir)
        except Exception:  # already down, or never came up
            pass


@pytest.fixture(scope="session")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One 3-device fleet on the embedded broker, shared by read-only tests (insecure: some start agents on its URL)."""
    run_dir = tmp_path_factory.mktemp("shared-fleet")
    record = up(devices=3, run_dir=run_dir, keepalive=5, secure=False)
    yield record
    down(run_dir)


@pytest.fixture
def postgres_dsn() -> str:
    """The PostgreSQL server of ``WORKBENCH_TEST_POSTGRES_DSN`` (.ci/run starts a throwaway one); skip without."""
    value = settings().test_postgres_dsn
    if not value:
        if os.environ.get("CI") == "true":
            pytest.fail("WORKBENCH_TEST_POSTGRES_DSN is unset under CI=true: .ci/run must start PostgreSQL and "
                        "export it")
        pytest.skip("WORKBENCH_TEST_POSTGRES_DSN is unset; set it to postgresql://user@host:port/db (.ci/run "
                    "starts a throwaway server) to test the postgres backend")
    return value


@pytest.fixture
def postgres_stores(postgres_dsn: str) -> Iterator[Callable[..., Any]]:
    """Open PostgresStores on one schema of the test's own (dropped afterwards); a second is a restart."""
    from workbench.telemetry._postgres import PostgresStore

    schema = f"wb_test_{uuid.uuid4().hex[:12]}"
    opened: list[PostgresStore] = []

    def make(**options: Any) -> PostgresStore:
        store = PostgresStore(postgres_dsn, schema=schema, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        if not store._con.closed:
            store.close()
    PostgresStore(postgres_dsn, schema=schema, timescale=False).drop()


@pytest.fixture
def keys_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Signing keys and history in the test's directory; subprocesses (the CLI, agents) inherit them."""
    monkeypatch.setenv("WORKBENCH_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("WORKBENCH_DEPLOY_HISTORY", str(tmp_path / "history.jsonl"))
    return tmp_path


def deploy_model(fleet: Any, model: Path, devices: list[str], out: Path) -> None:
    """Serve ``model`` on ``devices`` the one way a device serves a model: a signed package, deployed and verified."""
    from workbench.deploy import build_package, load_signing_key

    package = build_package(model, out, load_signing_key(create=True), name=model.stem)
    report = fleet.deploy(package.path, devices=devices).wait(timeout=90)
    assert report.status == "succeeded", report
