"""The layers hold: import-linter's contracts (pyproject.toml), and what importing the agent really loads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

# What a Raspberry Pi's agent must not carry (pyproject's base dependencies leave them out).
HEAVY = ("pandas", "duckdb", "torch", "onnx", "onnxscript", "sklearn", "psycopg", "IPython", "ipykernel",
         "ipywidgets", "jupyter_client", "plotly", "anywidget", "papermill", "voila", "widgets")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_import_contracts_are_kept_when_lint_imports_reads_pyproject() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-2000:]


def test_importing_the_agent_loads_none_of_the_workbench_side_packages_when_it_starts() -> None:
    result = _python(f"""
        import sys
        import workbench.agent, workbench.agent._device, workbench.cli._agent
        from workbench.agent import AgentConfig, run_agents
        print(",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"importing the agent loaded {result.stdout.strip()}"


def test_a_rollout_displays_as_its_progress_widget_when_widgets_is_imported_in_ipython() -> None:
    result = _python("""
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        formatter = shell.display_formatter.ipython_display_formatter
        import widgets
        from workbench.deploy import Rollout
        print(formatter.lookup_by_type(Rollout).__name__)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "_display_rollout"
