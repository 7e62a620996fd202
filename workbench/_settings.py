"""Every ``WORKBENCH_*`` environment variable, read in one place into one typed object.

Modules ask :func:`settings` instead of reading ``os.environ``: one table (docs/settings.md,
checked against this class by the tests) then says every variable the workbench, the agent and
the tests honour. It is read anew on each call, so a changed environment (a test's monkeypatch,
``workbench dashboard`` handing Voila its run dir) takes effect at once. Only the standard
library is used here: the agent imports it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Field: (variable, what it sets, its default where unset). docs/settings.md is this table.
VARIABLES: dict[str, tuple[str, str, str]] = {
    "run_dir": ("WORKBENCH_RUN_DIR", "the local fleet's run directory, where `workbench up`, `connect()` and "
                "`workbench dashboard` meet", "~/.workbench/fleet"),
    "broker": ("WORKBENCH_BROKER", "the broker URL `workbench agent` connects to", "mqtt://127.0.0.1:1883"),
    "data_dir": ("WORKBENCH_DATA_DIR", "where `workbench agent` keeps models and state", "./wb-data"),
    "health_port": ("WORKBENCH_HEALTH_PORT", "the port of `workbench agent`'s /healthz (the agent's image sets "
                    "8081)", "no health endpoint"),
    "trusted_keys": ("WORKBENCH_TRUSTED_KEYS", "the public keys whose signed packages an agent installs",
                     "DATA_DIR/trusted_keys"),
    "keys_dir": ("WORKBENCH_KEYS_DIR", "the workbench's package signing key pair", "~/.workbench/keys"),
    "deploy_history": ("WORKBENCH_DEPLOY_HISTORY", "the record of every rollout (JSON lines)",
                       "~/.workbench/deployments.jsonl"),
    "artifacts": ("WORKBENCH_ARTIFACTS", "what an artifact server started by a rollout serves, when the fleet has "
                  "none of its own", "~/.workbench/artifacts"),
    "artifact_host": ("WORKBENCH_ARTIFACT_HOST", "the address that artifact server binds and devices download from",
                      "127.0.0.1"),
    "artifact_origin": ("WORKBENCH_ARTIFACT_ORIGIN", "the only artifact servers an agent downloads from, "
                        "comma-separated http(s)://HOST:PORT", "DATA_DIR/artifact_origin, else the broker's host"),
    "telemetry_db": ("WORKBENCH_TELEMETRY_DB", "the DuckDB file of `fleet.telemetry`", "in memory"),
    "sync_db": ("WORKBENCH_SYNC_DB", "the SQLite file of `fleet.sync`'s store", "in memory"),
    "cache_dir": ("WORKBENCH_CACHE_DIR", "the optimizer's cache of measured variants", "~/.cache/workbench"),
    "datasets": ("WORKBENCH_DATASETS", "the shipped data sets (digits, BasicMotions)", "the repository's datasets/"),
    "dashboard_metrics": ("WORKBENCH_DASHBOARD_METRICS", "the dashboard's charts, comma-separated (`workbench "
                          "dashboard --metrics` sets it)", "latency_p95_ms,throughput,cpu_percent"),
    "test_postgres_dsn": ("WORKBENCH_TEST_POSTGRES_DSN", "tests only: the PostgreSQL server the telemetry store's "
                          "postgres backend is tested on (.ci/run starts one)", "unset: those tests skip"),
    "arm64_root": ("WORKBENCH_ARM64_ROOT", "tests only: where the emulated arm64 run keeps its Debian root",
                   "/var/tmp/wb-arm64"),
    "binder_check": ("WORKBENCH_BINDER_CHECK", "tests only: 1 runs the Binder check (a fresh venv from binder/, "
                     "then the quickstart); .ci/run sets it", "unset: skipped"),
    "docs_screenshots": ("WORKBENCH_DOCS_SCREENSHOTS", "tests only: 1 makes the browser tests also write their "
                         "screenshots into docs/img/", "unset: test artifacts only"),
    "wild_cache": ("WORKBENCH_WILD_CACHE", "tests only: where the models from PyPI wheels are downloaded and kept",
                   "~/.cache/workbench-wild"),
}


@dataclass(frozen=True)
class Settings:
    """The ``WORKBENCH_*`` variables, typed; None where a variable is unset (its default applies where used).

    Example:
        >>> Settings.from_env({"WORKBENCH_RUN_DIR": "/tmp/fleet"}).run_dir
        PosixPath('/tmp/fleet')
        >>> Settings.env_name("run_dir")
        'WORKBENCH_RUN_DIR'
    """

    run_dir: Path | None = None
    broker: str | None = None
    data_dir: Path | None = None
    health_port: int | None = None
    trusted_keys: Path | None = None
    keys_dir: Path | None = None
    deploy_history: Path | None = None
    artifacts: Path | None = None
    artifact_host: str | None = None
    artifact_origin: tuple[str, ...] | None = None
    telemetry_db: Path | None = None
    sync_db: Path | None = None
    cache_dir: Path | None = None
    datasets: Path | None = None
    dashboard_metrics: tuple[str, ...] | None = None
    test_postgres_dsn: str | None = None
    arm64_root: Path | None = None
    binder_check: bool | None = None
    docs_screenshots: bool | None = None
    wild_cache: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable; raises :class:`ConfigError` naming a malformed one.

        Example:
            >>> Settings.from_env({"WORKBENCH_BINDER_CHECK": "1"}).binder_check
            True
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (variable, _, _) in VARIABLES.items():
            raw = env.get(variable)
            if not raw:  # unset, or set to nothing: the default applies
                continue
            values[name] = _parse(name, variable, raw)
        return cls(**values)

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable behind a field."""
        return VARIABLES[name][0]

    @classmethod
    def table(cls) -> list[dict[str, str]]:
        """One row per variable: name, what it sets, default (docs/settings.md is this table)."""
        return [{"variable": variable, "what": what, "default": default}
                for variable, what, default in VARIABLES.values()]


_PATHS = {"run_dir", "arm64_root", "wild_cache", "data_dir", "trusted_keys", "keys_dir", "deploy_history", "artifacts",
          "telemetry_db", "sync_db", "cache_dir", "datasets"}


def _parse(name: str, env: str, raw: str) -> Any:
    if name in _PATHS:
        return Path(raw).expanduser()
    if name in ("binder_check", "docs_screenshots"):
        value = raw.strip().lower()
        if value not in _TRUE | _FALSE:
            raise ConfigError(f"{env}={raw!r} is not a yes/no value; set it to 1 or 0")
        return value in _TRUE
    if name == "health_port":
        try:
            port = int(raw)
        except ValueError:
            port = -1
        if not 0 <= port < 65536:
            raise ConfigError(f"{env}={raw!r} is not a port; set 0-65535 (0: a free one), or unset it")
        return port
    if name == "artifact_origin":
        origins = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not origins:
            raise ConfigError(f"{env}={raw!r} names no origin; give comma-separated http(s)://HOST:PORT, or unset it")
        return origins
    if name == "dashboard_metrics":
        metrics = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not metrics:
            raise ConfigError(f"{env}={raw!r} names no metric; give comma-separated names such as "
                              "latency_p95_ms,cpu_percent, or unset it")
        return metrics
    return raw


def settings() -> Settings:
    """The ``WORKBENCH_*`` variables of this process's environment, now.

    Example:
        >>> isinstance(settings(), Settings)
        True
    """
    return Settings.from_env()
