"""A client of the hub's API: the same answers in every kernel, dashboard and command.

The HTTP transport is an ``httpx.Client``; pass ``http=`` to run against anything that is one
(Starlette's in-process ``TestClient``, a client with a proxy or client certificates).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench._files import write_private
from workbench.errors import ConfigError, DeployConflictError, HubAuthError, HubError, HubUnreachableError
from workbench.hub._arrow import from_ipc, points_frame
from workbench.telemetry._time import Duration, Instant, epoch, seconds

if TYPE_CHECKING:
    import httpx
    import pandas as pd

    from workbench.telemetry._ingest import PointsListener


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in ``path``; raises :class:`HubAuthError` naming the file when it cannot be read.

    Example:
        >>> read_token("/tmp/wb-fleet/hub.token")   # doctest: +SKIP
        'mN3...'
    """
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise HubAuthError(f"cannot read the hub token {path}: {exc.strerror}; it is written by `workbench up` "
                           "(hub.token in the run dir) or `workbench hub --token-file`") from None
    if not token:
        raise HubAuthError(f"the hub token file {path} is empty")
    return token


def ensure_token(path: Path) -> str:
    """The token in ``path``, made (random, 0600) when the file does not exist yet.

    Example:
        >>> len(ensure_token(Path("/tmp/wb-example.token"))) >= 32   # doctest: +SKIP
        True
    """
    if path.exists():
        return read_token(path)
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


class HubStream:
    """A live stream of the hub's committed points (server-sent events), read by a thread of its own.

    The thread never dies silently: an error, a broken connection or a listener that raises is
    counted in :attr:`errors` and the stream reconnects with backoff until :meth:`close`.
    """

    def __init__(self, client: HubClient, metrics: list[str], listener: PointsListener) -> None:
        self.client = client
        self.metrics = metrics
        self.listener = listener
        self.events = 0
        self.errors: dict[str, int] = {}
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name="wb-hub-stream", daemon=True)
        self._thread.start()

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _run(self) -> None:
        import httpx

        backoff = 0.2
        params = {"metric": list(self.metrics)}
        while not self._stop.is_set():
            try:
                with httpx.Client(base_url=self.client.url, timeout=httpx.Timeout(10.0, read=30.0),
                                  verify=self.client.verify) as http, \
                        http.stream("GET", "/v1/telemetry/stream", params=params, headers=self.client.headers) as reply:
                    if reply.status_code != 200:
                        self._count(f"http_{reply.status_code}")
                        raise HubError(f"the hub's stream answered {reply.status_code}")
                    self._response = reply
                    self.connected.set()
                    backoff = 0.2
                    for line in reply.iter_lines():
                        if self._stop.is_set():
                            return
                        if line.startswith("data: "):
                            self._deliver(line[6:])
            except Exception as exc:  # network, protocol or a closed response: count it, wait, reconnect
                if self._stop.is_set():
                    return
                self._count(type(exc).__name__)
            finally:
                self.connected.clear()
                self._response = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _deliver(self, data: str) -> None:
        import numpy as np

        try:
            event = json.loads(data)
            ts = np.asarray(event["ts"], dtype=np.float64)
            values = np.asarray(event["values"], dtype=np.float64)
            device, metric = str(event["device"]), str(event["metric"])
        except (ValueError, KeyError, TypeError):
            self._count("bad_event")
            return
        try:
            self.listener(device, metric, ts, values)
            self.events += 1
        except Exception:  # the listener's bug must not end the stream
            self._count("listener_error")

    def close(self) -> None:
        """End the stream and its thread."""
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
        self._thread.join(timeout=5)


class HubClient:
    """Queries, counters and alerts of a fleet's hub, as DataFrames.

    Example:
        >>> hub = HubClient("http://127.0.0.1:8765", token=read_token("/tmp/wb-fleet/hub.token"))  # doctest: +SKIP
        >>> hub.query("latency_p95_ms", since="1h", every="10s")                                 # doctest: +SKIP
    """

    def __init__(self, url: str, *, token: str | None = None, token_file: str | os.PathLike[str] | None = None,
                 timeout: float = 10.0, verify: str | bool = True, http: httpx.Client | None = None) -> None:
        import httpx

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"the hub's address must be http(s)://host:port, got {url!r}")
        if token is None and token_file is not None:
            token = read_token(token_file)
        if not token:
            raise HubAuthError(f"no token for the hub at {url}: pass token= or token_file= (a local fleet's is "
                               "hub.token in its run dir)")
        self.url = url.rstrip("/")
        self.verify = verify
        self._http = http or httpx.Client(base_url=self.url, timeout=timeout, verify=verify)
        self._owns_http = http is None
        self.headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    def for_record(cls, record: dict[str, Any], **options: Any) -> HubClient:
        """The hub of a local fleet's record (fleet.json); raises :class:`HubError` if it has none."""
        entry = record.get("hub") or {}
        if not entry.get("url") or not entry.get("token_file"):
            raise HubError("this fleet runs no hub: it was started with `workbench up --no-hub`; start it without "
                           "that option, or run `workbench hub` against its broker")
        return cls(str(entry["url"]), token_file=entry["token_file"], **options)

    # -- transport ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                 **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http.request(method, path, headers={**self.headers, **(headers or {})}, **kwargs)
        except httpx.TransportError as exc:
            raise HubUnreachableError(f"no hub answered at {self.url} ({type(exc).__name__}: {exc}); start it "
                                      "(`workbench up` for a local fleet, `workbench hub` for a real one) or "
                                      "check the address") from None
        if response.status_code == 200:
            return response
        try:
            message = str(response.json().get("error"))
        except (ValueError, AttributeError):
            message = response.text[:500]
        if response.status_code == 401:
            raise HubAuthError(f"the hub at {self.url} refused the request: {message}")
        if response.status_code == 400:
            raise ConfigError(message)
        if response.status_code == 409:
            raise DeployConflictError(message) if "being deployed" in message else HubError(message)
        raise HubError(f"the hub at {self.url} answered {response.status_code} to {path}: {message}")

    def _json(self, path: str, **kwargs: Any) -> Any:
        return self._request("GET", path, **kwargs).json()

    # -- API ----------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/healthz``: status, uptime, store, devices heard from, ingestion backlog."""
        return dict(self._json("/healthz"))

    def query(self, metric: str | list[str], *, devices: str | list[str] | None = "all", since: Instant = "10m",
              until: Instant = None, every: Duration | None = None, agg: str = "mean") -> pd.DataFrame:
        """History of ``metric`` from the hub's store: time (UTC), device_id, metric, value.

        Same arguments and answer as ``fleet.telemetry.query``.

        Example:
            >>> hub.query("latency_p95_ms", devices=["sim-01"], since="1h", every="1m", agg="max")  # doctest: +SKIP
        """
        now = time.time()
        params: list[tuple[str, str | float]] = [("metric", m) for m in ([metric] if isinstance(metric, str)
                                                                        else list(metric))]
        if devices not in (None, "all"):
            params += [("device", d) for d in ([devices] if isinstance(devices, str) else list(devices or []))]
        start, end = epoch(since, now=now, what="since"), epoch(until, now=now, what="until")
        if start is not None:
            params.append(("since", repr(start)))
        if end is not None:
            params.append(("until", repr(end)))
        if every is not None:
            params.append(("every", repr(seconds(every, "every"))))
        params.append(("agg", agg))
        return points_frame(self._request("GET", "/v1/telemetry/query", params=params).content)

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per-device ingestion counters, as a dict by device."""
        return dict(self._json("/v1/telemetry/stats"))

    def feeds(self) -> dict[str, dict[str, Any]]:
        """Each device's stream: last batch received, tags, newest value of each metric, missing batches."""
        return dict(self._json("/v1/telemetry/feeds"))

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait (at most ``timeout`` s) until what the hub received so far can be queried."""
        answer = self._request("POST", "/v1/flush", params={"timeout": repr(float(timeout))},
                               timeout=float(timeout) + 10.0).json()
        return bool(answer.get("idle"))

    def sync_rows(self, device: str) -> list[tuple[int, str, str, float]]:
        """``(seq, priority, kind, stored_at)`` of every sync item the hub stored for ``device``."""
        return [(int(s), str(p), str(k), float(t)) for s, p, k, t in self._json("/v1/sync/rows",
                                                                               params={"device": device})]

    def sync_seqs(self, device: str, kind: str | None = None) -> list[int]:
        params = {"device": device, **({"kind": kind} if kind else {})}
        return [int(seq) for seq in self._json("/v1/sync/seqs", params=params)]

    def stream(self, metrics: list[str], listener: PointsListener) -> HubStream:
        """Call ``listener(device, metric, ts, values)`` with every new point of ``metrics``, from a thread.

        The stream reconnects by itself; :meth:`HubStream.close` ends it.

        Example:
            >>> stream = hub.stream(["latency_p95_ms"], print); time.sleep(5); stream.close()   # doctest: +SKIP
        """
        return HubStream(self, list(metrics), listener)

    def stats(self) -> pd.DataFrame:
        """Per-device ingestion counters, one row per device."""
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.counters(), orient="index")
        frame.index.name = "device_id"
        return frame.reset_index()

    def sync_stats(self) -> dict[str, dict[str, int]]:
        """Per-device sync receiver counters: stored, duplicates, rejects."""
        return dict(self._json("/v1/sync/stats"))

    def ingest(self, after: int | None = None) -> dict[str, Any]:
        """Points and batches the hub committed, and publish-to-commit latency after the ``after``-th batch.

        Example:
            >>> mark = hub.ingest()["batches"]; time.sleep(10); hub.ingest(after=mark)["latency_ms"]   # doctest: +SKIP
            {'count': 812, 'p50': 22.4, 'p99': 48.0}
        """
        return dict(self._json("/v1/ingest", params={"after": str(after)} if after is not None else {}))

    def fleet_info(self) -> dict[str, Any]:
        """Where the hub's fleet is: ``{"broker": "mqtts://gw:8883", "store": ...}`` (no credentials).

        Example:
            >>> HubClient("https://hub.example:8443", token=token).fleet_info()["broker"]   # doctest: +SKIP
            'mqtts://gw.example:8883'
        """
        return dict(self._json("/v1/fleet"))

    def upload_package(self, directory: str | os.PathLike[str]) -> str:
        """Send a signed package folder to the hub; returns where the hub keeps it (what a rollout spec names).

        Example:
            >>> hub.upload_package("out/digits")   # doctest: +SKIP
            '/var/lib/workbench/packages/3f2a...-9c1d...'
        """
        from workbench.hub._packages import MEDIA_TYPE, pack

        body = pack(directory)
        response = self._request("POST", "/v1/packages", content=body, timeout=300.0,
                                 headers={"Content-Type": MEDIA_TYPE})
        return str(response.json()["path"])

    def start_rollout(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Have the hub run a rollout (see ``fleet.deploy``); returns its first snapshot."""
        return dict(self._request("POST", "/v1/rollouts", content=json.dumps(spec), timeout=60.0,
                                  headers={"Content-Type": "application/json"}).json())

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """One rollout's state: status, waves, per-device rows, gate readings, and its report once done."""
        return dict(self._json(f"/v1/rollouts/{rollout_id}"))

    def rollouts(self) -> list[dict[str, Any]]:
        """Every rollout the hub ran or runs, newest first."""
        return list(self._json("/v1/rollouts"))

    def alerts(self, since: Instant = None) -> pd.DataFrame:
        """Fired alerts: time, device_id, rule, metric, value, message."""
        start = epoch(since, what="since")
        params = {"since": repr(start)} if start is not None else {}
        return from_ipc(self._request("GET", "/v1/alerts", params=params).content)

    def add_rule(self, name: str, metric: str, **conditions: Any) -> list[dict[str, Any]]:
        """Add (or replace) an alert rule in the hub, where it persists; returns every rule.

        Example:
            >>> hub.add_rule("slow", "latency_p95_ms", above=50, for_points=3)   # doctest: +SKIP
        """
        body = json.dumps({"name": name, "metric": metric, **conditions})
        return list(self._request("POST", "/v1/alerts/rules", content=body,
                                  headers={"Content-Type": "application/json"}).json())

    def rules(self) -> list[dict[str, Any]]:
        return list(self._json("/v1/alerts/rules"))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the transport given to it is closed)."""
        return bool(self._http.is_closed)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HubClient {self.url}>"
