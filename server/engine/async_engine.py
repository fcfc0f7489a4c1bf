"""`AsyncEngine`: runs `Engine.step` on one background thread and streams outputs to asyncio."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gpt2serve.server.core.messages import RequestOutput, StepStats
from gpt2serve.server.core.request_limits import CheckedRequest
from gpt2serve.server.engine.engine import Engine
from gpt2serve.server.engine.grammars import GrammarService

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop has stopped; no request can be served."""


@dataclass
class _Stream:
    """Event-loop side of one request: its queue and how many choices are still open."""

    queue: asyncio.Queue
    open_indices: set[int]
    loop: asyncio.AbstractEventLoop = field(repr=False)


class AsyncEngine:
    """Thread-safe front of `Engine`: `generate()` yields output deltas as the engine steps."""

    def __init__(self, engine: Engine, on_step: Callable[[StepStats], None] | None = None) -> None:
        self.engine = engine
        self.on_step = on_step
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def grammars(self) -> GrammarService:
        """The engine's grammar compiler: the HTTP side compiles before it admits a request."""
        return self.engine.grammars

    @property
    def is_alive(self) -> bool:
        """Whether the engine thread is running and healthy."""
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def start(self) -> None:
        """Start the engine thread."""
        self._thread = threading.Thread(target=self._run, name="gpt2serve-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; requests still open receive an error."""
        self._stopping = True
        self._wakeup.set()
        self.engine.grammars.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)

    async def generate(
        self, request: CheckedRequest, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request checked by `engine.request_limits` and yield its deltas.

        Leaving early (closing the generator) aborts the request.
        """
        if not self.is_alive:
            raise EngineDeadError(self._dead_message())
        request_id = request_id or uuid.uuid4().hex
        stream = _Stream(asyncio.Queue(), set(range(request.params.n)), asyncio.get_running_loop())
        with self._lock:
            self._streams[request_id] = stream
        self._submit(lambda: self._add(request_id, request))
        try:
            if not self.is_alive:  # died between the check above and registration
                raise EngineDeadError(self._dead_message())
            while stream.open_indices:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    stream.open_indices.discard(item.index)
                yield item
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if stream.open_indices:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request from any thread; its blocks are freed before the next step."""
        self._submit(lambda: self.engine.abort_request(request_id))

    @property
    def num_open_streams(self) -> int:
        """Requests whose `generate()` is still running."""
        return len(self._streams)

    def abort_all(self) -> None:
        """Abort every open request; each open choice ends with finish_reason `abort`."""
        with self._lock:
            streams = dict(self._streams)
        for request_id, stream in streams.items():
            self.abort(request_id)
            endings = [_aborted_output(request_id, index) for index in sorted(stream.open_indices)]
            stream.loop.call_soon_threadsafe(_put_all, [(stream, o) for o in endings])

    def _add(self, request_id: str, request: CheckedRequest) -> None:
        try:
            self.engine.add_request(request_id, request)
        except ValueError as exc:  # e.g. a request id in use: fail only this request
            with self._lock:
                stream = self._streams.get(request_id)
            if stream is not None:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, exc)

    def _submit(self, command: Callable[[], None]) -> None:
        self._commands.append(command)
        self._wakeup.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait(timeout=1.0)
                    self._wakeup.clear()
                    continue
                outputs = self.engine.step()
                if self.on_step is not None:
                    self.on_step(self.engine.last_step_stats)
                if outputs:
                    self._deliver(outputs)
        except BaseException as exc:  # the loop must never die silently
            logger.exception("engine loop failed; failing every in-flight request")
            self.error = exc
        self._fail_all(EngineDeadError(self._dead_message()))

    def _drain_commands(self) -> None:
        while self._commands:
            self._commands.popleft()()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a whole step's outputs to the event loop(s) in one call each."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        with self._lock:
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream, output))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            if not stream.loop.is_closed():
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, error)

    def _dead_message(self) -> str:
        if self.error is not None:
            return f"the engine stopped after an internal error: {type(self.error).__name__}"
        return "the engine is not running"


def _put_all(items: list[tuple[_Stream, RequestOutput]]) -> None:
    for stream, output in items:
        stream.queue.put_nowait(output)


def _aborted_output(request_id: str, index: int) -> RequestOutput:
    return RequestOutput(
        request_id=request_id,
        index=index,
        text="",
        token_ids=[],
        finished=True,
        finish_reason="abort",
        stop_reason=None,
        num_prompt_tokens=0,
        num_output_tokens=0,
    )
