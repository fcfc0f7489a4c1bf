"""Public kernel launchers: Triton for CUDA tensors, the torch reference everywhere else.

May import: torch and triton; nothing else of gpt2serve (model and server build on it).
Importing this package never imports a Triton kernel module: `@triton.jit` reads
TRITON_INTERPRET when it decorates, so tests set it before calling the launchers directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from gpt2serve.kernels import reference, reference_sampling

__all__ = [
    "add_logit_bias",
    "apply_penalties",
    "apply_token_bitmask",
    "chosen_logprobs",
    "copy_blocks",
    "disable_triton",
    "paged_attention",
    "sample",
    "triton_enabled",
    "use_cpu_attention_kernel",
    "write_kv_cache",
]


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_triton_disabled = False
_cpu_decode_attention: Callable[..., torch.Tensor] | None = None  # the C++ kernel, when on


def disable_triton(disabled: bool = True) -> None:
    """Serve CUDA tensors with the torch reference too (`--disable-triton`), process-wide."""
    global _triton_disabled
    _triton_disabled = disabled


def use_cpu_attention_kernel(enabled: bool = True) -> bool:
    """Serve CPU decode attention with the C++ kernel (built now if need be), process-wide.

    Returns whether it is in use: False where it cannot be built (the reference serves).
    """
    global _cpu_decode_attention
    _cpu_decode_attention = None
    if enabled:
        from gpt2serve.kernels import cpu_attention

        if cpu_attention.load() is not None:
            _cpu_decode_attention = cpu_attention.decode_attention
    return _cpu_decode_attention is not None


def triton_enabled(device: torch.device | str) -> bool:
    """Whether the Triton kernels serve tensors on `device` (CUDA only, unless disabled)."""
    # Device first: on CPU this runs several times per layer.
    if torch.device(device).type != "cuda":
        return False
    return not _triton_disabled and _triton_importable()


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, n_head, head_dim]
    value: torch.Tensor,  # [num_tokens, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64
) -> None:
    """Scatter K/V rows into their cache slots."""
    if triton_enabled(key.device):
        from gpt2serve.kernels.kv_cache import write_kv_cache as triton_write

        triton_write(key, value, k_cache, v_cache, slot_mapping)
    else:
        reference.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)


def copy_blocks(
    key_caches: list[torch.Tensor],  # n_layer x [num_blocks, block_size, n_head, head_dim]
    value_caches: list[torch.Tensor],  # n_layer x [num_blocks, block_size, n_head, head_dim]
    block_mapping: torch.Tensor,  # [num_pairs, 2] int64: (src_block, dst_block)
) -> None:
    """Copy-on-write: copy each src block onto its dst block in every layer's K/V cache."""
    if triton_enabled(key_caches[0].device):
        from gpt2serve.kernels.block_copy import copy_blocks_triton

        copy_blocks_triton(key_caches, value_caches, block_mapping)
    else:
        reference.copy_blocks(key_caches, value_caches, block_mapping)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, n_head, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_head, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    max_query_len: int,
    max_seq_len: int,
    scale: float,
) -> torch.Tensor:  # [num_tokens, n_head, head_dim]
    """Attention of each sequence's new tokens over its paged context."""
    args = (query, k_cache, v_cache, block_tables, seq_lens, query_start_loc)
    if triton_enabled(query.device):
        from gpt2serve.kernels.attention import paged_attention as triton_attention

        return triton_attention(*args, max_query_len, max_seq_len, scale)
    if _cpu_decode_attention is not None and query.device.type == "cpu":
        return reference.paged_attention(
            *args, max_query_len, max_seq_len, scale, _cpu_decode_attention
        )
    return reference.paged_attention(*args, max_query_len, max_seq_len, scale)


def sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32
    temperature: torch.Tensor,  # [num_seqs] float32
    top_k: torch.Tensor,  # [num_seqs] int32
    top_p: torch.Tensor,  # [num_seqs] float32
    min_p: torch.Tensor,  # [num_seqs] float32
    uniform: torch.Tensor,  # [num_seqs] float32
) -> torch.Tensor:  # [num_seqs] int64
    """Temperature, top-k, top-p, min-p and a seeded inverse-CDF draw per row."""
    args = (logits, temperature, top_k, top_p, min_p, uniform)
    if triton_enabled(logits.device):
        from gpt2serve.kernels.sampling import sample as triton_sample

        return triton_sample(*args)
    return reference.sample(*args)


def add_logit_bias(
    logits: torch.Tensor,  # [num_seqs, vocab] float32, modified in place
    bias_rows: torch.Tensor,  # [num_biases] int64
    bias_token_ids: torch.Tensor,  # [num_biases] int64; (row, id) pairs unique
    bias_values: torch.Tensor,  # [num_biases] float32
) -> None:
    """Add OpenAI logit_bias entries to their (row, token) logits."""
    if triton_enabled(logits.device):
        from gpt2serve.kernels.penalties import add_logit_bias as triton_bias

        triton_bias(logits, bias_rows, bias_token_ids, bias_values)
    else:
        reference.add_logit_bias(logits, bias_rows, bias_token_ids, bias_values)


def apply_penalties(
    logits: torch.Tensor,  # [num_seqs, vocab] float32
    prompt_token_ids: torch.Tensor,  # [num_seqs, max_prompt_len] int64, padded with vocab
    output_token_ids: torch.Tensor,  # [num_seqs, max_output_len] int64, padded with vocab
    repetition_penalty: torch.Tensor,  # [num_seqs] float32; 1 = off
    presence_penalty: torch.Tensor,  # [num_seqs] float32; 0 = off
    frequency_penalty: torch.Tensor,  # [num_seqs] float32; 0 = off
) -> torch.Tensor:  # [num_seqs, vocab]
    """HF repetition penalty over prompt+output, then OpenAI presence/frequency on output."""
    args = (logits, prompt_token_ids, output_token_ids)
    penalties = (repetition_penalty, presence_penalty, frequency_penalty)
    if triton_enabled(logits.device):
        from gpt2serve.kernels.penalties import apply_penalties as triton_penalties

        return triton_penalties(*args, *penalties)
    return reference.apply_penalties(*args, *penalties)


def apply_token_bitmask(
    logits: torch.Tensor,  # [num_rows, vocab] float32/float16/bfloat16, modified in place
    bitmask: torch.Tensor,  # [num_masks, words] int32: xgrammar's packed allowed-token bits
    row_indices: torch.Tensor,  # [num_masks] int64: the logits row each mask applies to
) -> None:
    """Structured output: -inf every logit whose bit is 0 in its row's token bitmask."""
    if triton_enabled(logits.device):
        from gpt2serve.kernels.bitmask import apply_token_bitmask_triton

        apply_token_bitmask_triton(logits, bitmask, row_indices)
    else:
        reference_sampling.apply_token_bitmask(logits, bitmask, row_indices)


def chosen_logprobs(
    logits: torch.Tensor,  # [num_seqs, vocab]: raw model logits
    token_ids: torch.Tensor,  # [num_seqs] int64
) -> torch.Tensor:  # [num_seqs] float32
    """Log-probability of each row's chosen token under the unmodified distribution."""
    if triton_enabled(logits.device):
        from gpt2serve.kernels.logprobs import chosen_logprobs as triton_logprobs

        return triton_logprobs(logits, token_ids)
    return reference.chosen_logprobs(logits, token_ids)
