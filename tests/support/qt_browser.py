"""A headless Chromium from PyPI: Qt WebEngine (PySide6) with its DevTools port open.

Run as `python qt_browser.py PORT`; Chromium prints `DevTools listening on ws://...` on stderr,
and one page stays open until the process is killed. Qt WebEngine is Chromium (Blink, V8, its
network stack) embedded in Qt; the PySide6-WebEngine wheel ships it, so CI needs neither apt
nor a browser download. Playwright cannot drive it (it refuses a browser without context
management), so the tests speak the DevTools protocol to the page directly (`support.browser`).
"""

from __future__ import annotations

import os
import sys


def main(port: int) -> int:
    """Open one blank page with remote debugging on `port`; run until killed."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display in CI
    # Qt refuses port 0 ("invalid port"), so the caller picks a free one.
    os.environ["QTWEBENGINE_REMOTE_DEBUGGING"] = f"127.0.0.1:{port}"
    # As root (CI, containers) Chromium's sandbox cannot start; the page is our own server's.
    os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
    flags = os.environ.get("QTWEBENGINE_CHROMIUM_FLAGS", "")
    os.environ["QTWEBENGINE_CHROMIUM_FLAGS"] = f"{flags} --disable-gpu --no-sandbox".strip()
    from PySide6.QtCore import QUrl
    from PySide6.QtWebEngineWidgets import QWebEngineView
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])
    view = QWebEngineView()
    view.resize(1280, 900)
    view.load(QUrl("about:blank"))
    view.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
