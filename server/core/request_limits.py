"""What one engine can serve: the token-id ranges and the capacity check, in one place.

Every request is checked exactly once, by `RequestLimits.check`, which returns the only thing the
engine accepts: a `CheckedRequest`. The HTTP layer checks before it admits a request (so a bad
request is a 400 before any byte is streamed); offline callers check before `add_request`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpt2serve.server.core.sampling_params import SamplingParams


class InvalidRequestError(ValueError):
    """A request the engine can never serve; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CheckedRequest:
    """A prompt and its parameters that passed `RequestLimits.check` (build it only there)."""

    prompt_token_ids: list[int]
    params: SamplingParams


def check_token_ids(param: str, token_ids: Sequence[int], vocab_size: int) -> None:
    """Raise `InvalidRequestError` unless every id is in [0, vocab_size)."""
    if any(not 0 <= int(t) < vocab_size for t in token_ids):
        raise InvalidRequestError(f"{param} token ids must be in [0, {vocab_size})", param)


@dataclass(frozen=True)
class RequestLimits:
    """The vocabulary, the context and the KV cache size that bound every request."""

    vocab_size: int
    max_model_len: int
    num_cache_tokens: int  # usable KV blocks x block size

    @property
    def max_sequence_tokens(self) -> int:
        """Prompt + output tokens one sequence can hold: the context, or less if the cache is."""
        return min(self.max_model_len, self.num_cache_tokens)

    def default_max_tokens(self, num_prompt_tokens: int) -> int:
        """All the room a prompt leaves (at least 1, so an over-long prompt fails `check`)."""
        return max(1, self.max_sequence_tokens - num_prompt_tokens)

    def check(self, prompt_token_ids: list[int], params: SamplingParams) -> CheckedRequest:
        """The request, checked; `InvalidRequestError` if it could never be served."""
        if not prompt_token_ids:
            raise InvalidRequestError("prompt must contain at least one token", "prompt")
        check_token_ids("prompt", prompt_token_ids, self.vocab_size)
        check_token_ids("logit_bias", list(params.logit_bias), self.vocab_size)
        check_token_ids("stop_token_ids", params.stop_token_ids, self.vocab_size)
        self._check_capacity(len(prompt_token_ids), params.max_tokens)
        if params.is_beam_search:
            self._check_beam_capacity(len(prompt_token_ids) + params.max_tokens, params.beam_width)
        return CheckedRequest(list(prompt_token_ids), params)

    def _check_beam_capacity(self, total: int, width: int) -> None:
        """Beams share their prompt's blocks, but a preempted beam recomputes into blocks of
        its own: the group must fit the cache even then, or it could wait forever."""
        if width * total > self.num_cache_tokens:
            raise InvalidRequestError(
                f"{width} beams x {total} tokens do not fit the whole KV cache "
                f"({self.num_cache_tokens} tokens); lower best_of or max_tokens",
                "best_of",
            )

    def _check_capacity(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Prompt + max_tokens must fit the context and the whole KV cache."""
        total = num_prompt_tokens + max_tokens
        if total > self.max_model_len:
            raise InvalidRequestError(
                f"this model's maximum context length is {self.max_model_len} tokens, "
                f"but {num_prompt_tokens} prompt tokens + {max_tokens} max_tokens "
                f"= {total} were requested; shorten the prompt or lower max_tokens",
                "max_tokens",
            )
        if total > self.num_cache_tokens:
            raise InvalidRequestError(
                f"{total} tokens do not fit the whole KV cache ({self.num_cache_tokens} tokens)",
                "max_tokens",
            )
