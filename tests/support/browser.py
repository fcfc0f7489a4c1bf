"""A real headless Chromium for page tests, driven over the DevTools protocol (CDP).

Which Chromium: `GPT2SERVE_TEST_CHROMIUM` (a path to a chromium / chrome-headless-shell binary)
if set; else Qt WebEngine from the PySide6-WebEngine wheel (the test extra installs it, so CI
needs only PyPI); else a `chromium` on PATH (Debian's package, for instance). Without any, the
browser tests skip with the reason, or fail under CI=true, where the test extra must bring one.

The page is driven through its DevTools target over a websocket (`websockets`, which uvicorn
already brings): real mouse and keyboard events, script evaluation, screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from support.http_server import free_port

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
# Collects what the Content-Security-Policy blocked, from before any page script runs.
CSP_PROBE = (
    "window.__violations = [];"
    "document.addEventListener('securitypolicyviolation',"
    " (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
)


class CdpError(RuntimeError):
    """A DevTools command failed, or a page script threw."""


def _has_qt_webengine() -> bool:
    if importlib.util.find_spec("PySide6") is None:
        return False
    return importlib.util.find_spec("PySide6.QtWebEngineWidgets") is not None


def browser_command() -> tuple[Callable[[int, Path], list[str]], str] | None:
    """How to start a headless Chromium with DevTools on a port, and its name; None if none."""
    binary = os.environ.get("GPT2SERVE_TEST_CHROMIUM")
    if not binary and _has_qt_webengine():
        script = str(Path(__file__).with_name("qt_browser.py"))
        return (lambda port, _: [sys.executable, script, str(port)]), "Qt WebEngine"
    binary = binary or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not binary:
        return None

    def chromium(port: int, profile: Path) -> list[str]:
        return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                "--window-size=1280,900", "about:blank"]  # fmt: skip

    return chromium, binary


def require_browser() -> tuple[Callable[[int, Path], list[str]], str]:
    """A browser command, or skip (fail under CI, whose test extra must provide one)."""
    found = browser_command()
    if found is None:
        reason = (
            "NO HEADLESS CHROMIUM: browser tests not run. Install the test extra "
            "(pip install -e '.[test]' brings PySide6-WebEngine), or set "
            "GPT2SERVE_TEST_CHROMIUM=/path/to/chromium"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _page_target(port: int, process: subprocess.Popen, log: Path, timeout: float) -> str:
    """The websocket URL of the browser's first page, once its DevTools port answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CdpError(f"the browser exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise CdpError(f"no DevTools page after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def chromium_page(workdir: Path, timeout: float = 60.0) -> Iterator[CdpPage]:
    """A fresh headless Chromium with one page; the browser is killed afterwards."""
    command, _ = require_browser()
    port = free_port()
    log = workdir / "browser.log"
    with log.open("wb") as sink:
        # Its own session: the browser's helper processes are ended with it, by group id.
        process = subprocess.Popen(
            command(port, workdir / "profile"),
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True,
        )  # fmt: skip
    try:
        page = CdpPage(_page_target(port, process, log, timeout))
        try:
            yield page
        finally:
            page.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class CdpPage:
    """One browser page over CDP: navigate, evaluate, click, type, screenshot."""

    def __init__(self, ws_url: str) -> None:
        self.stack = contextlib.ExitStack()
        self.ws: ClientConnection = self.stack.enter_context(
            connect(ws_url, max_size=None, open_timeout=10)
        )
        self.next_id = 0
        self.errors: list[str] = []  # uncaught exceptions and console errors, as they came
        for domain in ("Runtime", "Page", "Log"):
            self.call(f"{domain}.enable")
        self.call("Page.addScriptToEvaluateOnNewDocument", source=CSP_PROBE)

    def close(self) -> None:
        """Close the DevTools connection."""
        self.stack.close()

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer, collecting events meanwhile."""
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description", details["text"]))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            # A failed request the test provoked (401, 400) is logged too; it is not a bug.
            if entry.get("source") != "network":
                self.errors.append(entry["text"])

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JS expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", timeout, expression=expression,
            awaitPromise=True, returnByValue=True, userGesture=True,
        )  # fmt: skip
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description", details["text"]))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll a JS expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or expression} (last: {value!r}); "
                             f"page errors: {self.errors}")  # fmt: skip

    def navigate(self, url: str) -> None:
        """Load `url` and wait until the new document has loaded."""
        self.evaluate("window.__leaving = true")
        self.call("Page.navigate", url=url)
        self.wait_for("!window.__leaving && document.readyState === 'complete'", what=url)

    def center(self, selector: str) -> tuple[float, float]:
        """The viewport point at the middle of the element (scrolled into view)."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
            " })()"
        )
        if not box:
            raise AssertionError(f"no element {selector}")
        return box[0], box[1]

    def hover(self, selector: str) -> None:
        """Move the mouse onto the element's middle."""
        x, y = self.center(selector)
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def click(self, selector: str) -> None:
        """A real left click (mouse moved, pressed, released) on the element's middle."""
        x, y = self.center(selector)
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def fill(self, selector: str, text: str) -> None:
        """Focus the field, empty it, and type `text` as keyboard input."""
        self.click(selector)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).value = ''")
        self.call("Input.insertText", text=text)

    def press(self, key: str, code: int, modifiers: int = 0) -> None:
        """One key press (`modifiers`: 2 is Ctrl) on the focused element."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                      windowsVirtualKeyCode=code, modifiers=modifiers)  # fmt: skip

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """Emulate a screen of `width` x `height` CSS pixels (a phone with `mobile`)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)  # fmt: skip

    def screenshot(self, path: Path) -> Path:
        """Save the viewport as a PNG."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
