"""Owns the model and its paged KV cache; turns a `SchedulerOutput` into sampled token ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from model.attention import build_attention_metadata
from model.gpt2 import GPT2LMHeadModel, kv_cache_bytes_per_block
from server.cuda_graphs import PaddedDecodeRunner
from server.sampler import Sampler, TokenLogprobs
from server.scheduler import ScheduledRequest, SchedulerOutput

logger = logging.getLogger(__name__)


@dataclass
class RunnerOutput:
    """One entry per sampling request, in `SchedulerOutput.sampling_requests` order."""

    sampled_token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


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
        if not scheduled:
            return RunnerOutput([], [])
        if self._is_padded_decode(scheduled):
            logits = self.decode_runner.run(
                [s.request.all_token_ids[-1] for s in scheduled],
                [s.num_computed_tokens for s in scheduled],
                [s.request.block_ids for s in scheduled],
            )  # [num_seqs, vocab]
            result = self.sampler(logits, [s.request for s in scheduled])
            return RunnerOutput(result.token_ids, result.logprobs)
        query_lens = [s.num_new_tokens for s in scheduled]
        seq_lens = [s.num_computed_tokens + s.num_new_tokens for s in scheduled]
        input_ids: list[int] = []
        logits_indices: list[int] = []
        for s, seq_len in zip(scheduled, seq_lens, strict=True):
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
        if not logits_indices:
            self.model.compute_hidden(tokens, positions, self.kv_cache, metadata)
            return RunnerOutput([], [])
        index = torch.tensor(logits_indices, dtype=torch.int64, device=self.device)
        logits = self.model(
            tokens, positions, self.kv_cache, metadata, index
        )  # [num_sample, vocab]
        sampling = [s.request for s in scheduler_output.sampling_requests]
        result = self.sampler(logits, sampling)
        return RunnerOutput(result.token_ids, result.logprobs)

    def _is_padded_decode(self, scheduled: list[ScheduledRequest]) -> bool:
        """Pure decode steps that fit the static buffers take the graph path."""
        return (
            self.decode_runner is not None
            and len(scheduled) <= self.decode_runner.max_batch
            and all(s.num_new_tokens == 1 and s.sample for s in scheduled)
        )


def determine_num_blocks(
    model: GPT2LMHeadModel,
    block_size: int,
    num_kv_blocks: int | None,
    kv_cache_gb: float,
    gpu_memory_utilization: float,
) -> int:
    """KV blocks to allocate: explicit, else from `kv_cache_gb` (CPU) or free GPU memory."""
    if num_kv_blocks is not None:
        return num_kv_blocks
    weight = model.transformer.wte.weight
    per_block = kv_cache_bytes_per_block(model.config, block_size, weight.dtype)
    if weight.device.type != "cuda":
        return max(2, int(kv_cache_gb * (1 << 30)) // per_block)
    free, total = torch.cuda.mem_get_info(weight.device)
    # Weights are already resident; leave room for activations and the sampler's buffers.
    activation_reserve = 2 * (1 << 30)
    budget = total * gpu_memory_utilization - (total - free) - activation_reserve
    num_blocks = int(budget) // per_block
    if num_blocks < 2:
        raise RuntimeError(
            f"not enough GPU memory for the KV cache: {free / 2**30:.1f} GiB free of "
            f"{total / 2**30:.1f} GiB at --gpu-memory-utilization {gpu_memory_utilization}"
        )
    return num_blocks
