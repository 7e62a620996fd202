"""Run notebooks headless with papermill: executed .ipynb, an HTML rendering, status and figures."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.runs._collect import outcome_of
from workbench.runs._html import render_html
from workbench.runs._index import write_index
from workbench.runs._kernel import ipc_kernel_manager, kernel_for_this_python
from workbench.runs._summary import NotebookRun, RunSummary

log = logging.getLogger("workbench.runs")


def declared_parameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The names (and papermill's view of the defaults) in a notebook's ``parameters`` cell.

    Example:
        >>> sorted(declared_parameters("notebooks/01_connect_fleet.ipynb"))   # doctest: +SKIP
        ['broker_url', 'expected_devices', 'run_dir', 'smoke', 'timeout']
    """
    import papermill

    return dict(papermill.inspect_notebook(str(path)))


def parameters_for(path: Path, common: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """``common`` parameters the notebook declares, then its ``own`` ones (passed whether declared or not)."""
    declared = declared_parameters(path) if common else {}
    return {**{k: v for k, v in common.items() if k in declared}, **own}


def run_one(
    source: Path,
    out_dir: Path,
    *,
    parameters: Mapping[str, Any],
    kernel_name: str,
    cell_timeout: float | None,
    start_timeout: float,
    html: bool,
    progress: Callable[[str], None] | None = None,
) -> NotebookRun:
    """Execute one notebook into ``out_dir``; a failing notebook gives a failed NotebookRun, not an exception."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from workbench.runs._progress import ENGINE

    target = out_dir / source.name
    # papermill saves after every cell: let it write a hidden file, and show the result only when whole.
    partial = out_dir / f".{source.stem}.partial.ipynb"
    started = time.perf_counter()
    error: str | None = None
    try:
        papermill.execute_notebook(
            str(source), str(partial), parameters=dict(parameters), kernel_name=kernel_name,
            execution_timeout=cell_timeout, start_timeout=start_timeout, progress_bar=False,
            log_output=False, cwd=str(source.parent), kernel_manager_class=ipc_kernel_manager(),
            # Widget state would carry plotly's whole bundle per chart (megabytes each) and, in the HTML, make
            # nbconvert pick widget views no page can draw offline: the widgets' snapshots show what they were.
            store_widget_state=False,
            engine_name=ENGINE, progress=progress, progress_name=source.name,
        )
    except PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # the kernel died, a cell timed out, the kernel would not start
        error = f"{type(exc).__name__}: {exc}"
        log.warning("notebook %s did not run to the end: %s", source, error)
    duration = time.perf_counter() - started
    if not partial.exists():
        return NotebookRun(name=source.name, source=str(source), output=target.name, html=None, status="failed",
                           duration_s=duration, error=error or "papermill wrote no output notebook")
    os.replace(partial, target)
    nb = nbformat.read(str(target), as_version=4)
    outcome = outcome_of(nb)
    html_name: str | None = None
    if html:
        html_path = target.with_suffix(".html")
        try:
            render_html(nb, html_path)
            html_name = html_path.name
        except Exception as exc:  # an HTML rendering problem must not hide the run's own outcome
            log.warning("could not render %s as HTML: %s", target, exc)
    failed = error is not None or outcome.failed
    return NotebookRun(
        name=source.name, source=str(source), output=target.name, html=html_name,
        status="failed" if failed else "ok", duration_s=duration,
        error=(outcome.error or error) if failed else None, error_cell=outcome.error_cell,
        figures=outcome.figures,
    )


def run_notebooks(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    parameters: Mapping[str, Any] | None = None,
    notebook_parameters: Mapping[str, Mapping[str, Any]] | None = None,
    kernel_name: str | None = None,
    cell_timeout: float | None = 600.0,
    start_timeout: float = 60.0,
    html: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RunSummary:
    """Execute each notebook headless with papermill into ``out_dir``, one after another.

    Each gets ``NAME.ipynb`` (executed, outputs and recorded figures included) and ``NAME.html``
    in ``out_dir``, plus ``summary.json`` for the whole run. ``parameters`` go to every
    notebook that declares them in its ``parameters`` cell; ``notebook_parameters`` maps a
    notebook's file name to parameters for it alone. A notebook that fails is recorded as
    failed with its error and the run goes on. The kernel is one that runs this Python
    (see :func:`kernel_for_this_python`) unless ``kernel_name`` names another. ``progress``, if
    given, gets a line as each notebook starts and ends and as each code cell completes. The run
    directory's ``index.html`` links every notebook's HTML (rewritten after each notebook).

    Example:
        >>> summary = run_notebooks(["notebooks/01_connect_fleet.ipynb"], "runs/try",
        ...                         parameters={"expected_devices": 3})                # doctest: +SKIP
        >>> summary["01_connect_fleet"].figures["devices_online"].value                 # doctest: +SKIP
        3
    """
    sources = [Path(p) for p in paths]
    if not sources:
        raise ConfigError("run_notebooks() got no notebooks; pass paths such as notebooks/01_connect_fleet.ipynb")
    for source in sources:
        if source.suffix != ".ipynb" or not source.is_file():
            raise ConfigError(f"{source} is not a notebook file (.ipynb); check the path")
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"notebooks share a file name ({', '.join(duplicates)}); their outputs would overwrite "
                          "each other in one out_dir: run them into separate directories")
    unknown = sorted(set(notebook_parameters or {}) - set(names))
    if unknown:
        raise ConfigError(f"notebook_parameters names notebooks not being run: {', '.join(unknown)} "
                          f"(running: {', '.join(names)})")
    kernel = kernel_for_this_python(kernel_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(str(out), started=time.time())
    for number, source in enumerate(sources, start=1):
        own = (notebook_parameters or {}).get(source.name, {})
        params = parameters_for(source.resolve(), parameters or {}, own)
        if progress is not None:
            progress(f"[{number}/{len(sources)}] {source.name}: running")
        run = run_one(source.resolve(), out, parameters=params, kernel_name=kernel, cell_timeout=cell_timeout,
                      start_timeout=start_timeout, html=html, progress=progress)
        summary.runs.append(run)
        if progress is not None:
            took = "" if run.duration_s is None else f" in {run.duration_s:.1f} s"
            progress(f"[{number}/{len(sources)}] {source.name}: {'ok' if run.ok else 'FAILED'}{took}")
        summary.write()  # after each notebook, so an interrupted run still says what it did
        write_index(summary)
    summary.finished = time.time()
    summary.write()
    write_index(summary)
    return summary
