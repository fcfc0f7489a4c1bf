"""KV cache size: explicit, from `--kv-cache-gb` on CPU, or by a profiling step on CUDA."""

from __future__ import annotations

import logging

import torch

from gpt2serve.model.attention import build_attention_metadata
from gpt2serve.model.gpt2 import GPT2LMHeadModel, kv_cache_bytes_per_block
from gpt2serve.server.core.request import Request
from gpt2serve.server.core.sampling_params import MAX_LOGPROBS, SamplingParams
from gpt2serve.server.worker.sampler import Sampler

logger = logging.getLogger(__name__)


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
