"""The artifact server as a long-running process: what `workbench up` starts next to the broker.

Run as ``python -m workbench.deploy._serve --dir DIR --port PORT``; it serves ``DIR/<sha256>``
at ``http://HOST:PORT/artifacts/<sha256>`` until SIGTERM, logging one line per request.
Any workbench process (a notebook, the CLI) publishes packages by writing into ``DIR``
(an :class:`~workbench.protocol.artifacts.ArtifactStore`), so devices can download them
for as long as the fleet runs, whichever process started the rollout.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from workbench.errors import ArtifactError
from workbench.protocol.artifacts import ArtifactServer, ArtifactStore

HOST = "127.0.0.1"


def spawn_artifact_server(directory: Path, log_file: Path, *, host: str = HOST, port: int = 0,
                          wait: float = 20.0) -> dict[str, Any]:
    """Start the artifact server process serving ``directory``; return its record for fleet.json.

    Example:
        >>> record = spawn_artifact_server(Path("/tmp/wb/artifacts"), Path("/tmp/wb/a.log"))  # doctest: +SKIP
        >>> record["url"]                                                                   # doctest: +SKIP
        'http://127.0.0.1:40125'
    """
    from workbench.sim import _procs

    directory.mkdir(parents=True, exist_ok=True)
    port = port or _procs.free_port(host)
    argv = [sys.executable, "-m", "workbench.deploy._serve", "--dir", str(directory), "--host", host,
            "--port", str(port)]
    proc = _procs.spawn_listening(argv, log_file, host, port, wait=wait, what="the artifact server",
                                  error=ArtifactError)
    return {"kind": "workbench", "url": f"http://{host}:{port}", "host": host, "port": port,
            "directory": str(directory), **proc}


def store_for_record(record: dict[str, Any]) -> ArtifactStore | None:
    """The artifact store of a local fleet's record (None for a fleet started without one).

    Example:
        >>> store_for_record({"artifacts": {"directory": "/tmp/wb/a", "url": "http://127.0.0.1:1"}}).base_url
        'http://127.0.0.1:1'
    """
    entry = record.get("artifacts") or {}
    if not entry.get("directory") or not entry.get("url"):
        return None
    return ArtifactStore(entry["directory"], entry["url"])


def main(argv: list[str] | None = None) -> int:
    """Serve a directory of artifacts until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m workbench.deploy._serve", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="directory of <sha256>-named files")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, help="bytes per second per response (a slow link, for tests)")
    args = parser.parse_args(argv)
    server = ArtifactServer(args.dir, host=args.host, port=args.port, rate=args.rate, log=True)

    def on_signal(_signum: int, _frame: Any) -> None:
        # shutdown() blocks until serve_forever returns: call it from another thread.
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"serving {args.dir} at {server.base_url}/artifacts/<sha256>", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
