"""Progress lines while notebooks run headless: one when a notebook starts, one per code cell, one at its end.

papermill's own bar (tqdm) redraws one line in a terminal and floods a CI log; these are plain
lines, fit for both. They come from a papermill engine that reports each cell as it completes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from papermill.engines import NBClientEngine, papermill_engines

ENGINE = "workbench-progress"
Progress = Callable[[str], None]


class ProgressEngine(NBClientEngine):
    """papermill's nbclient engine, calling ``progress(line)`` as each code cell completes.

    Example:
        >>> papermill.execute_notebook("a.ipynb", "b.ipynb", engine_name=ENGINE, progress=print)  # doctest: +SKIP
    """

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, progress: Progress | None = None,
                                 progress_name: str = "", **kwargs: Any) -> Any:
        if progress is not None:
            _report_cells(nb_man, progress, progress_name)
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


def _report_cells(nb_man: Any, progress: Progress, name: str) -> None:
    code = [i for i, cell in enumerate(nb_man.nb.cells) if cell.cell_type == "code"]
    position = {index: n for n, index in enumerate(code, start=1)}
    started: dict[int, float] = {}
    cell_start, cell_complete = nb_man.cell_start, nb_man.cell_complete

    def start(cell: Any, cell_index: int | None = None, **kwargs: Any) -> Any:
        if cell_index is not None:
            started[cell_index] = time.perf_counter()
        return cell_start(cell, cell_index, **kwargs)

    def complete(cell: Any, cell_index: int | None = None, **kwargs: Any) -> Any:
        result = cell_complete(cell, cell_index, **kwargs)
        if cell_index in position:
            took = time.perf_counter() - started.get(cell_index, time.perf_counter())
            status = "FAILED" if cell.metadata.get("papermill", {}).get("exception") else "ok"
            progress(f"  {name} cell {position[cell_index]}/{len(code)} {status} ({took:.1f} s)")
        return result

    nb_man.cell_start, nb_man.cell_complete = start, complete


papermill_engines.register(ENGINE, ProgressEngine)
