"""Per-batch sampling tensors from each request's `SamplingParams`, then `kernels.sample`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gpt2serve import kernels
from gpt2serve.kernels import reference
from gpt2serve.server.core.messages import TokenLogprobs
from gpt2serve.server.core.request import Request
from gpt2serve.server.worker.grammar import apply_grammar_masks

# JSON has no -inf; vLLM reports this value for impossible tokens.
MIN_LOGPROB = -9999.0


@dataclass
class SamplerOutput:
    """One sampled token per request, plus logprobs for the requests that asked for them."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]
    beam_candidates: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


class Sampler:
    """Applies the request's controls in docs/ARCHITECTURE.md's order; draws one token per row."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device

    def __call__(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab] float32: raw model output
        requests: Sequence[Request],
    ) -> SamplerOutput:
        """Sample the next token of every request (row i belongs to requests[i]).

        Beam rows get scored continuations instead of a token (their id is -1). `logits` may be
        modified in place: the caller does not read them afterwards.
        """
        beam_rows = [i for i, r in enumerate(requests) if r.is_beam]
        if not beam_rows:
            return self._draw(logits, requests)
        candidates = self.beam_candidates(logits[beam_rows], [requests[i] for i in beam_rows])
        output = SamplerOutput([-1] * len(requests), [None] * len(requests), candidates)
        drawn_rows = [i for i, r in enumerate(requests) if not r.is_beam]
        if drawn_rows:  # beam search refuses logprobs, so beam rows need none from here
            drawn = self._draw(logits[drawn_rows], [requests[i] for i in drawn_rows])
            for j, row in enumerate(drawn_rows):
                output.token_ids[row], output.logprobs[row] = drawn.token_ids[j], drawn.logprobs[j]
        return output

    def _draw(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab] float32: raw model output, modified in place
        requests: Sequence[Request],
    ) -> SamplerOutput:
        """One token per row through the controls, with logprobs where they were asked for."""
        params = [r.sampling_params for r in requests]
        raw_logits = logits
        if any(p.logprobs is not None for p in params):
            logits = logits.clone()  # logprobs are reported from the unmodified distribution
        if any(r.grammar is not None for r in requests):
            apply_grammar_masks(logits, [r.grammar for r in requests])
        self._apply_logit_bias(logits, requests)
        self._apply_penalties(logits, requests)
        self._apply_bans(logits, requests)
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
        wanted = [p.logprobs for p in params]
        if all(w is None for w in wanted):
            return SamplerOutput(token_ids.tolist(), [None] * len(requests))
        return self._with_logprobs(raw_logits, token_ids, wanted)

    def beam_candidates(
        self,
        logits: torch.Tensor,  # [num_beams, vocab]: raw model output of beam rows
        beams: Sequence[Request],
    ) -> dict[str, list[tuple[int, float]]]:
        """Each beam's best 2 x width continuations, scored as Hugging Face's beam search does:
        log-softmax first, then logit bias, penalties and bans on the log-probabilities, then
        the beam's running score added in float32."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [num_beams, vocab]
        if any(b.grammar is not None for b in beams):
            apply_grammar_masks(log_probs, [b.grammar for b in beams])
        self._apply_logit_bias(log_probs, beams)
        self._apply_penalties(log_probs, beams)
        self._apply_bans(log_probs, beams)
        scores = log_probs + self._floats([b.beam_score for b in beams])[:, None]
        widths = [2 * b.sampling_params.beam_width for b in beams]
        values, ids = scores.topk(max(widths), dim=-1)  # [num_beams, max(widths)] each
        rows = torch.cat([ids.double(), values.double()], dim=1).tolist()  # one host copy
        num = max(widths)
        return {
            beam.request_id: list(zip(map(int, row[:width]), row[num : num + width], strict=True))
            for beam, row, width in zip(beams, rows, widths, strict=True)
        }

    def _top_k(self, top_k: int) -> int:
        """top_k at or beyond the vocabulary keeps everything: the same as off (0)."""
        return top_k if 0 < top_k < self.vocab_size else 0

    def _floats(self, values: list[float]) -> torch.Tensor:  # [len(values)] float32
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _ids(self, values: list[int]) -> torch.Tensor:  # [len(values)] int64
        # Index tensors on the logits' device: a CPU index into CUDA logits is a hidden copy.
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _uniforms(self, requests: Sequence[Request]) -> torch.Tensor:  # [num_seqs] float32
        """This step's draw of each request: a function of its seed and output position only."""
        seeds = [r.sampling_params.seed or 0 for r in requests]
        # Counter = output position + 1: the hash maps (seed 0, counter 0) to exactly 0, and
        # u = 0 draws the lowest-id token of non-zero probability, however unlikely it is.
        steps = [r.num_output_tokens + 1 for r in requests]
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
        if rows:  # a dict per request: (row, token) pairs are unique, as the kernel needs
            kernels.add_logit_bias(logits, self._ids(rows), self._ids(cols), self._floats(values))

    def _apply_penalties(self, logits: torch.Tensor, requests: Sequence[Request]) -> None:
        rows = [i for i, r in enumerate(requests) if r.sampling_params.needs_penalties]
        if not rows:
            return
        selected = [requests[i] for i in rows]
        params = [r.sampling_params for r in selected]
        row_index = self._ids(rows)
        logits[row_index] = kernels.apply_penalties(
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
            logits[self._ids(rows), self._ids(cols)] = float("-inf")

    def _with_logprobs(
        self,
        raw_logits: torch.Tensor,  # [num_seqs, vocab]: before bias, penalties and temperature
        token_ids: torch.Tensor,  # [num_seqs] int64
        wanted: list[int | None],
    ) -> SamplerOutput:
        """Sampled ids and logprobs from the unmodified distribution, in one host transfer."""
        num_top = max(w or 0 for w in wanted)
        table = torch.cat(
            [token_ids[:, None].double(), logprob_table(raw_logits, token_ids, num_top)], dim=1
        )  # [num_seqs, 1 + 1 + 2 * num_top]: id, then `logprob_table`
        rows = table.tolist()  # the step's only device -> host copy
        ids = [int(row[0]) for row in rows]
        logprobs = [
            None if num_wanted is None else read_logprobs(int(row[0]), row[1:], num_top, num_wanted)
            for row, num_wanted in zip(rows, wanted, strict=True)
        ]
        return SamplerOutput(ids, logprobs)


def logprob_table(
    raw_logits: torch.Tensor,  # [num_rows, vocab]: the unmodified model output
    token_ids: torch.Tensor,  # [num_rows] int64: the token each row reports on
    num_top: int,
) -> torch.Tensor:  # [num_rows, 1 + 2 * num_top] float64: logprob, top ids, top logprobs
    """Each row's token logprob and top-`num_top` alternatives, JSON-safe, as one table.

    float64 so one `.tolist()` carries ids (< 2**53) and fp32 logprobs exactly.
    """
    chosen = kernels.chosen_logprobs(raw_logits, token_ids)  # [num_rows]
    top_ids, top_values = top_logprobs(raw_logits, num_top)  # [num_rows, num_top] each
    columns = [json_safe_logprobs(chosen)[:, None], top_ids, json_safe_logprobs(top_values)]
    return torch.cat([c.double() for c in columns], dim=1)


def read_logprobs(
    token_id: int, cells: list[float], num_top: int, num_wanted: int, rank: int | None = None
) -> TokenLogprobs:
    """A `TokenLogprobs` from one row of `logprob_table` (built with `num_top` columns)."""
    top_ids = cells[1 : 1 + num_wanted]
    top_values = cells[1 + num_top : 1 + num_top + num_wanted]
    top = [(int(t), lp) for t, lp in zip(top_ids, top_values, strict=True)]
    return TokenLogprobs(token_id, cells[0], top, rank)


def top_logprobs(
    raw_logits: torch.Tensor,  # [num_seqs, vocab]
    num_top: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # ids int64, logprobs float32: [num_seqs, num_top]
    """The `num_top` most likely tokens: a top-k of the logits minus the row's log-sum-exp."""
    if num_top == 0:
        empty = raw_logits[:, :0]
        return empty.long(), empty.float()
    logits = raw_logits.float()
    values, ids = logits.topk(num_top, dim=-1)  # same order as the log-softmax's
    return ids, values - torch.logsumexp(logits, dim=-1, keepdim=True)


def json_safe_logprobs(values: torch.Tensor) -> torch.Tensor:  # same shape as `values`
    """NaN and -inf become MIN_LOGPROB (JSON has neither); nothing exceeds log(1) = 0."""
    return torch.nan_to_num(values.float(), nan=MIN_LOGPROB, posinf=0.0, neginf=MIN_LOGPROB).clamp(
        MIN_LOGPROB, 0.0
    )


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
