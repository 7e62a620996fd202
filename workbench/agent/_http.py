"""The base of the agent's small HTTP endpoints (``/healthz``, ``/infer``): JSON replies, no access log."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JSONHandler(BaseHTTPRequestHandler):
    """A request handler that answers with a JSON body and logs nothing per request.

    Example:
        >>> class Ping(JSONHandler):
        ...     def do_GET(self) -> None:
        ...         self.reply(200, {"ok": True})
    """

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes and inference requests come every few milliseconds to seconds: a line each floods the log
