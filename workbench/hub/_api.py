"""The hub's HTTP API (Starlette on uvicorn): queries as Arrow IPC, counters as JSON, health and metrics.

Why Starlette + uvicorn and Arrow IPC over plain HTTP, not Arrow Flight: every client already
speaks HTTP (httpx, a browser, curl, Prometheus), the same server carries the live stream to
widgets (server-sent events), and an Arrow IPC body keeps DataFrames typed (UTC timestamps,
float64) at a fraction of JSON's size and parse time. Flight would add gRPC for one verb.

``/v1/...`` needs ``Authorization: Bearer <token>``; ``/healthz`` and ``/metrics`` are open
(probes and scrapers), and the server binds loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from workbench.errors import ConfigError, HubError, WorkbenchError
from workbench.hub._arrow import MEDIA_TYPE, table_to_ipc, to_ipc

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from workbench.hub._service import Hub

log = logging.getLogger("workbench.hub")

# Bounds on what one request may ask for: names, counts, body size.
MAX_NAMES = 1000
MAX_NAME_LENGTH = 200
MAX_BODY_BYTES = 64 * 1024
MAX_FLUSH_S = 10.0
# Events a stream client may fall behind by before its oldest are dropped (counted in hub.stream_drops).
STREAM_QUEUE = 2000
# A comment line this often keeps proxies from closing an idle stream and notices a client that left.
STREAM_HEARTBEAT_S = 2.0
AGGREGATES = ("mean", "min", "max", "sum", "count", "first", "last")


def _names(request: Request, key: str, *, required: bool = False) -> list[str] | None:
    values = [v for raw in request.query_params.getlist(key) for v in raw.split(",") if v]
    if not values:
        if required:
            raise ConfigError(f"the query needs {key}=NAME (repeatable, or comma-separated)")
        return None
    if len(values) > MAX_NAMES or any(len(v) > MAX_NAME_LENGTH for v in values):
        raise ConfigError(f"{key}: at most {MAX_NAMES} names of at most {MAX_NAME_LENGTH} characters each")
    return values


def _number(request: Request, key: str) -> float | None:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw[:40]!r} is not a number (epoch seconds, or seconds for every=)") from None
    if not math.isfinite(value):
        raise ConfigError(f"{key}={raw[:40]!r} must be a finite number")
    return value


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a value that is not a number yet (no inference, no offset) goes as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _json(content: Any) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(_finite(content))


async def _json_body(request: Request, what: str) -> Any:
    """A request's JSON body, at most MAX_BODY_BYTES; raises :class:`ConfigError` naming ``what`` otherwise."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ConfigError(f"{what} is at most {MAX_BODY_BYTES} bytes of JSON")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ConfigError(f"{what} must be JSON ({exc})") from None


def make_app(hub: Hub, token: str) -> Starlette:
    """The API of ``hub``, guarded by ``token``; serve it with uvicorn (:func:`serve`).

    Example:
        >>> server = ApiServer(hub, "secret").start()                       # doctest: +SKIP
        >>> httpx.get(f"{server.url}/healthz").json()["status"]             # doctest: +SKIP
        'ok'
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.responses import Response as RawResponse
    from starlette.routing import Route

    if not token:
        raise ConfigError("the hub needs a token: `workbench up` writes one, `workbench hub --token-file` reads one")
    expected = token.encode()

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            given = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
            if not given or not hmac.compare_digest(given, expected):
                why = "wrong token" if given else "no token"
                return JSONResponse({"error": f"{why}: send Authorization: Bearer <token> (the run dir's hub.token "
                                     "for a local fleet)"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        try:
            return await call_next(request)
        except ConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except WorkbenchError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except Exception:  # a bug must answer and be logged, not kill the connection silently
            log.exception("hub request %s failed", request.url.path)
            return JSONResponse({"error": "internal error; see the hub's log"}, status_code=500)

    async def healthz(request: Request) -> Response:
        return JSONResponse(hub.health())

    async def metrics(request: Request) -> Response:
        from workbench.hub._metrics import exposition

        body, content_type = await run_in_threadpool(exposition, hub)
        return RawResponse(body, media_type=content_type)

    async def query(request: Request) -> Response:
        metric = _names(request, "metric", required=True)
        devices = _names(request, "device")
        agg = request.query_params.get("agg", "mean")
        if agg not in AGGREGATES:
            raise ConfigError(f"agg={agg[:40]!r} is not one of {', '.join(AGGREGATES)}")
        every = _number(request, "every")
        if every is not None and every <= 0:
            raise ConfigError(f"every={every:g} must be a positive number of seconds")
        table = await run_in_threadpool(hub.query_table, metric or [], devices=devices,
                                        since=_number(request, "since"), until=_number(request, "until"),
                                        every=every, agg=agg)
        return RawResponse(table_to_ipc(table), media_type=MEDIA_TYPE)

    async def stats(request: Request) -> Response:
        return _json(await run_in_threadpool(hub.stats))

    async def sync_stats(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(hub.sync_stats))

    async def feeds(request: Request) -> Response:
        return _json(await run_in_threadpool(hub.feeds))

    async def flush(request: Request) -> Response:
        timeout = min(max(_number(request, "timeout") or 1.0, 0.0), MAX_FLUSH_S)
        return JSONResponse({"idle": await run_in_threadpool(hub.wait_idle, timeout)})

    async def stream(request: Request) -> Response:
        from starlette.responses import StreamingResponse

        metrics = _names(request, "metric", required=True) or []
        wanted = set(metrics)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=STREAM_QUEUE)

        def put(event: str) -> None:
            if queue.full():  # a slow client loses its oldest points, never the hub its pace
                queue.get_nowait()
                hub.stream_drops += 1
            queue.put_nowait(event)

        def listener(device: str, metric: str, ts: Any, values: Any) -> None:  # the hub's writer thread
            if metric not in wanted:
                return
            try:
                event = json.dumps({"device": device, "metric": metric, "ts": ts.tolist(), "values": values.tolist()})
                loop.call_soon_threadsafe(put, event)
            except Exception:  # a closed loop or a bad value must not reach the writer thread
                hub.stream_drops += 1

        unsubscribe = hub.subscribe(metrics, listener)

        async def events() -> AsyncIterator[str]:
            try:
                yield ": stream open\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=STREAM_HEARTBEAT_S)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keepalive\n\n"
                        continue
                    yield f"data: {event}\n\n"
            finally:
                unsubscribe()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _device(request: Request) -> str:
        names = _names(request, "device", required=True) or []
        if len(names) != 1:
            raise ConfigError("give one device=ID")
        return names[0]

    async def sync_rows(request: Request) -> Response:
        rows = await run_in_threadpool(hub.sync_rows, _device(request))
        return JSONResponse([list(row) for row in rows])

    async def sync_seqs(request: Request) -> Response:
        kind = request.query_params.get("kind") or None
        return JSONResponse(await run_in_threadpool(hub.sync_seqs, _device(request), kind))

    async def ingest(request: Request) -> Response:
        after = _number(request, "after")
        return JSONResponse(await run_in_threadpool(hub.ingest, int(after) if after is not None else None))

    async def alerts(request: Request) -> Response:
        frame = await run_in_threadpool(hub.alerts, _number(request, "since"))
        return RawResponse(to_ipc(frame), media_type=MEDIA_TYPE)

    async def rules(request: Request) -> Response:
        from dataclasses import asdict

        from workbench.telemetry._alerts import AlertRule

        if request.method == "POST":
            entry = await _json_body(request, "an alert rule")
            try:
                rule = AlertRule(**entry) if isinstance(entry, dict) else None
            except TypeError as exc:
                raise ConfigError(f"not an alert rule ({exc}); send JSON such as "
                                  '{"name": "slow", "metric": "latency_p95_ms", "above": 50}') from None
            if rule is None:
                raise ConfigError("an alert rule is a JSON object with name, metric and above/below/zscore")
            await run_in_threadpool(hub.add_rule, rule)
        return JSONResponse([asdict(rule) for rule in hub.rules()])

    def _rollouts() -> Any:
        if hub.rollouts is None:
            if not hub.is_leader:
                raise HubError(f"hub replica {hub.replica} does not lead group {hub.group}: the leader runs rollouts; "
                               "ask the replica whose /healthz says leader true")
            raise HubError("this hub runs no rollouts: start it with --run-dir (a local fleet) or --rollouts")
        return hub.rollouts

    async def rollouts(request: Request) -> Response:
        manager = _rollouts()
        if request.method == "POST":
            spec = await _json_body(request, "a rollout request")
            return _json(await run_in_threadpool(manager.start, spec))
        return _json(await run_in_threadpool(manager.summaries))

    async def fleet(request: Request) -> Response:
        return _json(hub.fleet_info())

    async def packages(request: Request) -> Response:
        from workbench.hub._packages import receive

        folder = await receive(request.stream(), hub.data_dir)
        return _json({"path": str(folder)})

    async def rollout(request: Request) -> Response:
        rollout_id = str(request.path_params["rollout_id"])
        try:
            return _json(await run_in_threadpool(_rollouts().get, rollout_id))
        except HubError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"no such endpoint: {request.url.path}", status_code=404)

    routes = [
        Route("/healthz", healthz), Route("/metrics", metrics),
        Route("/v1/telemetry/query", query), Route("/v1/telemetry/stats", stats),
        Route("/v1/telemetry/feeds", feeds), Route("/v1/telemetry/stream", stream),
        Route("/v1/flush", flush, methods=["POST"]),
        Route("/v1/sync/stats", sync_stats), Route("/v1/sync/rows", sync_rows), Route("/v1/sync/seqs", sync_seqs),
        Route("/v1/ingest", ingest), Route("/v1/alerts", alerts),
        Route("/v1/rollouts", rollouts, methods=["GET", "POST"]), Route("/v1/rollouts/{rollout_id}", rollout),
        Route("/v1/packages", packages, methods=["POST"]), Route("/v1/fleet", fleet),
        Route("/v1/alerts/rules", rules, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
                     exception_handlers={404: not_found})


class ApiServer:
    """The API on a bound socket: :meth:`run` serves in this thread, :meth:`start` in a background one.

    Binding first means the URL (and a port 0's real number) is known before serving begins.

    Example:
        >>> server = ApiServer(hub, "token", port=0).start()   # doctest: +SKIP
        >>> server.url                                         # doctest: +SKIP
        'http://127.0.0.1:40131'
    """

    def __init__(self, hub: Hub, token: str, *, host: str = "127.0.0.1", port: int = 0, certfile: str | None = None,
                 keyfile: str | None = None) -> None:
        import socket

        import uvicorn

        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        bound = self._socket.getsockname()[1]
        self.url = f"{'https' if certfile else 'http'}://{'[' + host + ']' if ':' in host else host}:{bound}"
        config = uvicorn.Config(make_app(hub, token), log_config=None, access_log=False, ssl_certfile=certfile,
                                ssl_keyfile=keyfile, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (in the main thread) or :meth:`stop`."""
        self._server.run(sockets=[self._socket])

    def start(self, timeout: float = 10.0) -> ApiServer:
        """Serve in a background thread; return once it accepts requests."""
        self._thread = threading.Thread(target=self.run, name="wb-hub-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise HubError(f"the hub's API did not start serving {self.url} within {timeout:g} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()


def serve(hub: Hub, token: str, *, host: str = "127.0.0.1", port: int = 0, certfile: str | None = None,
          keyfile: str | None = None, on_listening: Callable[[str], None] | None = None) -> None:
    """Serve the hub's API until interrupted; ``on_listening(url)`` is called once the socket listens.

    With ``certfile``/``keyfile`` it serves HTTPS.

    Example:
        >>> serve(hub, token, port=8443)   # doctest: +SKIP
    """
    server = ApiServer(hub, token, host=host, port=port, certfile=certfile, keyfile=keyfile)
    if on_listening is not None:
        on_listening(server.url)
    server.run()
