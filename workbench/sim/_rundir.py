"""A local fleet's run directory: its record (fleet.json), logs, device data and secrets."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench._settings import settings
from workbench.errors import FleetError

RECORD_VERSION = 1


def default_run_dir() -> Path:
    """``$WORKBENCH_RUN_DIR``, else ``~/.workbench/fleet``: where `workbench up` and `connect()` meet.

    Example:
        >>> default_run_dir().name
        'fleet'
    """
    return settings().run_dir or Path.home() / ".workbench" / "fleet"


@dataclass(frozen=True)
class RunDir:
    """The files of one local fleet.

    Example:
        >>> RunDir(Path("/tmp/wb")).record_file
        PosixPath('/tmp/wb/fleet.json')
    """

    path: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None) -> RunDir:
        return cls(Path(path).expanduser().resolve() if path is not None else default_run_dir())

    @property
    def record_file(self) -> Path:
        return self.path / "fleet.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def broker_dir(self) -> Path:
        return self.path / "broker"

    @property
    def secrets(self) -> Path:
        return self.path / "secrets"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def read(self) -> dict[str, Any] | None:
        """The fleet record, or None when no fleet was started here."""
        try:
            record = json.loads(self.record_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise FleetError(
                f"the fleet record {self.record_file} is unreadable ({exc}); "
                "run `workbench down --run-dir ...` to clean it up"
            ) from None
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            raise FleetError(f"{self.record_file} is not a fleet record of version {RECORD_VERSION}")
        return record

    def write(self, record: dict[str, Any]) -> None:
        """Write the record atomically: readers see the old one or the new one."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.record_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": RECORD_VERSION, **record}, indent=2))
        os.replace(tmp, self.record_file)

    def clear(self) -> None:
        self.record_file.unlink(missing_ok=True)
