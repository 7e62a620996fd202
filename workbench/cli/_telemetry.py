"""`workbench dashboard`: serve notebooks/dashboard.ipynb with Voila for people who only look."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from workbench._settings import Settings
from workbench.errors import ConfigError

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "dashboard.ipynb"
# The dashboard notebook's parameters cell reads its charts from here (Voila passes no parameters).
METRICS_ENV = Settings.env_name("dashboard_metrics")
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dashboard", help="serve the live fleet dashboard (Voila)",
                            description="Serve notebooks/dashboard.ipynb with Voila: fleet health, live charts "
                            "and alerts of the local fleet in --run-dir (or $WORKBENCH_RUN_DIR).")
    parser.add_argument("--port", type=int, default=8866, help="HTTP port (default: %(default)s)")
    parser.add_argument("--run-dir", help="the local fleet's run directory (default: $WORKBENCH_RUN_DIR)")
    parser.add_argument("--metrics", help="comma-separated metrics to chart, one row each "
                        "(default: latency_p95_ms,throughput,cpu_percent)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.set_defaults(func=run)


def command(args: argparse.Namespace) -> list[str]:
    """The Voila command line for these arguments."""
    if not NOTEBOOK.exists():
        raise ConfigError(f"the dashboard notebook {NOTEBOOK} is missing; restore notebooks/ from the repository")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    argv = [sys.executable, "-m", "workbench.cli._voila", str(NOTEBOOK), f"--port={args.port}", "--Voila.ip=127.0.0.1",
            "--VoilaConfiguration.file_allowlist=.*",  # one item: a list literal here is deprecated
            # Kernels on Unix sockets: over loopback TCP each warns that its traffic is unencrypted.
            "--KernelManager.transport=ipc"]
    if args.no_browser:
        argv.append("--no-browser")
    return argv


def metrics(value: str) -> list[str]:
    """The metric names in a ``--metrics`` value, checked.

    Example:
        >>> metrics("latency_p95_ms, anomaly_score")
        ['latency_p95_ms', 'anomaly_score']
    """
    names = [name.strip() for name in value.split(",")]
    bad = [name for name in names if not _METRIC.fullmatch(name)]
    if bad:
        raise ConfigError(f"--metrics takes comma-separated metric names such as latency_p95_ms,cpu_percent; "
                          f"{', '.join(map(repr, bad)) or 'none given'} is not one")
    return names


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.run_dir:
        env[Settings.env_name("run_dir")] = str(Path(args.run_dir).resolve())
    if args.metrics is not None:
        env[METRICS_ENV] = ",".join(metrics(args.metrics))
    argv = command(args)
    # Become Voila rather than wait on it: a signal to `workbench dashboard` then reaches Voila, which stops
    # its kernels, instead of killing this wrapper and orphaning the server.
    os.execve(argv[0], argv, env)
    return 0  # not reached
