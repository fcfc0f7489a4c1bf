"""One sequence being generated: its tokens, KV blocks, progress and token-level stops."""

from __future__ import annotations

import time
from enum import IntEnum

from gpt2serve.server.core.sampling_params import SamplingParams

__all__ = ["FINISH_REASONS", "Request", "RequestStatus", "is_finished"]


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
        # Beam search: the beam's running score (sum of processed logprobs, fp32), None for an
        # ordinary request. A beam samples no token: its step yields candidates for the group.
        self.beam_score: float | None = None
        # Structured output: the grammar engine's matcher for this sequence (opaque here),
        # advanced by the engine with every token this sequence accepts.
        self.grammar: object | None = None

    @property
    def is_beam(self) -> bool:
        """Whether this sequence is one beam of a beam-search group."""
        return self.beam_score is not None

    def fork(self, request_id: str, token_id: int, beam_score: float) -> Request:
        """A child beam: this sequence plus `token_id`, its K/V computed as far as ours.

        Blocks are not copied here: `BlockManager.fork` shares them.
        """
        child = Request(
            request_id, self.prompt_token_ids, self.sampling_params, self.arrival_time,
            self.eos_token_id, self.max_model_len,
        )  # fmt: skip
        child.output_token_ids = [*self.output_token_ids, token_id]
        child.all_token_ids = [*self.all_token_ids, token_id]
        child.num_computed_tokens = self.num_computed_tokens
        child.status = self.status
        child.num_cached_tokens = self.num_cached_tokens
        child.beam_score = beam_score
        return child

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
