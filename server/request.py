"""Requests and their sampling parameters: pure bookkeeping, free of torch and FastAPI."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from server.params_validation import (
    SamplingParamsError,
    check,
    check_bool,
    check_int,
    check_range,
    check_stop_strings,
    check_token_id_list,
    is_int,
    normalized_logit_bias,
)

__all__ = ["Request", "RequestOutput", "RequestStatus", "SamplingParams", "SamplingParamsError"]

MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_LEN = 256
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS = 1024


@dataclass
class SamplingParams:
    """How to generate: limits, stop conditions and the sampling controls, validated."""

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    # Logprobs of every prompt token after the first, with this many alternatives (vLLM's field;
    # echo + logprobs asks for them too). Such a request takes no prefix-cache hits.
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalize the spellings the API allows before validating one canonical form.
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.top_k == -1:
            self.top_k = 0
        self._validate_lengths()
        check_range("temperature", self.temperature, 0.0, 2.0)
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        check(
            is_int(self.top_k) and self.top_k >= 0,
            "top_k",
            f"top_k must be -1, 0 or >= 1, got {self.top_k!r}",
        )
        check_range("min_p", self.min_p, 0.0, 1.0)
        check_range("repetition_penalty", self.repetition_penalty, 0.0, 2.0, low_open=True)
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        check_stop_strings(self.stop, MAX_STOP_STRINGS, MAX_STOP_STRING_LEN)
        check_token_id_list("stop_token_ids", self.stop_token_ids, MAX_STOP_TOKEN_IDS)
        check_bool("ignore_eos", self.ignore_eos)
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        if self.seed is not None:
            check_int("seed", self.seed, 0, 2**63 - 1)
        if self.logprobs is not None:
            check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if self.prompt_logprobs is not None:
            check_int("prompt_logprobs", self.prompt_logprobs, 0, MAX_LOGPROBS)
        self.logit_bias = normalized_logit_bias(self.logit_bias, MAX_LOGIT_BIAS)

    def _validate_lengths(self) -> None:
        # Scoring a prompt (lm-eval's echo + max_tokens=0) generates nothing: the request
        # finishes once its prompt is computed. Without prompt logprobs 0 would do no work.
        check_int("max_tokens", self.max_tokens, 0)
        check(
            self.max_tokens > 0 or self.prompt_logprobs is not None,
            "max_tokens",
            "max_tokens must be >= 1, got 0 (0 only scores the prompt: echo or prompt_logprobs)",
        )
        check_int("min_tokens", self.min_tokens, 0)
        check(
            self.min_tokens <= self.max_tokens,
            "min_tokens",
            f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
        )
        check_int("n", self.n, 1, MAX_N)

    @property
    def greedy(self) -> bool:
        """Whether sampling reduces to argmax."""
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def needs_penalties(self) -> bool:
        """Whether any repetition/presence/frequency penalty is active."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


class RequestStatus(IntEnum):
    """Lifecycle of a request; everything above PREEMPTED is finished."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


def is_finished(status: RequestStatus) -> bool:
    """Whether `status` is terminal."""
    return status > RequestStatus.PREEMPTED


class Request:
    """One sequence being generated: its tokens, KV blocks and progress."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        arrival_time: float | None = None,
        eos_token_id: int | None = 50256,
        max_model_len: int = 1024,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.block_ids: list[int] = []
        self.status = RequestStatus.WAITING
        self.num_cached_tokens = 0  # prefix-cache hit tokens, set at first admission
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens."""
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        """Prompt length."""
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.output_token_ids)

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Whether prompt positions still need logits: asked for and not yet delivered.

        They are delivered with the first output, so a request resumed after preemption with
        output tokens needs them no more (and may take prefix-cache hits again).
        """
        return self.sampling_params.prompt_logprobs is not None and not self.output_token_ids

    @property
    def prompt_only_done(self) -> bool:
        """Whether every prompt token is computed and nothing is to be generated (max_tokens=0)."""
        return self.sampling_params.max_tokens == 0 and self.num_computed_tokens >= self.num_tokens

    @property
    def is_finished(self) -> bool:
        """Whether the request has ended."""
        return is_finished(self.status)

    @property
    def finish_reason(self) -> str | None:
        """OpenAI finish_reason, or None while running."""
        return FINISH_REASONS.get(self.status)

    def append_output_token(self, token_id: int) -> None:
        """Record one generated token."""
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def check_stop(self) -> RequestStatus | None:
        """Token-level stop rules after a token was appended (stop strings are the engine's)."""
        params = self.sampling_params
        last = self.output_token_ids[-1]
        if self.num_output_tokens >= params.min_tokens:
            if last in params.stop_token_ids:
                self.stop_reason = last
                return RequestStatus.FINISHED_STOPPED
            if last == self.eos_token_id and not params.ignore_eos:
                return RequestStatus.FINISHED_STOPPED
        if self.num_output_tokens >= params.max_tokens or self.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None


@dataclass
class RequestOutput:
    """A delta of one choice of a request, as streamed to the client."""

    request_id: str
    index: int
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_output_tokens: int
    logprobs: list[Any] | None = None
    # With the first output of a request that asked: entry i is prompt token i's TokenLogprobs
    # given the tokens before it; entry 0 is None (nothing precedes the first token).
    prompt_logprobs: list[Any] | None = None
    error: str | None = None
