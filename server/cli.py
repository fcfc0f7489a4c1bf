"""The `gpt2serve` command (and `python -m gpt2serve`): flags -> `ServerSettings` -> uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, NoReturn

import uvicorn
from pydantic import ValidationError

from gpt2serve.server.config import ServerSettings

logger = logging.getLogger("gpt2serve")

# After a second shutdown signal, the process exits within this many seconds whatever happens.
FORCED_EXIT_GRACE_S = 2.0
# The start of the one line on stderr when the server cannot start (exit status 1).
CANNOT_START = "gpt2serve: cannot start:"


def build_parser() -> argparse.ArgumentParser:
    """One flag per settings field; unset flags fall back to GPT2SERVE_* env vars, then defaults."""
    parser = argparse.ArgumentParser(
        prog="gpt2serve", description="OpenAI-compatible GPT-2 inference server"
    )
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (
            f"{field.description or name} (env GPT2SERVE_{name.upper()}, default {field.default})"
        )
        if field.annotation is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text)
    return parser


def parse_settings(argv: list[str] | None = None) -> ServerSettings:
    """Flags override environment variables, which override defaults."""
    given: dict[str, Any] = vars(build_parser().parse_args(argv))
    return ServerSettings(**given)


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: refuse new work (503), let in-flight requests finish, abort the rest."""

    def __init__(self, config: uvicorn.Config, app: Any, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        self._drain_task: asyncio.Task | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Build the engine (lifespan) and bind; only then announce the URL, once ready."""
        await super().startup(sockets)
        if not self.should_exit:
            base = f"http://{self.config.host}:{self.config.port}"
            logger.info(
                "serving %s at %s/v1 (OpenAI API), %s/generate (TGI API); playground: %s/",
                self.app.state.ctx.model_name, base, base, base,
            )  # fmt: skip

    def handle_exit(self, sig: int, frame: Any) -> None:
        """First signal drains; a second one exits at once."""
        ctx = getattr(self.app.state, "ctx", None)
        if ctx is None:
            super().handle_exit(sig, frame)
            return
        if self._drain_task is not None:
            self._force_exit(ctx, sig, frame)
            return
        ctx.draining = True
        logger.info("shutdown requested: draining for up to %.0fs", self.shutdown_timeout)
        loop = asyncio.get_event_loop()
        self._drain_task = loop.create_task(self._drain(ctx, sig, frame))

    def _force_exit(self, ctx: Any, sig: int, frame: Any) -> None:
        """Abort everything and stop now, without waiting for connections or the drain.

        uvicorn's own `handle_exit` alone is not enough: on SIGTERM it only sets `should_exit`,
        and its shutdown then waits for every open connection to close, so a streaming request
        keeps the process alive until it finishes (or the drain deadline aborts it). Here
        `force_exit` skips that wait, and uvicorn re-raises the signal once the loop is done,
        so the process ends the conventional way for that signal (status -15 for SIGTERM).
        """
        logger.warning(
            "second shutdown signal: aborting %d requests and exiting now",
            ctx.engine.num_open_streams,
        )
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
        # On the loop, not here: the handler may have interrupted the main thread inside the
        # engine's stream lock, which abort_all takes.
        asyncio.get_event_loop().call_soon_threadsafe(ctx.engine.abort_all)
        super().handle_exit(sig, frame)  # records the signal to re-raise; sets should_exit
        self.should_exit = True
        self.force_exit = True
        # Last resort, should teardown itself hang (a stuck step, a client that never reads):
        # leave with the shell's status for death by this signal.
        watchdog = threading.Timer(FORCED_EXIT_GRACE_S, os._exit, args=(128 + sig,))
        watchdog.daemon = True
        watchdog.start()

    async def _drain(self, ctx: Any, sig: int, frame: Any) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while ctx.engine.num_open_streams > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if ctx.engine.num_open_streams > 0:
            logger.warning("aborting %d requests still running", ctx.engine.num_open_streams)
            ctx.engine.abort_all()
            await asyncio.sleep(0.5)  # let the final `abort` chunks reach their clients
        # Not super().handle_exit: uvicorn would re-raise SIGTERM on exit and the status
        # would be -15; a completed drain is a clean exit.
        self.should_exit = True


# How long (libgomp spin iterations, ~0.2 ms here) an idle compute thread waits for the next
# parallel region before it sleeps. Sleeping at once (OMP_WAIT_POLICY=PASSIVE, the default until
# 2026-12-02) cost ~80 us to wake a thread for each of a step's ~100 regions on a VM; libgomp's
# own default (300,000, ~3 ms) spins through the gaps the HTTP side needs on a small machine.
# docs/BENCHMARKS.md 2026-12-02: +4-9% streamed tokens at 1, 16 and 64 streams against PASSIVE.
GOMP_SPINCOUNT = "20000"


def set_openmp_wait(environ: dict[str, str] | os._Environ) -> None:
    """Bounded spinning for torch's OpenMP threads, unless the user chose a wait policy.

    libgomp (Linux wheels) reads GOMP_SPINCOUNT; LLVM/Intel OpenMP read KMP_BLOCKTIME, where 0
    (sleep at once) keeps them from their 200 ms default spin.
    """
    names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    if not any(name in environ for name in names):
        environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
        environ["KMP_BLOCKTIME"] = "0"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `gpt2serve` command."""
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        sys.exit(f"{CANNOT_START} invalid settings: {describe_validation_error(exc)}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_openmp_wait(os.environ)  # before torch loads OpenMP
    try:
        server, guard = build_server(settings)
    except Exception as exc:
        exit_cannot_start(exc, settings.log_level)
    try:
        server.run()
    except SystemExit:  # uvicorn's own exit when the lifespan or the bind failed
        if server.started:
            raise
        address = f"{settings.host}:{settings.port}"
        failure = guard.error or OSError(f"cannot listen on {address} (uvicorn's error above)")
        exit_cannot_start(failure, settings.log_level)


def build_server(settings: ServerSettings) -> tuple[DrainingServer, LifespanGuard]:
    """Everything that can fail before serving: the port, the engine (model), the app."""
    from gpt2serve.server.api.app import create_app
    from gpt2serve.server.api.http_limits import uvicorn_http_options
    from gpt2serve.server.engine.builder import build_engine

    check_can_listen(settings.host, settings.port)  # before a model load that may take minutes
    # Built here, not in the app's lifespan: uvicorn would log the error's whole traceback.
    engine, _ = build_engine(settings)
    app = create_app(settings, engine)
    guard = LifespanGuard(app)
    config = uvicorn.Config(
        guard, host=settings.host, port=settings.port, log_level=settings.log_level,
        access_log=False, **uvicorn_http_options(settings),
    )  # fmt: skip
    return DrainingServer(config, app, settings.shutdown_timeout), guard


def check_can_listen(host: str, port: int) -> None:
    """Bind (and release) every address uvicorn will listen on, as asyncio binds them."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve --host {host!r}: {exc.strerror}") from exc
    for family, kind, proto, _, address in addresses:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # a family this machine lacks; asyncio skips it too
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # IPv6 disabled: asyncio skips it too
                    continue
                reason = (exc.strerror or str(exc)).lower()
                raise OSError(f"cannot listen on {host}:{port}: {reason}") from exc


class LifespanGuard:
    """The ASGI app uvicorn runs: the app itself, but a startup failure is kept for `main`.

    uvicorn would log the failure's traceback; here `main` reports it in one line instead.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.error: BaseException | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Forward to the app; blank a failed startup's message, remember its exception."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet_send(message: dict) -> None:
            if message["type"] == "lifespan.startup.failed":
                message = {**message, "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, quiet_send)
        except BaseException as exc:
            self.error = self.error or exc
            raise


def describe_validation_error(exc: ValidationError) -> str:
    """Pydantic's multi-line report as one line: `field: problem (got value)`."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        problems.append(f"{field}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)


def describe_startup_error(exc: BaseException) -> str:
    """One line: the message of our own errors, `Type: message` for anything else."""
    text = " ".join(str(exc).split())
    if text and isinstance(exc, (RuntimeError, ValueError, OSError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def exit_cannot_start(exc: BaseException, log_level: str) -> NoReturn:
    """Exit 1 with one line on stderr; the traceback only at `--log-level debug`."""
    logger.debug("startup failed", exc_info=exc)
    hint = "" if log_level == "debug" else " (--log-level debug shows the traceback)"
    sys.exit(f"{CANNOT_START} {describe_startup_error(exc)}{hint}")


if __name__ == "__main__":
    main()
