"""Attention metadata and the paged self-attention layer of GPT-2."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gpt2serve import kernels
from gpt2serve.model.cpu_linear import linear_add


@dataclass
class AttentionMetadata:
    """Where this step's tokens live in the paged KV cache and which sequence each belongs to."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token (-1 = padding)
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor  # [num_seqs] int32: context length after this step
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: cu_seqlens of the new tokens
    max_query_len: int
    max_seq_len: int


class PagedSelfAttention(nn.Module):
    """GPT-2 multi-head attention whose keys and values live in a paged cache."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.scale = self.head_dim**-0.5
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, n_embd]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, n_head, head_dim]
        metadata: AttentionMetadata,
        residual: torch.Tensor,  # [num_tokens, n_embd]
    ) -> torch.Tensor:  # [num_tokens, n_embd]
        """Write this step's K/V into the cache, attend over each sequence's pages; `residual`
        plus the projected result (the add fused into the projection on CPU)."""
        num_tokens = hidden.shape[0]
        qkv = self.c_attn(hidden)  # [num_tokens, 3 * n_embd]
        query, key, value = qkv.view(num_tokens, 3, self.n_head, self.head_dim).unbind(1)
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        kernels.write_kv_cache(key, value, k_cache, v_cache, metadata.slot_mapping)
        out = kernels.paged_attention(
            query,
            k_cache,
            v_cache,
            metadata.block_tables,
            metadata.seq_lens,
            metadata.query_start_loc,
            metadata.max_query_len,
            metadata.max_seq_len,
            self.scale,
        )  # [num_tokens, n_head, head_dim]
        return linear_add(self.c_proj, out.reshape(num_tokens, -1), residual)


def build_attention_metadata(
    block_tables: list[list[int]],
    seq_lens: list[int],
    query_lens: list[int],
    block_size: int,
    device: torch.device | str = "cpu",
) -> tuple[AttentionMetadata, torch.Tensor]:
    """Metadata and token positions for sequences whose last `query_lens` tokens are new.

    Returns `(metadata, positions)`, positions being `[num_tokens]` int64 in batch order.
    """
    positions: list[int] = []
    slots: list[int] = []
    for table, seq_len, q_len in zip(block_tables, seq_lens, query_lens, strict=True):
        for pos in range(seq_len - q_len, seq_len):
            positions.append(pos)
            slots.append(table[pos // block_size] * block_size + pos % block_size)
    max_blocks = max((len(t) for t in block_tables), default=0)
    padded = [t + [0] * (max_blocks - len(t)) for t in block_tables]
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device).view(-1, max_blocks),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
    )
    return metadata, torch.tensor(positions, dtype=torch.int64, device=device)
