"""`POST /v1/chat/completions`: messages through the chat template, streamed or not."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi.responses import Response
from starlette.requests import Request as HTTPRequest

from gpt2serve.server.api.chat_template import ChatTemplateError
from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.openai_format import chat_logprob_entries, usage
from gpt2serve.server.api.protocol import ChatCompletionRequest, ChatMessage
from gpt2serve.server.api.serving import ChoiceState, ServingContext, new_request_id, now
from gpt2serve.server.api.sse import sse_event
from gpt2serve.server.api.streaming import (
    AdmittedStreamingResponse,
    RequestTracker,
    collected_response,
    guarded_sse,
    merged_outputs,
)
from gpt2serve.server.core.messages import RequestOutput, TokenLogprobs
from gpt2serve.server.core.request_limits import CheckedRequest


def render_chat_prompt(
    ctx: ServingContext,
    messages: list[ChatMessage],
    add_generation_prompt: bool,
    split_special_tokens: bool = False,
) -> list[int]:
    """Messages -> prompt token ids (400 if the template or a message is unusable)."""
    if not messages:
        raise APIError(400, "messages must not be empty", "messages")
    try:
        text = ctx.chat_template.render(messages, add_generation_prompt)
    except (ChatTemplateError, ValueError) as exc:
        raise APIError(400, str(exc), "messages") from exc
    return ctx.encode(text, split_special_tokens)


async def create_chat_completion(
    ctx: ServingContext, body: ChatCompletionRequest, http: HTTPRequest
) -> Response:
    """Serve one chat completions request."""
    ctx.check_model(body.model)
    prompt = render_chat_prompt(
        ctx, body.messages, body.add_generation_prompt, body.split_special_tokens
    )
    num_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens or body.max_tokens
    grammar = await ctx.compile_grammar(body.structured_output())
    (request,) = ctx.check_requests(
        body, [prompt], max_tokens, num_logprobs, turn_stop=ctx.chat_template.stop,
        compiled_grammar=grammar,
    )  # fmt: skip
    job = _ChatJob(ctx, body, request)
    admission = ctx.admit(body.num_sequences)
    if body.stream:
        return AdmittedStreamingResponse(guarded_sse(ctx, job.events()), admission)
    return await collected_response(job.collect(), http, admission)


class _ChatJob:
    """One chat request in flight."""

    def __init__(
        self, ctx: ServingContext, body: ChatCompletionRequest, request: CheckedRequest
    ) -> None:
        self.ctx = ctx
        self.body = body
        self.request = request
        self.prompt = request.prompt_token_ids
        self.params = request.params
        self.request_id = new_request_id("chatcmpl")
        self.created = now()
        self.tracker = RequestTracker(ctx.metrics, len(self.prompt), self.params.n)

    def _outputs(self) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        return self.tracker.track(merged_outputs(self.ctx.engine, [self.request], self.request_id))

    def _logprobs(self, entries: list[TokenLogprobs]) -> dict[str, Any] | None:
        if self.params.logprobs is None:
            return None
        return {"content": chat_logprob_entries(self.ctx.tokenizer, entries)}

    async def collect(self) -> dict[str, Any]:
        """Run to completion and build the whole response."""
        states: dict[int, ChoiceState] = {}
        async with aclosing(self._outputs()) as outputs:
            async for _, output in outputs:
                states.setdefault(output.index, ChoiceState()).add(output)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": states[i].text},
                "logprobs": self._logprobs(states[i].logprobs),
                "finish_reason": states[i].finish_reason,
                "stop_reason": states[i].stop_reason,
            }
            for i in sorted(states)
        ]
        return {
            **self._base("chat.completion"),
            "choices": choices,
            "usage": usage(len(self.prompt), sum(s.num_tokens for s in states.values())),
        }

    async def events(self) -> AsyncGenerator[bytes, None]:
        """SSE chunks: role first, then content deltas, then an optional usage chunk."""
        num_tokens: dict[int, int] = {}
        async with aclosing(self._outputs()) as outputs:
            async for _, output in outputs:
                if output.index not in num_tokens:
                    num_tokens[output.index] = 0
                    yield self._chunk(output.index, {"role": "assistant", "content": ""})
                num_tokens[output.index] = max(num_tokens[output.index], output.num_output_tokens)
                logprobs = self._logprobs(output.logprobs) if output.logprobs else None
                if output.text or output.finished or logprobs:
                    delta = {"content": output.text} if output.text else {}
                    yield self._chunk(output.index, delta, logprobs, output.finish_reason,
                                      output.stop_reason)  # fmt: skip
        if self.body.include_usage:
            total = usage(len(self.prompt), sum(num_tokens.values()))
            yield sse_event({**self._base("chat.completion.chunk"), "choices": [], "usage": total})

    def _base(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.ctx.model_name,
        }

    def _chunk(
        self,
        index: int,
        delta: dict,
        logprobs: Any = None,
        finish_reason: str | None = None,
        stop_reason: int | str | None = None,
    ) -> bytes:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
            "stop_reason": stop_reason,  # as vLLM: the matched stop string or token id
        }
        chunk = {**self._base("chat.completion.chunk"), "choices": [choice]}
        if self.body.include_usage:
            chunk["usage"] = None
        return sse_event(chunk)
