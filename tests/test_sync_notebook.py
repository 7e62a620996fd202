"""notebooks/05_sync_state.ipynb runs top to bottom under papermill, its own checks included."""

from __future__ import annotations

from pathlib import Path

import papermill

REPO = Path(__file__).resolve().parents[1]


def test_sync_notebook_runs_and_counts_add_up_when_executed(tmp_path: Path) -> None:
    papermill.execute_notebook(str(REPO / "notebooks" / "05_sync_state.ipynb"), str(tmp_path / "out.ipynb"),
                               kernel_name="python3", cwd=str(REPO), progress_bar=False)
