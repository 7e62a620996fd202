"""Detached processes: `spawn` leaves them running past our exit without warnings, and reaps what exited."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from workbench.sim import _procs


def test_exit_warns_nothing_and_leaves_child_running_when_spawned_process_outlives_us(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from workbench.sim import _procs
        running = _procs.spawn(["sleep", "60"], Path({str(tmp_path)!r}) / "sleep.log")
        exited = _procs.spawn(["true"], Path({str(tmp_path)!r}) / "true.log")
        print(running["pid"], running["create_time"])
    """)
    # -X dev shows ResourceWarnings, -W error would turn one raised outside __del__ into a failure.
    result = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pid, create_time = result.stdout.split()
    record = {"pid": int(pid), "create_time": float(create_time)}
    try:
        assert "ResourceWarning" not in result.stderr, result.stderr
        assert _procs.is_alive(record), "the detached process did not outlive the Python that started it"
    finally:
        _procs.stop([record], grace=2)
    assert not _procs.is_alive(record)


def test_stop_reaps_child_when_it_was_started_here(tmp_path: Path) -> None:
    record = _procs.spawn(["sleep", "60"], tmp_path / "sleep.log")
    assert _procs.is_alive(record)
    _procs.stop([record], grace=2)
    assert not _procs.is_alive(record)
    # Reaped: no zombie of it is left among our children.
    assert record["pid"] not in {child.pid for child in psutil.Process().children()}
