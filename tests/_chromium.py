"""Debian's headless Chromium driven over the DevTools protocol: shared by the browser tests."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import time
import urllib.parse
import urllib.request
from itertools import count
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline for real: every host name fails to resolve (127.0.0.1 is an address, not a name), so a page that
# reaches for a CDN fails there as it would on an edge site, and the request still shows in the events.
OFFLINE_FLAGS = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "devtools", "file"}
DESKTOP = (1366, 768)
PHONE = (390, 844)

# Boxes (CSS px) of what a page shows, for layout_problems(): each named part of the dashboard, and inside each
# plotly chart its subplot titles, legend, notes and bottom tick labels.
_BOXES_JS = """(() => {
  const box = (el, name) => { const r = el.getBoundingClientRect();
    return {name, left: r.left, right: r.right, top: r.top + window.scrollY, bottom: r.bottom + window.scrollY,
            width: r.width, height: r.height}; };
  const seen = (el) => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.display !== 'none' && s.visibility !== 'hidden'; };
  const parts = [];
  for (const [selector, name] of Object.entries(PARTS)) {
    document.querySelectorAll(selector).forEach((el, i) => { if (seen(el)) parts.push(box(el, `${name}#${i}`)); });
  }
  const inner = [];
  document.querySelectorAll('.js-plotly-plot').forEach((gd, g) => {
    const items = [...gd.querySelectorAll('.annotation-text'), ...gd.querySelectorAll('.legend .traces'),
                   ...gd.querySelectorAll('.modebar'),
                   ...gd.querySelectorAll('.xtick text')].filter(el => seen(el) && el.textContent.trim());
    inner.push(items.map(el => box(el, `chart${g}:${el.textContent.trim().slice(0, 30)}`)));
  });
  return {width: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, parts, inner};
})()"""


def layout_problems(tools: DevTools, parts: dict[str, str]) -> list[str]:
    """What is cut off or overlaps on the page: ``parts`` maps CSS selectors to names of blocks that must each
    lie inside the viewport's width and not overlap one another; inside every plotly chart, titles, legend
    entries, notes and tick labels must not overlap either. Empty when the layout is sound.
    """
    found = tools.evaluate(_BOXES_JS.replace("PARTS", json.dumps(parts)))
    problems = []
    width = found["width"]
    if found["scrollWidth"] > width + 1:
        problems.append(f"the page scrolls sideways: {found['scrollWidth']} px wide in a {width} px viewport")
    named = {part["name"].split("#")[0] for part in found["parts"]}
    problems += [f"{name} is not shown" for name in parts.values() if name not in named]

    def overlap(a: dict[str, Any], b: dict[str, Any]) -> float:
        dx = min(a["right"], b["right"]) - max(a["left"], b["left"])
        dy = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
        return max(dx, 0.0) * max(dy, 0.0)

    for group in [found["parts"], *found["inner"]]:
        for box in group:
            if box["left"] < -1 or box["right"] > width + 1:
                problems.append(f"{box['name']} is cut off: {box['left']:.0f}..{box['right']:.0f} px of {width}")
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if overlap(a, b) > 4.0:  # anti-aliased edges may touch
                    problems.append(f"{a['name']} overlaps {b['name']}")
    return problems


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
                found.append(json.dumps(params["entry"])[:500])
        return found

    def requests(self) -> list[str]:
        """URLs of every request the page made so far (needs ``Network.enable``)."""
        return [event["params"]["request"]["url"] for event in self.events
                if event.get("method") == "Network.requestWillBeSent"]

    def remote_requests(self) -> list[str]:
        """Requests to anything but this machine (127.0.0.1) or an in-page scheme (data:, blob:)."""
        remote = []
        for url in self.requests():
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme in LOCAL_SCHEMES or parsed.hostname == "127.0.0.1":
                continue
            remote.append(url)
        return remote

    def resize(self, width: int, height: int) -> None:
        """Lay the page out as a ``width`` x ``height`` viewport (a phone's when narrow: touch, mobile)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 600)

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        """Save a PNG of the page (the whole page, not just the viewport, by default) to ``path``."""
        if not full_page:
            shot = self.call("Page.captureScreenshot", format="png")
        else:
            # Voila scrolls inside an element, not the document: grow the viewport to the tallest scroll height
            # for the shot, then restore it.
            width, height = self.evaluate("[window.innerWidth, window.innerHeight]")
            tallest = self.evaluate("Math.max(...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))")
            self.resize(width, max(height, int(tallest)))
            time.sleep(1.0)  # plotly redraws on resize
            try:
                shot = self.call("Page.captureScreenshot", format="png")
            finally:
                self.resize(width, height)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

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

    def __init__(self, profile_dir: Any, *, window: str = "1280,1400", offline: bool = False) -> None:
        import subprocess

        self._port = _free_port()
        self._process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", f"--remote-debugging-port={self._port}", f"--user-data-dir={profile_dir}",
             f"--window-size={window}", *(OFFLINE_FLAGS if offline else []), "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tools: DevTools | None = None

    def __enter__(self) -> DevTools:
        targets = json.loads(_wait_http(f"http://127.0.0.1:{self._port}/json", timeout=30))
        page = next(t for t in targets if t.get("type") == "page")
        self.tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            self.tools.call(domain)
        return self.tools

    def __exit__(self, *exc: object) -> None:
        if self.tools is not None:
            self.tools.close()
        self._process.terminate()
        self._process.wait(timeout=10)
