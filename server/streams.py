"""Helpers between the engine's per-request streams and HTTP handlers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request as HTTPRequest

from server.async_engine import AsyncEngine
from server.metrics import Metrics
from server.request import RequestOutput, SamplingParams

T = TypeVar("T")


class ClientDisconnectedError(Exception):
    """The client went away before the response was ready."""


async def merged_outputs(
    engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams, request_id: str
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of one request per prompt, as `(prompt_index, output)`, in arrival order."""
    if len(prompts) == 1:
        async for output in engine.generate(prompts[0], params, request_id):
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, prompt: list[int]) -> None:
        try:
            async for output in engine.generate(prompt, params, f"{request_id}-{index}"):
                queue.put_nowait((index, output))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait((index, exc))
        queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(prompts)]
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


class RequestTracker:
    """Per-request latency metrics: TTFT, inter-token latency, end-to-end, token counts."""

    def __init__(self, metrics: Metrics, num_prompt_tokens: int) -> None:
        self.metrics = metrics
        self.num_prompt_tokens = num_prompt_tokens
        self.arrival = time.monotonic()
        self.last_token_time: float | None = None
        self.num_generated = 0

    def on_output(self, output: RequestOutput) -> None:
        """Record one engine delta."""
        now = time.monotonic()
        m = self.metrics
        if self.last_token_time is None:
            m.labelled(m.time_to_first_token).observe(now - self.arrival)
        else:
            m.labelled(m.inter_token_latency).observe(now - self.last_token_time)
        self.last_token_time = now
        self.num_generated += len(output.token_ids)
        if output.finished:
            m.labelled(m.request_success, finished_reason=output.finish_reason or "abort").inc()

    def on_done(self) -> None:
        """Record the request as a whole once all its choices finished."""
        m = self.metrics
        m.labelled(m.e2e_request_latency).observe(time.monotonic() - self.arrival)
        m.labelled(m.prompt_tokens).inc(self.num_prompt_tokens)
        m.labelled(m.generation_tokens).inc(self.num_generated)
        m.labelled(m.request_prompt_tokens).observe(self.num_prompt_tokens)
        m.labelled(m.request_generation_tokens).observe(self.num_generated)
