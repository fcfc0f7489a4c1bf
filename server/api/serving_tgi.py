"""Hugging Face TGI's native API: `POST /generate`, `/generate_stream` and `/` (TGI's compat route).

Requests run through the same admission, engine stream and metrics as `/v1/completions`; only
the parameter names and the response shapes are TGI's (those `huggingface_hub.InferenceClient`
parses). Errors are TGI's `{"error", "error_type"}`, with this server's statuses (400, 503).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi.responses import JSONResponse, Response
from starlette.requests import Request as HTTPRequest

from gpt2serve.model.tokenizer import IncrementalDetokenizer, Tokenizer
from gpt2serve.server.api.errors import INTERNAL_ERROR_MESSAGE, APIError
from gpt2serve.server.api.openai_format import token_string
from gpt2serve.server.api.serving import ServingContext, new_request_id
from gpt2serve.server.api.sse import sse_event
from gpt2serve.server.api.streaming import (
    AdmittedStreamingResponse,
    RequestTracker,
    collected,
    merged_outputs,
)
from gpt2serve.server.api.tgi_protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    TGIParameters,
    TGIRequest,
    tgi_error_body,
)
from gpt2serve.server.api.tgi_route import error_type
from gpt2serve.server.core.messages import RequestOutput, TokenLogprobs
from gpt2serve.server.core.request_limits import CheckedRequest, InvalidRequestError
from gpt2serve.server.core.sampling_params import SamplingParamsError
from gpt2serve.server.engine.async_engine import EngineDeadError

logger = logging.getLogger(__name__)
# The shared checks name OpenAI fields; a TGI client sent these instead.
_TGI_NAMES = {"max_tokens": "max_new_tokens", "logprobs": "top_n_tokens", "prompt": "inputs",
              "best_of": "num_beams"}  # fmt: skip


async def generate(
    ctx: ServingContext, body: TGIRequest, http: HTTPRequest, stream: bool, compat: bool = False
) -> Response:
    """Serve one TGI request; `compat` (`POST /`) answers a one-item list, as TGI does."""
    parameters = body.parameters or TGIParameters()
    if stream and parameters.decoder_input_details:
        raise APIError(400, "decoder_input_details is not supported when streaming tokens",
                       "decoder_input_details")  # fmt: skip
    # TGI's `POST /` returns the prompt too unless told otherwise (for a text-generation model,
    # which GPT-2 is); `/generate` and `/generate_stream` do not.
    full_text = parameters.return_full_text
    grammar = await ctx.compile_grammar(parameters.structured_output())
    request = _checked_request(ctx, body.inputs, parameters, stream, grammar)
    job = _GenerateJob(
        ctx, body.inputs, parameters, request, compat if full_text is None else full_text
    )
    admission = ctx.admit(parameters.num_beams if parameters.uses_beams else 1)
    if stream:
        return AdmittedStreamingResponse(_guarded_events(ctx, job.events()), admission)
    result = await collected(job.collect(), http, admission)
    return JSONResponse([result] if compat else result)


def _checked_request(
    ctx: ServingContext,
    inputs: str,
    parameters: TGIParameters,
    stream: bool,
    compiled_grammar: object | None = None,
) -> CheckedRequest:
    """The engine request: inputs tokenized (and truncated), defaults applied, limits checked."""
    prompt = ctx.encode(inputs)
    if parameters.truncate is not None:
        prompt = prompt[-parameters.truncate :]  # TGI keeps the end of the input
    details = parameters.details or parameters.decoder_input_details
    # A streamed token always carries its logprob; a whole answer only with details. Beam
    # search has no per-token logprobs: its tokens report null.
    logprobs = (parameters.top_n_tokens or 0) if stream or details else None
    prompt_logprobs = 0 if parameters.decoder_input_details else None
    if parameters.uses_beams:
        if parameters.decoder_input_details or parameters.top_n_tokens:
            name = "decoder_input_details" if parameters.decoder_input_details else "top_n_tokens"
            raise APIError(400, f"{name} is not supported with num_beams > 1", name)
        logprobs = None
    seed = parameters.seed
    if parameters.samples and seed is None:
        seed = random.getrandbits(62)  # drawn here so that details.seed can report it (as TGI)
    try:
        max_tokens = _max_new_tokens(ctx, parameters, len(prompt))
        params = parameters.sampling_params(
            max_tokens, logprobs, prompt_logprobs, seed, compiled_grammar
        )
        return ctx.request_limits.check(prompt, params)
    except (SamplingParamsError, InvalidRequestError) as exc:
        message = re.sub(r"\bmax_tokens\b", "max_new_tokens", str(exc))
        message = re.sub(r"\bbest_of\b", "num_beams", message)
        raise APIError(400, message, _TGI_NAMES.get(exc.param or "", exc.param)) from exc


def _max_new_tokens(ctx: ServingContext, parameters: TGIParameters, num_prompt_tokens: int) -> int:
    """Left out: TGI's 100; null: --default-max-tokens; either within the room the prompt leaves
    and --max-tokens-limit. Given: as asked (more than --max-tokens-limit is a 400)."""
    room = ctx.request_limits.default_max_tokens(num_prompt_tokens)
    if "max_new_tokens" not in parameters.model_fields_set:
        return ctx.capped(min(DEFAULT_MAX_NEW_TOKENS, room))
    if parameters.max_new_tokens is None:
        return ctx.capped(min(ctx.limits.default_max_tokens, room))
    limit = ctx.limits.max_tokens_limit
    if limit is not None and parameters.max_new_tokens > limit:
        raise APIError(
            400,
            f"max_new_tokens is {parameters.max_new_tokens}; this server allows at most {limit}",
            "max_new_tokens",
        )
    return parameters.max_new_tokens


def tgi_finish_reason(output: RequestOutput) -> str:
    """TGI's finish_reason: `length`, `stop_sequence` (a stop string) or `eos_token`."""
    if output.finish_reason == "length":
        return "length"
    return "stop_sequence" if isinstance(output.stop_reason, str) else "eos_token"


class _GenerateJob:
    """One TGI request in flight."""

    def __init__(
        self,
        ctx: ServingContext,
        inputs: str,
        parameters: TGIParameters,
        request: CheckedRequest,
        full_text: bool,
    ) -> None:
        self.ctx = ctx
        self.parameters = parameters
        self.request = request
        self.prefix = inputs if full_text else ""  # the input as sent, even when truncated
        self.num_top = parameters.top_n_tokens or 0
        self.request_id = new_request_id("generate")
        self.tracker = RequestTracker(ctx.metrics, len(request.prompt_token_ids), 1)

    def _outputs(self) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        return self.tracker.track(merged_outputs(self.ctx.engine, [self.request], self.request_id))

    def _token(self, token_id: int, text: str, logprob: float | None) -> dict[str, Any]:
        special = self.ctx.tokenizer.is_special(token_id)
        if special:  # left out of the text, but TGI shows it as the token's text
            text += token_string(self.ctx.tokenizer, token_id)
        return {"id": token_id, "text": text, "logprob": logprob, "special": special}

    def _tokens(self, output: RequestOutput) -> list[tuple[dict[str, Any], list[dict]]]:
        """Each token of a delta with its top tokens. A token's text is its share of the
        delta's text, detokenized incrementally (as TGI's), so the texts add up to the answer."""
        entries = output.logprobs or [None] * len(output.token_ids)
        texts = split_text(self.ctx.tokenizer, output.token_ids, output.text)
        result = []
        for token_id, entry, text in zip(output.token_ids, entries, texts, strict=True):
            top = [] if entry is None else entry.top[: self.num_top]
            top_tokens = [self._token(t, self._decode(t), lp) for t, lp in top]
            logprob = None if entry is None else entry.logprob
            result.append((self._token(token_id, text, logprob), top_tokens))
        return result

    def _decode(self, token_id: int) -> str:
        return self.ctx.tokenizer.decode([token_id])

    def _prefill(self, entries: list[TokenLogprobs | None] | None) -> list[dict[str, Any]]:
        """decoder_input_details: each prompt token and its logprob (the first has none)."""
        if entries is None:
            return []
        return [
            {"id": t, "text": self._decode(t), "logprob": None if e is None else e.logprob}
            for t, e in zip(self.request.prompt_token_ids, entries, strict=True)
        ]

    @staticmethod
    def _check_finished(output: RequestOutput | None) -> RequestOutput:
        """The last output, which must have ended the request normally."""
        if output is None or not output.finished or output.finish_reason == "abort":
            raise APIError(503, "the request was aborted before it finished (shutting down?)",
                           code="incomplete_generation")  # fmt: skip
        return output

    async def collect(self) -> dict[str, Any]:
        """Run to completion: `generated_text`, and `details` when asked for."""
        text, tokens, top_tokens, last = "", [], [], None
        prefill: list[TokenLogprobs | None] | None = None
        async with aclosing(self._outputs()) as outputs:
            async for _, output in outputs:
                text += output.text
                for token, top in self._tokens(output):
                    tokens.append(token)
                    top_tokens.append(top)
                prefill = output.prompt_logprobs if prefill is None else prefill
                last = output
        last = self._check_finished(last)
        result: dict[str, Any] = {"generated_text": self.prefix + text}
        if self.parameters.details or self.parameters.decoder_input_details:
            details = self._end_details(last)
            details.update(prefill=self._prefill(prefill), tokens=tokens)
            if self.num_top:
                details["top_tokens"] = top_tokens
            result["details"] = details
        return result

    def _end_details(self, last: RequestOutput) -> dict[str, Any]:
        return {
            "finish_reason": tgi_finish_reason(last),
            "generated_tokens": last.num_output_tokens,
            "seed": self.request.params.seed,  # None when greedy, as TGI
        }

    async def events(self) -> AsyncGenerator[bytes, None]:
        """One event per token; the last also has `generated_text` (and `details` if asked)."""
        text, index, last = "", 0, None
        async with aclosing(self._outputs()) as outputs:
            async for _, output in outputs:
                text += output.text
                last = output
                tokens = self._tokens(output)  # a beam search's whole answer comes at once
                for position, (token, top) in enumerate(tokens):
                    index += 1
                    last_token = position == len(tokens) - 1
                    yield sse_event(self._event(index, token, top, output, text, last_token))
        self._check_finished(last)

    def _event(
        self,
        index: int,
        token: dict[str, Any],
        top: list[dict],
        output: RequestOutput,
        text: str,
        last_token: bool = True,
    ) -> dict[str, Any]:
        """TGI's StreamResponse for one token; `text` is everything generated so far."""
        event: dict[str, Any] = {"index": index, "token": token}
        if self.num_top:
            event["top_tokens"] = top
        event.update(generated_text=None, details=None)
        if last_token and output.finished and output.finish_reason != "abort":
            event["generated_text"] = self.prefix + text
            if self.parameters.details:
                details = self._end_details(output)
                event["details"] = {**details, "input_length": len(self.request.prompt_token_ids)}
        return event


def split_text(tokenizer: Tokenizer, token_ids: list[int], text: str) -> list[str]:
    """`text` (the delta's, after stop-string cuts) shared out over its tokens: a beam search
    delivers its whole answer as one delta, and each token still gets its own text."""
    if len(token_ids) == 1:
        return [text]
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.add(t) for t in token_ids]
    pieces[-1] += detokenizer.flush()
    texts, rest = [], text
    for piece in pieces:  # a stop string cut the text short: later tokens get what is left
        share = piece if rest.startswith(piece) else rest
        texts.append(share)
        rest = rest[len(share) :]
    texts[-1] += rest
    return texts


async def _guarded_events(
    ctx: ServingContext, events: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """`events`; a failure after the 200 went out ends the stream with a TGI error event."""
    try:
        async for event in events:
            yield event
    except (APIError, EngineDeadError) as exc:
        error = exc if isinstance(exc, APIError) else APIError(503, str(exc), code="engine_dead")
        ctx.count_error(error.status_code)
        yield sse_event(tgi_error_body(error.message, error_type(error)))
    except Exception:
        logger.exception("error while streaming a TGI response")
        ctx.count_error(500)
        yield sse_event(tgi_error_body(INTERNAL_ERROR_MESSAGE, "generation"))
    finally:
        await events.aclose()  # left early (client gone): abort the engine request now
