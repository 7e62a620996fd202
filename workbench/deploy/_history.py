"""Every rollout's record, one JSON line each (``$WORKBENCH_DEPLOY_HISTORY`` or ``~/.workbench/deployments.jsonl``)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench._settings import settings

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["rollout_id", "started", "finished", "user", "package", "version", "package_id", "strategy", "status",
           "reason", "devices", "active", "failed", "rolled_back", "skipped", "pending", "broker"]


def history_file() -> Path:
    """Where deployments are recorded.

    Example:
        >>> history_file().suffix
        '.jsonl'
    """
    return settings().deploy_history or Path.home() / ".workbench" / "deployments.jsonl"


def append(record: dict[str, Any], path: Path | None = None) -> None:
    """Append one rollout's record; a lock keeps concurrent writers' lines whole."""
    target = path or history_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=str) + "\n"
    with open(target, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
        fcntl.flock(handle, fcntl.LOCK_UN)


def read(path: Path | None = None, *, broker: str | None = None) -> pd.DataFrame:
    """Every recorded rollout (of one broker's fleet, if given), newest last.

    Example:
        >>> read().columns[0]
        'rollout_id'
    """
    import pandas as pd

    rows = []
    target = path or history_file()
    if target.exists():
        for line in target.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: skip it, keep the rest
            if isinstance(row, dict) and (broker is None or row.get("broker") == broker):
                rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("started", "finished"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame
