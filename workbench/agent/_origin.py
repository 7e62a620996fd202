"""The fleet's artifact origin: the only place an agent downloads from (issue 12, row 8).

A desired state or a ``benchmark`` command names a URL, and neither is signed, so a device
would otherwise fetch from any host it can reach: a probe of its network on the attacker's
behalf. An agent downloads only from its origins: ``$WORKBENCH_ARTIFACT_ORIGIN`` (comma
separated), else the ``DATA_DIR/artifact_origin`` file that ``workbench up`` writes (one per
line), else the broker's host (any port: the fleet's own machine). An origin is a scheme,
host and port; the path and query of a URL do not matter, credentials in a URL are refused.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from workbench._settings import settings
from workbench.errors import ArtifactError

ORIGIN_FILE = "artifact_origin"
ORIGIN_ENV = "WORKBENCH_ARTIFACT_ORIGIN"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _parts(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of an http(s) URL; raise ValueError for anything else."""
    split = urllib.parse.urlsplit(url.strip())
    if split.scheme not in _DEFAULT_PORTS or not split.hostname or split.username or split.password:
        raise ValueError(url)
    return split.scheme, split.hostname.lower(), split.port or _DEFAULT_PORTS[split.scheme]


class ArtifactOrigin:
    """Which URLs a device may download from.

    Example:
        >>> origin = ArtifactOrigin(["http://127.0.0.1:8765"], broker_host="127.0.0.1")
        >>> origin.allows("http://127.0.0.1:8765/artifacts/" + "0" * 64), origin.allows("file:///etc/hostname")
        (True, False)
    """

    def __init__(self, origins: list[str], *, broker_host: str) -> None:
        self.origins: set[tuple[str, str, int | None]] = set()
        for origin in origins:
            try:
                self.origins.add(_parts(origin))
            except ValueError:
                raise ArtifactError(f"artifact origin {origin[:200]!r} is not an http(s)://HOST[:PORT] URL; fix "
                                    f"${ORIGIN_ENV} or the {ORIGIN_FILE} file") from None
        self.broker_host = broker_host.lower()

    @classmethod
    def for_device(cls, data_dir: Path, broker_host: str) -> ArtifactOrigin:
        """The origins of the device whose data dir is ``data_dir`` (see the module's docstring for the order)."""
        origins = list(settings().artifact_origin or ())
        if not origins:
            try:
                origins = [line for line in (data_dir / ORIGIN_FILE).read_text().splitlines() if line.strip()]
            except OSError:
                origins = []
        return cls(origins, broker_host=broker_host)

    def allows(self, url: str) -> bool:
        """Whether ``url`` is on one of the origins (or, with none configured, on the broker's host)."""
        try:
            scheme, host, port = _parts(url)
        except ValueError:
            return False
        if self.origins:
            return (scheme, host, port) in self.origins
        return host == self.broker_host

    def check(self, url: str, what: str) -> None:
        """Raise :class:`ArtifactError` unless ``url`` is allowed; the message never repeats the URL's host."""
        if not self.allows(url):
            raise ArtifactError(f"{what}: the URL is not on this fleet's artifact origin; devices download only "
                                f"from the fleet's artifact server (set ${ORIGIN_ENV} on the device to add one)")


def write_origin(data_dir: Path, url: str) -> Path:
    """Record ``url`` as the artifact origin of the device whose data dir is ``data_dir`` (what `workbench up` does).

    Example:
        >>> write_origin(Path("/tmp/wb-fleet/data/sim-01"), "http://127.0.0.1:8765")   # doctest: +SKIP
    """
    _parts(url)  # a bad URL fails here, not on the device later
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ORIGIN_FILE
    tmp = path.with_name(f".{ORIGIN_FILE}.tmp")
    tmp.write_text(url.rstrip("/") + "\n")
    os.replace(tmp, path)
    return path


def write_origins(data_dir: str | os.PathLike[str], device_ids: list[str], url: str) -> None:
    """Record ``url`` as the artifact origin of every device of a local fleet (``DATA_DIR/DEVICE/artifact_origin``).

    Example:
        >>> write_origins("/tmp/wb-fleet/data", ["sim-01"], "http://127.0.0.1:8765")   # doctest: +SKIP
    """
    for device_id in device_ids:
        write_origin(Path(data_dir) / device_id, url)
