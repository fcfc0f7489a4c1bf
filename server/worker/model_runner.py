"""Owns the model and its paged KV cache; turns a `SchedulerOutput` into sampled token ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2serve import kernels
from gpt2serve.model.attention import AttentionMetadata, build_attention_metadata
from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.server.core.messages import RunnerOutput, ScheduledRequest, SchedulerOutput
from gpt2serve.server.core.request import Request
from gpt2serve.server.worker.cuda_graphs import PaddedDecodeRunner
from gpt2serve.server.worker.prompt_logprobs import (
    PromptSpan,
    compute_prompt_logprobs,
    prompt_span,
)
from gpt2serve.server.worker.sampler import Sampler


@dataclass
class _StepInputs:
    """The flat batch of one eager step."""

    tokens: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    metadata: AttentionMetadata
    logits_indices: list[int]  # flat index of each sampling request's last token
    spans: list[PromptSpan]  # prompt positions to score


class ModelRunner:
    """Builds flat input tensors and attention metadata, runs GPT-2, samples."""

    def __init__(
        self,
        model: GPT2LMHeadModel,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int = 256,
        padded_decode: bool = False,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.device = model.transformer.wte.weight.device
        self.kv_cache = model.allocate_kv_cache(num_blocks, block_size)
        self.sampler = Sampler(model.config.vocab_size, self.device)
        self.decode_runner: PaddedDecodeRunner | None = None
        if padded_decode:
            self.decode_runner = PaddedDecodeRunner(
                model, self.kv_cache, block_size, max_num_seqs, model.config.n_positions
            )
            if self.device.type == "cuda":
                self.decode_runner.capture()

    @torch.inference_mode()
    def execute(self, scheduler_output: SchedulerOutput) -> RunnerOutput:
        """One forward pass over every scheduled token, then one sample per finished prompt."""
        scheduled = scheduler_output.scheduled
        if scheduler_output.block_copies:  # copy-on-write before anything appends
            self._copy_blocks(scheduler_output.block_copies)
        if not scheduled:
            return RunnerOutput([], [])
        # A one-token sampling step scores no prompt token (its position predicts the next
        # token), so the graph path never owes prompt logprobs.
        if self._is_padded_decode(scheduled):
            logits = self.decode_runner.run(
                [s.request.all_token_ids[-1] for s in scheduled],
                [s.num_computed_tokens for s in scheduled],
                [s.request.block_ids for s in scheduled],
            )  # [num_seqs, vocab]
            result = self.sampler(logits, [s.request for s in scheduled])
            return RunnerOutput(
                result.token_ids, result.logprobs, beam_candidates=result.beam_candidates
            )
        inputs = self._prepare(scheduled)
        sampling = [s.request for s in scheduler_output.sampling_requests]
        return self._run(inputs, sampling)

    def _prepare(self, scheduled: list[ScheduledRequest]) -> _StepInputs:
        """Flat token ids, positions and attention metadata of every scheduled token."""
        query_lens = [s.num_new_tokens for s in scheduled]
        seq_lens = [s.num_computed_tokens + s.num_new_tokens for s in scheduled]
        input_ids: list[int] = []
        logits_indices: list[int] = []
        spans: list[PromptSpan] = []
        for s, seq_len in zip(scheduled, seq_lens, strict=True):
            span = prompt_span(s, len(input_ids))
            if span is not None:
                spans.append(span)
            input_ids.extend(s.request.all_token_ids[s.num_computed_tokens : seq_len])
            if s.sample:
                logits_indices.append(len(input_ids) - 1)
        metadata, positions = build_attention_metadata(
            [s.request.block_ids for s in scheduled],
            seq_lens,
            query_lens,
            self.block_size,
            self.device,
        )
        tokens = torch.tensor(input_ids, dtype=torch.int64, device=self.device)  # [num_tokens]
        return _StepInputs(tokens, positions, metadata, logits_indices, spans)

    def _run(self, inputs: _StepInputs, sampling: list[Request]) -> RunnerOutput:
        """The eager step: logits only at the sampling positions and the prompt spans scored."""
        hidden = self.model.compute_hidden(
            inputs.tokens, inputs.positions, self.kv_cache, inputs.metadata
        )  # [num_tokens, n_embd]
        prompt_logprobs = (
            compute_prompt_logprobs(self.model, hidden, inputs.spans) if inputs.spans else {}
        )
        if not inputs.logits_indices:  # the step only wrote K/V (and maybe scored a prompt)
            return RunnerOutput([], [], prompt_logprobs)
        index = torch.tensor(inputs.logits_indices, dtype=torch.int64, device=self.device)
        logits = self.model.compute_logits(hidden[index])  # [num_sample, vocab]
        result = self.sampler(logits, sampling)
        return RunnerOutput(
            result.token_ids, result.logprobs, prompt_logprobs, result.beam_candidates
        )

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy each (src, dst) block in every layer's K and V cache."""
        pairs = torch.tensor(copies, dtype=torch.int64, device=self.device)  # [num_pairs, 2]
        kernels.copy_blocks(list(self.kv_cache[:, 0]), list(self.kv_cache[:, 1]), pairs)

    def _is_padded_decode(self, scheduled: list[ScheduledRequest]) -> bool:
        """Pure decode steps that fit the static buffers take the graph path."""
        return (
            self.decode_runner is not None
            and len(scheduled) <= self.decode_runner.max_batch
            and all(s.num_new_tokens == 1 and s.sample for s in scheduled)
        )
