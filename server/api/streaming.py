"""Helpers between the engine's per-request streams and HTTP handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request as HTTPRequest
from starlette.types import Receive, Scope, Send

from gpt2serve.server.api.errors import (
    INTERNAL_ERROR_MESSAGE,
    APIError,
    ClientDisconnectedError,
    error_body,
)
from gpt2serve.server.api.metrics import Metrics
from gpt2serve.server.api.serving import Admission, ServingContext
from gpt2serve.server.api.sse import DONE, sse_event
from gpt2serve.server.core.messages import RequestOutput
from gpt2serve.server.core.request_limits import CheckedRequest
from gpt2serve.server.engine.async_engine import AsyncEngine, EngineDeadError

T = TypeVar("T")
logger = logging.getLogger(__name__)

__all__ = [
    "AdmittedStreamingResponse",
    "ClientDisconnectedError",
    "RequestTracker",
    "collected_response",
    "guarded_sse",
    "merged_outputs",
    "unless_disconnected",
]


async def merged_outputs(
    engine: AsyncEngine, requests: list[CheckedRequest], request_id: str
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Outputs of one engine request per prompt, as `(prompt_index, output)`, as they come."""
    if len(requests) == 1:
        # aclosing: closing this generator must abort the engine request now, not at GC.
        async with contextlib.aclosing(engine.generate(requests[0], request_id)) as outs:
            async for output in outs:
                yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, request: CheckedRequest) -> None:
        try:
            async for output in engine.generate(request, f"{request_id}-{index}"):
                queue.put_nowait((index, output))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait((index, exc))
        queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


async def unless_disconnected(awaitable: Awaitable[T], http_request: HTTPRequest) -> T:
    """Await `awaitable`, cancelling it (so the engine aborts) if the client disconnects."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await http_request.is_disconnected():
                raise ClientDisconnectedError
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def collected(
    awaitable: Awaitable[dict[str, Any]], http_request: HTTPRequest, admission: Admission
) -> dict[str, Any]:
    """A non-streamed answer's body; the admission is released however it ends."""
    try:
        return await unless_disconnected(awaitable, http_request)
    except EngineDeadError as exc:
        raise APIError(503, str(exc), code="engine_dead") from exc
    finally:
        admission.release()


async def collected_response(
    awaitable: Awaitable[dict[str, Any]], http_request: HTTPRequest, admission: Admission
) -> JSONResponse:
    """A non-streamed answer as JSON; the admission is released however it ends."""
    return JSONResponse(await collected(awaitable, http_request, admission))


async def guarded_sse(
    ctx: ServingContext, events: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """`events`, then `data: [DONE]`; a failure after the stream started becomes an error chunk.

    The status line (200) is already sent, so the error travels as a final
    `data: {"error": ...}` event, counted like an error answer; no traceback reaches the client.
    """
    try:
        async for event in events:
            yield event
    except EngineDeadError as exc:
        ctx.count_error(503)
        yield sse_event(error_body(503, str(exc), code="engine_dead"))
    except Exception:
        logger.exception("error while streaming a response")
        ctx.count_error(500)
        yield sse_event(error_body(500, INTERNAL_ERROR_MESSAGE))
    finally:
        await events.aclose()  # left early (client gone): abort the engine request now
    yield DONE


class AdmittedStreamingResponse(StreamingResponse):
    """An SSE response that closes its stream and releases its admission however it ends."""

    def __init__(self, events: AsyncGenerator[bytes, None], admission: Admission) -> None:
        super().__init__(events, media_type="text/event-stream")
        self.events = events
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream; then close the generator, which may never have started (no finally ran)."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.events.aclose()
            finally:
                self.admission.release()


class RequestTracker:
    """Per-request metrics: TTFT and inter-token latency per choice; end-to-end, token counts."""

    # As vLLM v1, which fans `n > 1` out into child requests with stats of their own, a choice
    # (prompt index, output index) is the unit: its first token gives one TTFT sample (since the
    # request's arrival) and each later delta one ITL sample (since that choice's previous one),
    # so sibling choices delivered by the same step never look like ~0 ms gaps. A delta of k
    # tokens gives one sample of the whole gap, as vLLM's ITL (one per engine output, spec
    # decoding included); this engine's deltas carry one token, or none (max_tokens=0, aborts).

    def __init__(self, metrics: Metrics, num_prompt_tokens: int, num_choices: int) -> None:
        self.metrics = metrics
        self.num_prompt_tokens = num_prompt_tokens
        self.num_choices = num_choices
        self.arrival = time.monotonic()
        self.last_token_time: dict[tuple[int, int], float] = {}
        self.finished: set[tuple[int, int]] = set()
        self.num_generated = 0
        self.done = False

    async def track(
        self, outputs: AsyncGenerator[tuple[int, RequestOutput], None]
    ) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        """`outputs` (`merged_outputs`), recorded as they pass; the request however it ends."""
        try:
            async with contextlib.aclosing(outputs):  # closing this closes (aborts) them now
                async for prompt_index, output in outputs:
                    self.on_output(output, prompt_index)
                    yield prompt_index, output
        finally:
            self.on_done()

    def on_output(self, output: RequestOutput, prompt_index: int = 0) -> None:
        """Record one engine delta of choice `output.index` of prompt `prompt_index`."""
        m, choice = self.metrics, (prompt_index, output.index)
        if output.token_ids:
            now = time.monotonic()
            last = self.last_token_time.get(choice)
            if last is None:
                m.labelled(m.time_to_first_token).observe(now - self.arrival)
            else:
                m.labelled(m.inter_token_latency).observe(now - last)
            self.last_token_time[choice] = now
            self.num_generated += len(output.token_ids)
        if output.finished and choice not in self.finished:
            # Per choice, as vLLM v1: each child request that finishes increments
            # request_success_total (OutputProcessor, per request state).
            self.finished.add(choice)
            m.labelled(m.request_success, finished_reason=output.finish_reason or "abort").inc()

    def on_done(self) -> None:
        """Record the request as a whole, once, however it ended; open choices as aborted."""
        if self.done:
            return
        self.done = True
        m = self.metrics
        # Choices still open (the client went away, or the request failed) are aborts, counted
        # with the tokens they streamed and the request's end-to-end latency.
        unfinished = self.num_choices - len(self.finished)
        if unfinished > 0:
            m.labelled(m.request_success, finished_reason="abort").inc(unfinished)
        m.labelled(m.e2e_request_latency).observe(time.monotonic() - self.arrival)
        m.labelled(m.prompt_tokens).inc(self.num_prompt_tokens)
        m.labelled(m.generation_tokens).inc(self.num_generated)
        m.labelled(m.request_prompt_tokens).observe(self.num_prompt_tokens)
        m.labelled(m.request_generation_tokens).observe(self.num_generated)
