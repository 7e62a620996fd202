"""Writing secrets to disk: private from the first byte, whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``path`` with mode 0600 from its first byte, atomically (temp file, fsync, rename).

    Example:
        >>> write_private(Path("/tmp/wb-example.key"), "secret\\n")   # doctest: +SKIP
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older tmp file keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
