"""`POST /v1/completions`: prompts in every OpenAI form, streamed or not."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi.responses import Response
from starlette.requests import Request as HTTPRequest

from server.errors import APIError
from server.openai_format import LegacyLogprobs, usage
from server.protocol import CompletionRequest
from server.request import RequestOutput, SamplingParams
from server.serving import ChoiceState, ServingContext, new_request_id, now
from server.sse import sse_event
from server.streams import (
    AdmittedStreamingResponse,
    RequestTracker,
    collected_response,
    guarded_sse,
    merged_outputs,
)


def prompt_token_lists(ctx: ServingContext, prompt: Any) -> list[list[int]]:
    """Normalize str / list[str] / list[int] / list[list[int]] to token-id lists."""
    if isinstance(prompt, str):
        return [ctx.encode(prompt)]
    if not prompt:
        raise APIError(400, "prompt must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [ctx.encode(p) for p in prompt]
    if all(isinstance(p, list) for p in prompt):
        return [list(p) for p in prompt]
    raise APIError(400, "prompt must be a string, a list of strings, or token ids", "prompt")


def _check_unsupported(body: CompletionRequest) -> None:
    if body.suffix is not None:
        raise APIError(400, "suffix is not supported by this server", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported by this server (use n)", "best_of")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported yet", "echo")


async def create_completion(
    ctx: ServingContext, body: CompletionRequest, http: HTTPRequest
) -> Response:
    """Serve one completions request."""
    ctx.check_model(body.model)
    _check_unsupported(body)
    prompts = prompt_token_lists(ctx, body.prompt)
    params = ctx.sampling_params(body, prompts, body.max_tokens, body.logprobs)
    job = _CompletionJob(ctx, body, prompts, params)
    admission = ctx.admit(len(prompts) * params.n)
    if body.stream:
        return AdmittedStreamingResponse(guarded_sse(ctx, job.events()), admission)
    return await collected_response(job.collect(), http, admission)


class _CompletionJob:
    """One completions request in flight."""

    def __init__(
        self,
        ctx: ServingContext,
        body: CompletionRequest,
        prompts: list[list[int]],
        params: SamplingParams,
    ) -> None:
        self.ctx = ctx
        self.body = body
        self.prompts = prompts
        self.params = params
        self.request_id = new_request_id("cmpl")
        self.created = now()
        self.tracker = RequestTracker(ctx.metrics, sum(len(p) for p in prompts))
        self.prompt_texts = [ctx.tokenizer.decode(p) for p in prompts] if body.echo else None

    def _index(self, prompt_index: int, choice_index: int) -> int:
        return prompt_index * self.params.n + choice_index

    def _usage(self, states: dict[int, ChoiceState]) -> dict[str, int]:
        prompt_tokens = sum(len(p) for p in self.prompts)
        return usage(prompt_tokens, sum(s.num_tokens for s in states.values()))

    async def collect(self) -> dict[str, Any]:
        """Run to completion and build the whole response."""
        states: dict[int, ChoiceState] = {}
        async with aclosing(self._outputs()) as outputs:
            async for prompt_index, output in outputs:
                self.tracker.on_output(output)
                index = self._index(prompt_index, output.index)
                states.setdefault(index, ChoiceState()).add(output)
        self.tracker.on_done()
        choices = [self._choice(i, states[i]) for i in sorted(states)]
        return {
            "id": self.request_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.ctx.model_name,
            "choices": choices,
            "usage": self._usage(states),
        }

    def _choice(self, index: int, state: ChoiceState) -> dict[str, Any]:
        prefix = self.prompt_texts[index // self.params.n] if self.prompt_texts else ""
        logprobs = None
        if self.params.logprobs is not None:
            legacy = LegacyLogprobs(self.ctx.tokenizer, len(prefix))
            for entry in state.logprobs:
                legacy.add(entry)
            logprobs = legacy.take()
        return {
            "index": index,
            "text": prefix + state.text,
            "logprobs": logprobs,
            "finish_reason": state.finish_reason,
            "stop_reason": state.stop_reason,
        }

    def _outputs(self) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        return merged_outputs(self.ctx.engine, self.prompts, self.params, self.request_id)

    async def events(self) -> AsyncGenerator[bytes, None]:
        """SSE chunks: one per delta, then an optional usage chunk (errors and [DONE]: caller)."""
        states: dict[int, ChoiceState] = {}
        legacy: dict[int, LegacyLogprobs] = {}
        async with aclosing(self._outputs()) as outputs:
            async for prompt_index, output in outputs:
                self.tracker.on_output(output)
                index = self._index(prompt_index, output.index)
                first = index not in states
                states.setdefault(index, ChoiceState()).add(output)
                text = output.text
                if first and self.prompt_texts:
                    text = self.prompt_texts[prompt_index] + text
                logprobs = None
                if output.logprobs:
                    acc = legacy.setdefault(index, LegacyLogprobs(self.ctx.tokenizer))
                    for entry in output.logprobs:
                        acc.add(entry)
                    logprobs = acc.take()
                if text or output.finished or logprobs:
                    yield sse_event(self._chunk(index, text, logprobs, output.finish_reason))
        self.tracker.on_done()
        if self.body.include_usage:
            yield sse_event({**self._chunk_base(), "choices": [], "usage": self._usage(states)})

    def _chunk_base(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.ctx.model_name,
        }

    def _chunk(self, index: int, text: str, logprobs: Any, finish_reason: str | None) -> dict:
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        chunk = {**self._chunk_base(), "choices": [choice]}
        if self.body.include_usage:
            chunk["usage"] = None
        return chunk
