"""`POST /v1/completions`: prompts in every OpenAI form, streamed or not."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi.responses import Response
from starlette.requests import Request as HTTPRequest

from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.openai_format import LegacyLogprobs, usage, vllm_prompt_logprobs
from gpt2serve.server.api.protocol import CompletionRequest
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


def prompt_token_lists(ctx: ServingContext, prompt: Any, split: bool = False) -> list[list[int]]:
    """Normalize str / list[str] / list[int] / list[list[int]] to token-id lists."""
    if isinstance(prompt, str):
        return [ctx.encode(prompt, split)]
    if not prompt:
        raise APIError(400, "prompt must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [ctx.encode(p, split) for p in prompt]
    if all(isinstance(p, list) for p in prompt):
        return [list(p) for p in prompt]
    raise APIError(400, "prompt must be a string, a list of strings, or token ids", "prompt")


def _is_prompt_list(prompt: Any) -> bool:
    """A list of prompts (strings or token lists), not one prompt of token ids."""
    return isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)


def _check_unsupported(body: CompletionRequest) -> None:
    if body.suffix is not None:
        raise APIError(400, "suffix is not supported by this server", "suffix")


def engine_prompt_logprobs(body: CompletionRequest) -> int | None:
    """Alternatives the engine reports per prompt token, or None: no prompt scoring."""
    wanted = [] if body.prompt_logprobs is None else [body.prompt_logprobs]
    if body.echo and body.logprobs is not None:
        wanted.append(body.logprobs)  # the echoed prompt's tokens carry logprobs too
    if body.echo and body.max_tokens == 0:
        # Only the prompt comes back: run it as a prompt-only (scoring) request, the cheapest
        # kind (no alternatives); the numbers are not shown unless asked for.
        wanted.append(0)
    return max(wanted) if wanted else None


async def create_completion(
    ctx: ServingContext, body: CompletionRequest, http: HTTPRequest
) -> Response:
    """Serve one completions request."""
    ctx.check_model(body.model)
    _check_unsupported(body)
    # Counted before any tokenizing: a list of 16,384 prompts is refused, not encoded first.
    num_prompts = len(body.prompt) if _is_prompt_list(body.prompt) else 1
    ctx.check_num_prompts(num_prompts)
    ctx.check_num_sequences(num_prompts * body.num_sequences)
    prompts = prompt_token_lists(ctx, body.prompt, body.split_special_tokens)
    # Left out, max_tokens is OpenAI's 16 (the body's default), or the server's limit if lower.
    given = "max_tokens" in body.model_fields_set or body.max_tokens is None
    max_tokens = body.max_tokens if given else ctx.capped(body.max_tokens)
    grammar = await ctx.compile_grammar(body.structured_output())
    requests = ctx.check_requests(
        body, prompts, max_tokens, body.logprobs, engine_prompt_logprobs(body),
        compiled_grammar=grammar,
    )  # fmt: skip
    job = _CompletionJob(ctx, body, requests)
    admission = ctx.admit(len(requests) * body.num_sequences)
    if body.stream:
        return AdmittedStreamingResponse(guarded_sse(ctx, job.events()), admission)
    return await collected_response(job.collect(), http, admission)


class _CompletionJob:
    """One completions request in flight."""

    def __init__(
        self, ctx: ServingContext, body: CompletionRequest, requests: list[CheckedRequest]
    ) -> None:
        self.ctx = ctx
        self.body = body
        self.requests = requests
        self.prompts = [r.prompt_token_ids for r in requests]
        self.params = requests[0].params  # one body: the same parameters for every prompt
        self.request_id = new_request_id("cmpl")
        self.created = now()
        self.tracker = RequestTracker(
            ctx.metrics, sum(len(p) for p in self.prompts), len(requests) * self.params.n
        )
        self.prompt_texts = [ctx.tokenizer.decode(p) for p in self.prompts] if body.echo else None

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
                index = self._index(prompt_index, output.index)
                states.setdefault(index, ChoiceState()).add(output)
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
        prompt_index = index // self.params.n
        prefix = self.prompt_texts[prompt_index] if self.prompt_texts else ""
        logprobs = None
        if self.params.logprobs is not None:
            legacy = self._legacy(prompt_index, state.prompt_logprobs)
            for entry in state.logprobs:
                legacy.add(entry)
            logprobs = legacy.take()
        choice = {
            "index": index,
            "text": prefix + state.text,
            "logprobs": logprobs,
            "finish_reason": state.finish_reason,
            "stop_reason": state.stop_reason,
        }
        return self._with_prompt_logprobs(choice, state.prompt_logprobs)

    def _legacy(
        self, prompt_index: int, prompt_entries: list[TokenLogprobs | None] | None
    ) -> LegacyLogprobs:
        """A choice's legacy logprobs, starting with the echoed prompt's tokens when echoing."""
        if not self.prompt_texts:
            return LegacyLogprobs(self.ctx.tokenizer)
        legacy = LegacyLogprobs(self.ctx.tokenizer, len(self.prompt_texts[prompt_index]))
        if prompt_entries is not None:  # absent only if the choice ended before its prompt ran
            legacy.add_prompt(self.prompts[prompt_index], prompt_entries, self.params.logprobs or 0)
        return legacy

    def _with_prompt_logprobs(
        self, choice: dict[str, Any], entries: list[TokenLogprobs | None] | None
    ) -> dict[str, Any]:
        """Add vLLM's `prompt_logprobs` field when the body asked for it."""
        if self.body.prompt_logprobs is not None and entries is not None:
            tokenizer = self.ctx.tokenizer
            choice["prompt_logprobs"] = vllm_prompt_logprobs(
                tokenizer, entries, self.body.prompt_logprobs
            )
        return choice

    def _outputs(self) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        return self.tracker.track(merged_outputs(self.ctx.engine, self.requests, self.request_id))

    async def events(self) -> AsyncGenerator[bytes, None]:
        """SSE chunks: one per delta, then an optional usage chunk (errors and [DONE]: caller).

        The echoed prompt, its logprobs and `prompt_logprobs` come in a choice's first chunk.
        """
        states: dict[int, ChoiceState] = {}
        legacy: dict[int, LegacyLogprobs] = {}
        async with aclosing(self._outputs()) as outputs:
            async for prompt_index, output in outputs:
                index = self._index(prompt_index, output.index)
                first = index not in states
                states.setdefault(index, ChoiceState()).add(output)
                text = output.text
                if first and self.prompt_texts:
                    text = self.prompt_texts[prompt_index] + text
                logprobs = None
                if self.params.logprobs is not None:
                    if first:
                        legacy[index] = self._legacy(prompt_index, output.prompt_logprobs)
                    for entry in output.logprobs or []:
                        legacy[index].add(entry)
                    logprobs = legacy[index].take()
                    logprobs = logprobs if logprobs["tokens"] else None
                chunk = self._chunk(index, text, logprobs, output.finish_reason,
                                    output.stop_reason)  # fmt: skip
                choice = chunk["choices"][0]
                self._with_prompt_logprobs(choice, output.prompt_logprobs)
                if text or output.finished or logprobs or "prompt_logprobs" in choice:
                    yield sse_event(chunk)
        if self.body.include_usage:
            yield sse_event({**self._chunk_base(), "choices": [], "usage": self._usage(states)})

    def _chunk_base(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.ctx.model_name,
        }

    def _chunk(
        self,
        index: int,
        text: str,
        logprobs: Any,
        finish_reason: str | None,
        stop_reason: int | str | None = None,
    ) -> dict:
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
            "stop_reason": stop_reason,  # as vLLM: the matched stop string or token id
        }
        chunk = {**self._chunk_base(), "choices": [choice]}
        if self.body.include_usage:
            chunk["usage"] = None
        return chunk
