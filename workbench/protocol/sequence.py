"""Monotonic sequence numbers for what the workbench signs: packages and rollback grants.

A device refuses a package whose signed sequence is below the one it already installed, so
a replayed older (validly signed) desired state cannot downgrade it (issue 12, row 6). The
numbers come from one counter per signing key, kept next to the key: each is greater than
every earlier one signed with that key and at least the current time in microseconds, so
two workbench machines sharing a key (or a key restored from a backup) still count upwards.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

SEQUENCE_FILE = "sequence"
# JSON numbers beyond this are not exact in every decoder; a device treats them as malformed.
MAX_SEQUENCE = 2**53


def next_sequence(directory: str | os.PathLike[str]) -> int:
    """Take the next sequence number of the signing key in ``directory`` (persisted before it is returned).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> next_sequence(folder) < next_sequence(folder)
        True
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SEQUENCE_FILE
    # Two processes signing at once must not hand out the same number: the lock spans read and write.
    with open(folder / f".{SEQUENCE_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            last = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            last = 0
        sequence = max(last + 1, time.time_ns() // 1000)
        tmp = path.with_name(f".{SEQUENCE_FILE}.tmp{os.getpid()}")
        with open(tmp, "w") as handle:
            handle.write(str(sequence))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    return sequence


def manifest_sequence(manifest: dict[str, Any]) -> int:
    """The signed sequence of a package manifest: 0 for one signed before sequences existed, or a malformed one.

    Example:
        >>> manifest_sequence({"sequence": 7}), manifest_sequence({})
        (7, 0)
    """
    value = manifest.get("sequence")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQUENCE:
        return 0
    return value
