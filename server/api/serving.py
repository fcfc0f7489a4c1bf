"""What completions and chat share: the serving context, parameter checks, choice state."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.server.api.chat_template import ChatTemplate
from gpt2serve.server.api.errors import APIError
from gpt2serve.server.api.metrics import Metrics
from gpt2serve.server.api.protocol import SamplingFields
from gpt2serve.server.core.messages import RequestOutput, TokenLogprobs
from gpt2serve.server.core.request_limits import CheckedRequest, InvalidRequestError, RequestLimits
from gpt2serve.server.core.sampling_params import SamplingParamsError
from gpt2serve.server.core.structured_output import GrammarError, StructuredOutput
from gpt2serve.server.engine.async_engine import AsyncEngine


@dataclass(frozen=True)
class ServingLimits:
    """What one HTTP request may ask for, and how much the server queues (all `--flags`)."""

    max_waiting_requests: int = 1024
    max_prompts_per_request: int = 256
    max_sequences_per_request: int = 256
    default_max_tokens: int = 256
    max_tokens_limit: int | None = None


@dataclass
class ServingContext:
    """Everything a handler needs, built once at startup."""

    engine: AsyncEngine
    tokenizer: Tokenizer
    model_name: str
    request_limits: RequestLimits
    metrics: Metrics
    chat_template: ChatTemplate
    limits: ServingLimits = field(default_factory=lambda: ServingLimits())
    draining: bool = False
    # Engine sequences (one per prompt per choice) admitted by the API and not yet released;
    # counted at admission, before the engine or a stream generator has seen the request.
    num_open_sequences: int = 0

    def check_model(self, model: str | None) -> None:
        """404 for a model name this server does not serve (absent means ours)."""
        if model is not None and model != self.model_name:
            raise APIError(
                404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                "model", "model_not_found",
            )  # fmt: skip

    @property
    def num_waiting_sequences(self) -> int:
        """Admitted sequences the scheduler is not running, in the scheduler's unit."""
        return max(0, self.num_open_sequences - self.engine.engine.scheduler.num_running)

    def admit(self, num_sequences: int) -> Admission:
        """Reserve room for a request's sequences, or 503 (with Retry-After) when there is none.

        The request's own sequences count: a request may not bring the queue past the limit.
        """
        self.check_num_sequences(num_sequences)
        if self.draining:
            raise APIError(503, "the server is shutting down", headers={"Retry-After": "5"})
        if not self.engine.is_alive:
            raise APIError(503, "the engine is not running", code="engine_dead")
        num_waiting = self.num_waiting_sequences
        if num_waiting + num_sequences > self.limits.max_waiting_requests:
            raise APIError(
                503,
                f"the server is overloaded ({num_waiting} requests waiting); retry later",
                headers={"Retry-After": "1"},
            )
        self.num_open_sequences += num_sequences
        return Admission(self, num_sequences)

    def check_num_sequences(self, num_sequences: int, param: str = "n") -> None:
        """400 for a request that adds more sequences (prompts x n) than one may."""
        limit = min(self.limits.max_sequences_per_request, self.limits.max_waiting_requests)
        if num_sequences > limit:
            raise APIError(
                400,
                f"this request adds {num_sequences} sequences (prompts x n); "
                f"this server accepts at most {limit} per request",
                param,
            )

    def check_num_prompts(self, num_prompts: int) -> None:
        """400 for a prompt list longer than one request may carry (checked before tokenizing)."""
        if num_prompts > self.limits.max_prompts_per_request:
            raise APIError(
                400,
                f"prompt holds {num_prompts} prompts; this server accepts at most "
                f"{self.limits.max_prompts_per_request} per request",
                "prompt",
            )

    def count_error(self, status: int) -> None:
        """Count one error answer (or error chunk) in `request_errors_total{code}`."""
        self.metrics.labelled(self.metrics.request_errors, code=str(status)).inc()

    @property
    def max_model_len(self) -> int:
        """The context length clients may use."""
        return self.request_limits.max_model_len

    def check_requests(
        self,
        body: SamplingFields,
        prompts: list[list[int]],
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        turn_stop: list[str] | None = None,
        compiled_grammar: object | None = None,
    ) -> list[CheckedRequest]:
        """One engine request per prompt, every one checked before any runs (400 if not)."""
        if max_tokens is None:
            # The server's default, or less: the room the longest prompt leaves (if none, the
            # check below names the numbers).
            room = self.request_limits.default_max_tokens(max(len(p) for p in prompts))
            max_tokens = self.capped(min(self.limits.default_max_tokens, room))
        limit = self.limits.max_tokens_limit
        if limit is not None and max_tokens > limit:
            raise APIError(
                400, f"max_tokens is {max_tokens}; this server allows at most {limit}", "max_tokens"
            )
        try:
            params = body.sampling_params(
                max_tokens, logprobs, prompt_logprobs, turn_stop, compiled_grammar
            )
            return [self.request_limits.check(prompt, params) for prompt in prompts]
        except (SamplingParamsError, InvalidRequestError) as exc:
            raise APIError(400, str(exc), exc.param) from exc

    async def compile_grammar(self, spec: StructuredOutput | None) -> object | None:
        """The body's output constraint, compiled off the engine's thread; a 400 naming the
        field if it is invalid or takes too long. Only this request waits for it."""
        if spec is None:
            return None
        service = self.engine.grammars
        future = asyncio.wrap_future(service.submit(spec))
        try:  # shielded: a timeout here must not cancel the shared, cached compile
            return await asyncio.wait_for(asyncio.shield(future), service.timeout)
        except GrammarError as exc:
            raise APIError(400, str(exc), exc.param) from exc
        except TimeoutError as exc:
            error = service.too_slow(spec)
            raise APIError(400, str(error), error.param) from exc

    def capped(self, default_max_tokens: int) -> int:
        """A default `max_tokens`, lowered to `--max-tokens-limit` (asking for more is a 400)."""
        limit = self.limits.max_tokens_limit
        return default_max_tokens if limit is None else min(default_max_tokens, limit)

    def encode(self, text: str, split_special_tokens: bool = False) -> list[int]:
        """Tokenize a prompt string (`<|endoftext|>` is 50256 unless split_special_tokens)."""
        return self.tokenizer.encode(text, split_special_tokens)


class Admission:
    """A request's place in the admission count; `release` is idempotent."""

    def __init__(self, ctx: ServingContext, num_sequences: int) -> None:
        self.ctx = ctx
        self.num_sequences = num_sequences
        self.released = False

    def release(self) -> None:
        """Give the place back (the request finished, failed or was abandoned)."""
        if not self.released:
            self.released = True
            self.ctx.num_open_sequences -= self.num_sequences


@dataclass
class ChoiceState:
    """Accumulated output of one choice."""

    text: str = ""
    num_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    def add(self, output: RequestOutput) -> None:
        """Fold one delta in."""
        self.text += output.text
        self.num_tokens = max(self.num_tokens, output.num_output_tokens)
        if output.logprobs:
            self.logprobs.extend(output.logprobs)
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        if output.finished:
            self.finish_reason = output.finish_reason
            self.stop_reason = output.stop_reason


def new_request_id(prefix: str) -> str:
    """A unique OpenAI-style id."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """The `created` timestamp."""
    return int(time.time())
