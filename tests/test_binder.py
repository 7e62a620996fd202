"""Binder: what binder/ declares alone installs the workbench, starts the local fleet and runs the quickstart.

Mirrors what mybinder's repo2docker does, in a fresh virtual environment: pip install -r
binder/requirements.txt, run binder/postBuild from the repository root, then run a command
through binder/start (which brings the local fleet up first). The command here is papermill
running notebooks/00_quickstart.ipynb in smoke mode against that fleet.

A full install takes minutes, so it runs only with WORKBENCH_BINDER_CHECK=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest
from conftest import REPO

from workbench import settings
from workbench.runs import collect_figures

INSTALL_TIMEOUT_S = 1500
RUN_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.slow,
    # Beyond the suite's 300 s per test: a full install from the package index is most of it.
    pytest.mark.timeout(2 * INSTALL_TIMEOUT_S + RUN_TIMEOUT_S),
    pytest.mark.skipif(not settings().binder_check,
                       reason="installs binder/ into a fresh virtual environment (minutes); "
                              "set WORKBENCH_BINDER_CHECK=1 to run it"),
]

BINDER = REPO / "binder"
QUICKSTART = REPO / "notebooks" / "00_quickstart.ipynb"


def _env(venv_dir: Path, run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv_dir)
    env["WORKBENCH_RUN_DIR"] = str(run_dir)
    # The venv's kernelspec (installed by postBuild) before any user-level one that points at another Python.
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    return env


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(args)} exited {result.returncode}\n--- stdout (tail)\n"
                                    f"{result.stdout[-4000:]}\n--- stderr (tail)\n{result.stderr[-4000:]}")
    return result


def test_binder_declared_install_runs_quickstart_when_started_in_fresh_venv(tmp_path: Path) -> None:
    declared = (BINDER / "runtime.txt").read_text().strip()
    assert declared == f"python-{sys.version_info.major}.{sys.version_info.minor}", (
        f"binder/runtime.txt declares {declared!r} but this check runs Python {sys.version.split()[0]}: "
        "run it with the declared Python, or change runtime.txt to the Python the project is tested with")
    venv_dir, run_dir, executed = tmp_path / "venv", tmp_path / "fleet", tmp_path / "00_quickstart.ipynb"
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    env = _env(venv_dir, run_dir)
    python = str(venv_dir / "bin" / "python")

    # PyTorch's CPU index (named in requirements.txt) is out of reach where only the package registries are:
    # without retries pip passes over it in seconds (it retries a minute per package otherwise).
    _run([python, "-m", "pip", "install", "-r", str(BINDER / "requirements.txt")], {**env, "PIP_RETRIES": "0"},
         INSTALL_TIMEOUT_S)
    _run(["bash", str(BINDER / "postBuild")], env, INSTALL_TIMEOUT_S)

    # Installed into the venv (not borrowed from the project's environment), with the CPU build of torch.
    probe = _run([python, "-c", "import json, sys, torch, workbench; print(json.dumps({'prefix': sys.prefix, "
                  "'torch': torch.__version__, 'cuda': torch.version.cuda, 'workbench': workbench.__file__}))"],
                 env, 120)
    facts = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(facts["prefix"]) == venv_dir and facts["cuda"] is None, facts
    assert facts["torch"].startswith("2.13.0"), facts
    assert Path(facts["workbench"]).is_relative_to(REPO), facts
    kernels = json.loads(_run([python, "-m", "jupyter", "kernelspec", "list", "--json"], env, 60).stdout)
    assert Path(kernels["kernelspecs"]["python3"]["spec"]["argv"][0]).parent == venv_dir / "bin", kernels

    try:
        _run(["bash", str(BINDER / "start"), python, "-m", "papermill", "--log-level", "WARNING",
              "--execution-timeout", "300", "-p", "smoke", "True", str(QUICKSTART), str(executed)],
             env, RUN_TIMEOUT_S)
        assert (run_dir / "fleet.json").exists(), "binder/start did not bring the fleet up in $WORKBENCH_RUN_DIR"
    finally:
        subprocess.run([str(venv_dir / "bin" / "workbench"), "down", "--run-dir", str(run_dir)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)

    figures = collect_figures(nbformat.read(executed, as_version=4))
    assert figures["canary_status"].value == "succeeded", figures
    assert figures["devices_on_new_model"].value == 3, figures
    assert isinstance(figures["telemetry_points"].value, int) and figures["telemetry_points"].value > 0, figures
