"""Run the real app under uvicorn on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from gpt2serve.server.api.app import create_app
from gpt2serve.server.api.http_limits import uvicorn_http_options
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.engine.engine import Engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(engine: Engine, **settings) -> Iterator[tuple[str, object]]:
    """Yield (base_url, app) of a live server; stops it afterwards."""
    port = free_port()
    config = ServerSettings(model="random:tiny", served_model_name="tiny", port=port, **settings)
    app = create_app(config, engine=engine)
    options = uvicorn_http_options(config)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)
