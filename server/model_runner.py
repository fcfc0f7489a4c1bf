"""Owns the model and its paged KV cache; turns a `SchedulerOutput` into sampled token ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from model.attention import AttentionMetadata, build_attention_metadata
from model.gpt2 import GPT2LMHeadModel, kv_cache_bytes_per_block
from server.cuda_graphs import PaddedDecodeRunner
from server.prompt_logprobs import (
    PromptLogprobsChunk,
    PromptSpan,
    compute_prompt_logprobs,
    prompt_span,
)
from server.request import MAX_LOGPROBS, Request, SamplingParams
from server.sampler import Sampler, TokenLogprobs
from server.scheduler import ScheduledRequest, SchedulerOutput

logger = logging.getLogger(__name__)


@dataclass
class RunnerOutput:
    """One entry per sampling request, in `SchedulerOutput.sampling_requests` order."""

    sampled_token_ids: list[int]
    logprobs: list[TokenLogprobs | None]
    # Per request id: the prompt tokens this step scored, for requests that asked.
    prompt_logprobs: dict[str, PromptLogprobsChunk] = field(default_factory=dict)


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
            return RunnerOutput(result.token_ids, result.logprobs)
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
        return RunnerOutput(result.token_ids, result.logprobs, prompt_logprobs)

    def _is_padded_decode(self, scheduled: list[ScheduledRequest]) -> bool:
        """Pure decode steps that fit the static buffers take the graph path."""
        return (
            self.decode_runner is not None
            and len(scheduled) <= self.decode_runner.max_batch
            and all(s.num_new_tokens == 1 and s.sample for s in scheduled)
        )


class KVCacheSizeError(RuntimeError):
    """The device has no room left for a KV cache of at least one usable block."""


def determine_num_blocks(
    model: GPT2LMHeadModel,
    block_size: int,
    num_kv_blocks: int | None,
    kv_cache_gb: float,
    gpu_memory_utilization: float,
    max_num_batched_tokens: int = 2048,
    max_num_seqs: int = 256,
) -> int:
    """KV blocks to allocate: explicit, else `kv_cache_gb` (CPU) or a CUDA profiling run."""
    if num_kv_blocks is not None:
        return num_kv_blocks
    weight = model.transformer.wte.weight
    per_block = kv_cache_bytes_per_block(model.config, block_size, weight.dtype)
    if weight.device.type != "cuda":
        return kv_blocks_for_memory(kv_cache_gb * (1 << 30), per_block)
    total = torch.cuda.mem_get_info(weight.device)[1]
    peak = profile_peak_memory(model, block_size, max_num_batched_tokens, max_num_seqs)
    num_blocks = kv_blocks_for_gpu(total, peak, gpu_memory_utilization, per_block)
    logger.info(
        "KV cache sizing: %.2f GiB in use at the peak of a %d-token step; %d blocks of %.2f MiB "
        "fit in %.0f%% of %.1f GiB", peak / 2**30, max_num_batched_tokens, num_blocks,
        per_block / 2**20, 100 * gpu_memory_utilization, total / 2**30,
    )  # fmt: skip
    return num_blocks


def kv_blocks_for_memory(num_bytes: float, bytes_per_block: int) -> int:
    """Blocks that fit `num_bytes`; at least 2 (the null block plus one usable block)."""
    return max(2, int(num_bytes) // bytes_per_block)


def kv_blocks_for_gpu(
    total_bytes: int, peak_in_use_bytes: int, gpu_memory_utilization: float, bytes_per_block: int
) -> int:
    """vLLM's rule: (total * utilization - memory in use at a max-size step's peak) / block."""
    budget = int(total_bytes * gpu_memory_utilization) - peak_in_use_bytes
    num_blocks = max(0, budget) // bytes_per_block
    if num_blocks < 2:
        raise KVCacheSizeError(
            f"no GPU memory left for the KV cache: --gpu-memory-utilization "
            f"{gpu_memory_utilization} allows {total_bytes * gpu_memory_utilization / 2**30:.2f} "
            f"GiB of {total_bytes / 2**30:.2f} GiB, but weights, other processes and a "
            f"max-size step already peak at {peak_in_use_bytes / 2**30:.2f} GiB; raise "
            f"--gpu-memory-utilization, lower --max-num-batched-tokens or --max-num-seqs, "
            f"or pass --num-kv-blocks"
        )
    return num_blocks


def profile_peak_memory(
    model: GPT2LMHeadModel, block_size: int, max_num_batched_tokens: int, max_num_seqs: int
) -> int:
    """Device bytes in use at the peak of a max-size step (weights and other processes too)."""
    device = model.transformer.wte.weight.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # cached-but-free memory is not "in use"
    torch.cuda.reset_peak_memory_stats(device)
    free, total = torch.cuda.mem_get_info(device)
    in_use_before = total - free  # weights, CUDA context, other processes on the GPU
    allocated_before = torch.cuda.memory_allocated(device)
    profile_cache_bytes = run_profile_step(model, block_size, max_num_batched_tokens, max_num_seqs)
    torch.cuda.synchronize(device)
    # The profiling step's own small cache is replaced by the real one: not activation memory.
    step_peak = torch.cuda.max_memory_allocated(device) - allocated_before - profile_cache_bytes
    torch.cuda.empty_cache()
    return in_use_before + max(0, step_peak)


@torch.inference_mode()
def run_profile_step(
    model: GPT2LMHeadModel, block_size: int, num_tokens: int, max_num_seqs: int
) -> int:
    """A dummy step: `num_tokens` prompt tokens, then `max_num_seqs` rows through the sampler.

    Returns the bytes of the throwaway KV cache it allocated for itself.
    """
    device = model.transformer.wte.weight.device
    max_len = model.config.n_positions
    # As few sequences as positions allow: the longest attention spans are the costliest.
    seq_lens = [min(max_len, num_tokens - start) for start in range(0, num_tokens, max_len)]
    block_tables: list[list[int]] = []
    next_block = 1  # block 0 is the null block
    for seq_len in seq_lens:
        num_blocks = -(-seq_len // block_size)
        block_tables.append(list(range(next_block, next_block + num_blocks)))
        next_block += num_blocks
    kv_cache = model.allocate_kv_cache(next_block, block_size)  # [n_layer, 2, blocks, ...]
    metadata, positions = build_attention_metadata(
        block_tables, seq_lens, seq_lens, block_size, device
    )
    tokens = torch.zeros(num_tokens, dtype=torch.int64, device=device)  # [num_tokens]
    num_rows = min(max_num_seqs, num_tokens)
    index = torch.arange(num_tokens - num_rows, num_tokens, device=device)  # [num_rows]
    logits = model(tokens, positions, kv_cache, metadata, index)  # [num_rows, vocab]
    # The sampler's costliest path: every filter, every penalty over a full-length prompt.
    params = SamplingParams(
        top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.1, presence_penalty=0.1,
        frequency_penalty=0.1, logprobs=MAX_LOGPROBS, seed=0,
    )  # fmt: skip
    prompt = [0] * max_len
    Sampler(model.config.vocab_size, device)(
        logits, [Request(f"profile-{i}", prompt, params) for i in range(num_rows)]
    )
    return kv_cache.numel() * kv_cache.element_size()
