"""`workbench demo` and `workbench runs`: run the curated notebooks headless and compare runs."""

from __future__ import annotations

import argparse
import functools
import json
import sys

from workbench.errors import WorkbenchError


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run every curated notebook headless against a local fleet",
                          description="Start a local fleet unless one is up (and leave it running), run every "
                          "notebook in notebooks/ in name order (except dashboard.ipynb) with papermill into "
                          "OUT/<timestamp>/, print a summary, and exit non-zero if any notebook failed.")
    demo.add_argument("--devices", type=int, default=3, help="devices for a fleet the demo starts (default: 3)")
    demo.add_argument("--notebooks", default="notebooks/*.ipynb", metavar="GLOB",
                      help="which notebooks to run (default: notebooks/*.ipynb)")
    demo.add_argument("--out", default="runs", help="where run directories go (default: runs/)")
    demo.add_argument("--run-dir", help="the local fleet's run dir (default: $WORKBENCH_RUN_DIR or ~/.workbench/fleet)")
    demo.add_argument("--cell-timeout", type=float, default=600.0, help="seconds one cell may run (default: 600)")
    demo.add_argument("--idle", action="store_true",
                      help="leave the devices idle afterwards (by default each serves a digits model at "
                           "10 inferences/s, so `workbench dashboard` shows live charts)")
    demo.add_argument("--json", action="store_true", help="print the run summary as JSON")
    demo.set_defaults(func=_demo)

    runs = sub.add_parser("runs", help="look at and compare notebook run directories")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    diff = runs_sub.add_parser("diff", help="figures of two runs side by side; exit 1 if any moved beyond tolerance",
                               description="Compare the figures recorded by the notebooks of run A (the baseline) "
                               "and run B. Exit code 1 when a figure moved beyond its tolerance, disappeared, or a "
                               "notebook failed in B.")
    diff.add_argument("before", metavar="A", help="baseline run directory, e.g. runs/20250101-120000")
    diff.add_argument("after", metavar="B", help="run directory to compare with it")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=_diff)

    show = runs_sub.add_parser("show", help="status, duration and figures of one run directory")
    show.add_argument("run", metavar="RUN", help="a run directory, e.g. runs/20250101-120000")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)


def _demo(args: argparse.Namespace) -> int:
    from workbench.runs import (
        LIVE_RATE_HZ,
        curated_notebooks,
        demo_parameters,
        ensure_fleet,
        leave_serving,
        new_run_dir,
        run_notebooks,
        wall_time_line,
    )
    from workbench.runs._index import INDEX_FILE

    paths = curated_notebooks(args.notebooks)
    fleet = ensure_fleet(args.devices, args.run_dir)
    # With --json, stdout carries the JSON alone.
    say = functools.partial(print, file=sys.stderr if args.json else sys.stdout, flush=True)
    if fleet.started:
        say(f"fleet: started {fleet.devices} devices (broker {fleet.broker}) in {fleet.run_dir}; "
            f"left running: stop it with `workbench down --run-dir {fleet.run_dir}`")
    else:
        say(f"fleet: using the fleet already up in {fleet.run_dir} ({fleet.devices} devices, broker {fleet.broker})")
    out = new_run_dir(args.out)
    say(f"running {len(paths)} notebook{'s' if len(paths) != 1 else ''} into {out}")
    summary = run_notebooks(paths, out, parameters=demo_parameters(fleet),
                            cell_timeout=args.cell_timeout, progress=say)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.table())
        budget = wall_time_line(summary)
        if budget:
            print(budget)
        failed = summary.failed
        print(f"{len(summary.runs) - len(failed)} of {len(summary.runs)} notebooks ok; executed notebooks and HTML "
              f"in {out}" + (f"; see {failed[0].output} for the first failure" if failed else ""))
        print(f"open {(out / INDEX_FILE).resolve().as_uri()} for every notebook as HTML (no kernel needed)")
    if not args.idle:
        try:
            serving = leave_serving(fleet)
            say(f"fleet: {', '.join(serving)} left serving a digits model at {LIVE_RATE_HZ:g} inferences/s; "
                "watch them live with `make dashboard` (or `workbench dashboard`), stop them with "
                f"`workbench down --run-dir {fleet.run_dir}`")
        except WorkbenchError as exc:  # the notebooks' results stand; say why the fleet is not live
            say(f"fleet: could not leave the devices serving ({exc}); the dashboard will show no inference")
    return 0 if summary.ok else 1


def _diff(args: argparse.Namespace) -> int:
    from workbench.runs import diff_runs

    result = diff_runs(args.before, args.after)
    if args.json:
        print(json.dumps([{"notebook": c.notebook, "figure": c.name, "state": c.state, "flagged": c.flagged,
                           "a": c.before.to_dict() if c.before else None,
                           "b": c.after.to_dict() if c.after else None} for c in result.changes], indent=2))
    else:
        print(f"A = {args.before}\nB = {args.after}")
        print(result.table())
    return 1 if result.flagged else 0


def _show(args: argparse.Namespace) -> int:
    from workbench.runs import read_run

    summary = read_run(args.run)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.table())
    return 0 if summary.ok else 1
