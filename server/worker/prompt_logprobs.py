"""Prompt logprobs: each prompt token's logprob given the tokens before it, plus the top-N.

Position p of a prompt predicts token p + 1, so a chunk of a chunked prefill covering positions
[start, end) scores prompt tokens start + 1 .. end: the last position of one chunk scores the
first token of the next, whose id is known from the prompt. Logits are made `CHUNK_ROWS` rows
at a time from the final hidden states and reduced to (chosen, rank, top-N) at once, so a
1024-token prompt never holds 1024 x vocab floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.server.core.messages import PromptLogprobsChunk, ScheduledRequest
from gpt2serve.server.worker.sampler import logprob_table, read_logprobs

# Rows of logits alive at once: about max_num_seqs (the sampler's rows in the memory profile).
CHUNK_ROWS = 256


@dataclass
class PromptSpan:
    """One request's prompt positions in this step's flat batch."""

    request_id: str
    flat_start: int  # index of the first position in the step's [num_tokens] batch
    first_target: int  # prompt index of the first token scored (position + 1)
    target_ids: list[int]  # prompt tokens scored: prompt[first_target : first_target + count]
    num_top: int


def prompt_span(scheduled: ScheduledRequest, flat_start: int) -> PromptSpan | None:
    """The positions this step must score for `scheduled`, or None if it wants none."""
    request = scheduled.request
    if not request.needs_prompt_logprobs:
        return None
    start = scheduled.num_computed_tokens
    # The last prompt position predicts the first generated token, not a prompt token.
    end = min(start + scheduled.num_new_tokens, request.num_prompt_tokens - 1)
    if end <= start:
        return None
    num_top = request.sampling_params.prompt_logprobs or 0
    targets = request.prompt_token_ids[start + 1 : end + 1]
    return PromptSpan(request.request_id, flat_start, start + 1, targets, num_top)


@torch.inference_mode()
def compute_prompt_logprobs(
    model: GPT2LMHeadModel,
    hidden: torch.Tensor,  # [num_tokens, n_embd]: final hidden states of the step
    spans: list[PromptSpan],
) -> dict[str, PromptLogprobsChunk]:
    """Score every span's targets from the raw log-softmax; one host transfer in all."""
    device = hidden.device
    rows = [span.flat_start + i for span in spans for i in range(len(span.target_ids))]
    targets = [t for span in spans for t in span.target_ids]
    num_top = max(span.num_top for span in spans)
    row_index = torch.tensor(rows, dtype=torch.int64, device=device)  # [num_rows]
    target_ids = torch.tensor(targets, dtype=torch.int64, device=device)  # [num_rows]
    tables = []
    for start in range(0, len(rows), CHUNK_ROWS):
        end = start + CHUNK_ROWS
        logits = model.compute_logits(hidden[row_index[start:end]])  # [chunk, vocab]
        tables.append(_reduce(logits, target_ids[start:end], num_top))
    table = torch.cat(tables).tolist()  # [num_rows, 1 + 1 + 2 * num_top]: rank, then logprobs
    result = {}
    offset = 0
    for span in spans:
        span_rows = table[offset : offset + len(span.target_ids)]
        offset += len(span.target_ids)
        entries = [
            read_logprobs(target, row[1:], num_top, span.num_top, rank=int(row[0]))
            for row, target in zip(span_rows, span.target_ids, strict=True)
        ]
        result[span.request_id] = PromptLogprobsChunk(span.first_target, entries)
    return result


def _reduce(
    logits: torch.Tensor,  # [chunk, vocab] float32: raw model output
    target_ids: torch.Tensor,  # [chunk] int64
    num_top: int,
) -> torch.Tensor:  # [chunk, 1 + 1 + 2 * num_top] float64: rank, then `logprob_table`
    """The same numbers the sampler reports for a generated token, plus the target's rank."""
    target_logits = logits.gather(1, target_ids[:, None])  # [chunk, 1]
    # Rank in logit space equals rank in logprob space: the row's shift is common to all.
    rank = (logits > target_logits).sum(dim=1) + 1  # [chunk] int64
    return torch.cat([rank[:, None].double(), logprob_table(logits, target_ids, num_top)], dim=1)
