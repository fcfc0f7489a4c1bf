"""Per-batch sampling tensors from each request's `SamplingParams`, then `kernels.sample`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

import kernels
from kernels import reference
from server.request import Request

# JSON has no -inf; vLLM reports this value for impossible tokens.
MIN_LOGPROB = -9999.0


@dataclass
class TokenLogprobs:
    """The chosen token's logprob and the top-N alternatives, from the unmodified distribution."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SamplerOutput:
    """One sampled token per request, plus logprobs for the requests that asked for them."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class Sampler:
    """Applies the request's controls in DESIGN.md's order and draws one token per row."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device

    def __call__(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab] float32: raw model output
        requests: Sequence[Request],
    ) -> SamplerOutput:
        """Sample the next token of every request (row i belongs to requests[i])."""
        raw_logits = logits
        logits = logits.clone()
        self._apply_logit_bias(logits, requests)
        self._apply_penalties(logits, requests)
        self._apply_bans(logits, requests)
        params = [r.sampling_params for r in requests]
        token_ids = kernels.sample(
            logits,
            self._floats([p.temperature for p in params]),
            torch.tensor(
                [self._top_k(p.top_k) for p in params], dtype=torch.int32, device=self.device
            ),
            self._floats([p.top_p for p in params]),
            self._floats([p.min_p for p in params]),
            self._uniforms(requests),
        )  # [num_seqs] int64
        return SamplerOutput(token_ids.tolist(), self._logprobs(raw_logits, token_ids, requests))

    def _top_k(self, top_k: int) -> int:
        """top_k at or beyond the vocabulary keeps everything: the same as off (0)."""
        return top_k if 0 < top_k < self.vocab_size else 0

    def _floats(self, values: list[float]) -> torch.Tensor:  # [num_seqs] float32
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _uniforms(self, requests: Sequence[Request]) -> torch.Tensor:  # [num_seqs] float32
        """This step's draw of each request: a function of its seed and output position only."""
        seeds = [r.sampling_params.seed or 0 for r in requests]
        steps = [r.num_output_tokens for r in requests]
        return reference.counter_uniform(
            torch.tensor(seeds, dtype=torch.int64, device=self.device),
            torch.tensor(steps, dtype=torch.int64, device=self.device),
        )

    def _apply_logit_bias(self, logits: torch.Tensor, requests: Sequence[Request]) -> None:
        rows, cols, values = [], [], []
        for row, request in enumerate(requests):
            for token_id, bias in request.sampling_params.logit_bias.items():
                rows.append(row)
                cols.append(int(token_id))
                values.append(float(bias))
        if rows:
            index = (torch.tensor(rows), torch.tensor(cols))
            logits.index_put_(index, torch.tensor(values, device=logits.device), accumulate=True)

    def _apply_penalties(self, logits: torch.Tensor, requests: Sequence[Request]) -> None:
        rows = [i for i, r in enumerate(requests) if r.sampling_params.needs_penalties]
        if not rows:
            return
        selected = [requests[i] for i in rows]
        params = [r.sampling_params for r in selected]
        row_index = torch.tensor(rows, device=logits.device)
        logits[row_index] = reference.apply_penalties(
            logits[row_index],
            self._padded([r.prompt_token_ids for r in selected]),
            self._padded([r.output_token_ids for r in selected]),
            self._floats([p.repetition_penalty for p in params]),
            self._floats([p.presence_penalty for p in params]),
            self._floats([p.frequency_penalty for p in params]),
        )

    def _padded(self, token_lists: list[list[int]]) -> torch.Tensor:  # [rows, max_len] int64
        """Token lists padded with `vocab_size`, the id the penalty kernel ignores."""
        width = max(1, max(len(t) for t in token_lists))
        padded = [t + [self.vocab_size] * (width - len(t)) for t in token_lists]
        return torch.tensor(padded, dtype=torch.int64, device=self.device)

    def _apply_bans(self, logits: torch.Tensor, requests: Sequence[Request]) -> None:
        """Forbid repeated n-grams, and EOS/stop ids before min_tokens."""
        rows: list[int] = []
        cols: list[int] = []
        for row, request in enumerate(requests):
            banned = banned_ngram_tokens(request) | min_tokens_bans(request)
            rows.extend([row] * len(banned))
            cols.extend(banned)
        if rows:
            logits[torch.tensor(rows), torch.tensor(cols)] = float("-inf")

    def _logprobs(
        self,
        raw_logits: torch.Tensor,  # [num_seqs, vocab]
        token_ids: torch.Tensor,  # [num_seqs]
        requests: Sequence[Request],
    ) -> list[TokenLogprobs | None]:
        wanted = [r.sampling_params.logprobs for r in requests]
        if all(w is None for w in wanted):
            return [None] * len(requests)
        num_top = max(w or 0 for w in wanted)
        chosen, top_ids, top_values = reference.top_logprobs(raw_logits, token_ids, num_top)
        chosen_list = chosen.clamp(min=MIN_LOGPROB).tolist()
        top_ids_list, top_values_list = top_ids.tolist(), top_values.clamp(min=MIN_LOGPROB).tolist()
        result: list[TokenLogprobs | None] = []
        for row, num_wanted in enumerate(wanted):
            if num_wanted is None:
                result.append(None)
                continue
            top = list(
                zip(top_ids_list[row][:num_wanted], top_values_list[row][:num_wanted], strict=True)
            )
            result.append(TokenLogprobs(int(token_ids[row]), chosen_list[row], top))
        return result


def banned_ngram_tokens(request: Request) -> set[int]:
    """HF no_repeat_ngram_size: tokens that would complete an n-gram already in the sequence."""
    size = request.sampling_params.no_repeat_ngram_size
    tokens = request.all_token_ids
    if size <= 0 or len(tokens) < size:
        return set()
    prefix = tuple(tokens[len(tokens) - size + 1 :])
    return {
        tokens[start + size - 1]
        for start in range(len(tokens) - size + 1)
        if tuple(tokens[start : start + size - 1]) == prefix
    }


def min_tokens_bans(request: Request) -> set[int]:
    """EOS and stop ids are banned until the request has produced `min_tokens` tokens."""
    params = request.sampling_params
    if request.num_output_tokens >= params.min_tokens:
        return set()
    banned = set(params.stop_token_ids)
    if request.eos_token_id is not None:
        banned.add(request.eos_token_id)
    return banned
