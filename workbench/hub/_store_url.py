"""``--store`` URLs of the hub: a DuckDB file, or a PostgreSQL/TimescaleDB database."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from workbench.errors import ConfigError

_FORMS = ("duckdb:///abs/path/fleet.duckdb, duckdb://relative/fleet.duckdb, a plain file path, or "
          "postgresql://user@host/db")


@dataclass(frozen=True)
class StoreURL:
    """Where the hub keeps telemetry: ``backend`` is ``duckdb`` (``path``) or ``postgres`` (``dsn``).

    Example:
        >>> StoreURL.parse("duckdb:///var/lib/workbench/fleet.duckdb").path
        PosixPath('/var/lib/workbench/fleet.duckdb')
        >>> StoreURL.parse("postgresql://wb@db/workbench").backend
        'postgres'
    """

    backend: str
    path: Path | None = None
    dsn: str | None = None

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        """Read a ``--store`` value; raises :class:`ConfigError` naming it and the forms it can take."""
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"the hub needs a store: {_FORMS}")
        url = url.strip()
        if url.startswith(("postgresql://", "postgres://")):
            return cls("postgres", dsn=url)
        if url.startswith("duckdb://"):
            rest = url[len("duckdb://"):]
            if rest in ("", "/", ":memory:", "/:memory:"):
                raise ConfigError(f"--store {url!r} keeps nothing: the hub's store holds the fleet's history for every "
                                  f"client, so give it a file ({_FORMS})")
            return cls("duckdb", path=Path(rest).expanduser())
        if "://" in url:
            raise ConfigError(f"--store {url!r} is not a store the hub knows; use {_FORMS}")
        return cls("duckdb", path=Path(url).expanduser())

    @property
    def data_dir(self) -> Path | None:
        """The folder beside a DuckDB file, where the hub keeps its other files (None for PostgreSQL)."""
        return self.path.resolve().parent if self.path is not None else None

    def __str__(self) -> str:
        """The URL as logs and errors show it: a PostgreSQL password is left out."""
        if self.backend == "postgres":
            parts = urlsplit(str(self.dsn))
            if parts.password is None:
                return str(self.dsn)
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return f"duckdb://{self.path}"
