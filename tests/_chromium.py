"""Debian's headless Chromium driven over the DevTools protocol: shared by the browser tests."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from itertools import count
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    # Not an HTTP GET: every GET of the Voila page starts a kernel that runs the notebook.
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _wait_http(url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class DevTools:
    """A minimal Chrome DevTools Protocol client: commands and the events seen while waiting."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        self.ids = count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        request_id = next(self.ids)
        self.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif event.get("method") == "Runtime.consoleAPICalled":
                text = json.dumps(params.get("args", []))
                # plotly reports a restyle of a trace the page does not have only as a console trace.
                if params.get("type") == "error" or "out of bounds" in text:
                    found.append(text[:500])
            elif event.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                if params["entry"].get("source") == "network" and "127.0.0.1" not in params["entry"].get("url", ""):
                    continue  # Voila's template links a CDN font; this machine has no internet
                found.append(json.dumps(params["entry"])[:500])
        return found

    def close(self) -> None:
        self.ws.close()

    def poll(self, expression: str, timeout: float, what: str) -> Any:
        """Evaluate ``expression`` until it is truthy; fail naming ``what`` (and the page) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                page = str(self.evaluate("document.body.innerText"))[:1500]
                pytest.fail(f"{what} within {timeout:.0f} s; page: {page!r}; console errors: {self.errors()}")
            time.sleep(0.2)


class Chromium:
    """A headless Chromium with one page under DevTools control; a context manager that ends the browser.

    Example:
        >>> with Chromium(tmp_path) as page:                 # doctest: +SKIP
        ...     page.call("Page.navigate", url="file:///tmp/x.html")
    """

    def __init__(self, profile_dir: Any, *, window: str = "1280,1400") -> None:
        import subprocess

        self._port = _free_port()
        self._process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", f"--remote-debugging-port={self._port}", f"--user-data-dir={profile_dir}",
             f"--window-size={window}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tools: DevTools | None = None

    def __enter__(self) -> DevTools:
        targets = json.loads(_wait_http(f"http://127.0.0.1:{self._port}/json", timeout=30))
        page = next(t for t in targets if t.get("type") == "page")
        self.tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.tools.call(domain)
        return self.tools

    def __exit__(self, *exc: object) -> None:
        if self.tools is not None:
            self.tools.close()
        self._process.terminate()
        self._process.wait(timeout=10)
