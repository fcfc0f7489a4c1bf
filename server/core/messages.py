"""The dataclasses that cross between parts: scheduler -> worker -> engine -> api.

Nothing else crosses: the worker reads a `SchedulerOutput` and answers a `RunnerOutput`; the
engine turns those into `RequestOutput` deltas and `StepStats` for the HTTP side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt2serve.server.core.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step."""

    request: Request
    num_new_tokens: int
    num_computed_tokens: int  # before this step
    sample: bool  # all tokens computed after this step, and the request generates (max_tokens > 0)


@dataclass
class SchedulerOutput:
    """What the model runs this step: running requests first, then newly admitted ones."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_batched_tokens: int = 0
    preempted_request_ids: list[str] = field(default_factory=list)
    # Copy-on-write of beams' shared blocks: (src, dst), run before the forward pass.
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def sampling_requests(self) -> list[ScheduledRequest]:
        """Requests that produce a token this step, in batch order."""
        return [s for s in self.scheduled if s.sample]

    @property
    def is_empty(self) -> bool:
        """Whether nothing was scheduled."""
        return not self.scheduled


@dataclass
class TokenLogprobs:
    """The chosen token's logprob and the top-N alternatives, from the unmodified distribution."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]
    rank: int | None = None  # in the vocabulary, 1 = most likely; computed for prompt tokens


@dataclass
class PromptLogprobsChunk:
    """Logprobs of prompt tokens `first_target ..` computed by one step, in prompt order."""

    first_target: int
    entries: list[TokenLogprobs]


@dataclass
class RunnerOutput:
    """One entry per sampling request, in `SchedulerOutput.sampling_requests` order."""

    sampled_token_ids: list[int]  # -1 for a beam, which samples nothing
    logprobs: list[TokenLogprobs | None]
    # Per request id: the prompt tokens this step scored, for requests that asked.
    prompt_logprobs: dict[str, PromptLogprobsChunk] = field(default_factory=dict)
    # Per beam's request id: its best (token id, beam score + processed logprob) continuations,
    # highest first, as many as the group keeps (2 x beam width).
    beam_candidates: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


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
    logprobs: list[TokenLogprobs] | None = None
    # With the first output of a request that asked: entry i is prompt token i's logprobs given
    # the tokens before it; entry 0 is None (nothing precedes the first token).
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # Beam search: the sequence's length-penalised score (HF's `sequences_scores`).
    beam_score: float | None = None


@dataclass
class StepStats:
    """What one engine step did, for the metrics."""

    num_batched_tokens: int = 0
    # Seconds each choice scheduled for the first time this step waited since its arrival.
    queue_times: list[float] = field(default_factory=list)
