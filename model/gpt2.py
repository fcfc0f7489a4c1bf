"""GPT-2 over a flat batch of tokens from many sequences, reading and writing a paged KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt2serve.model.attention import AttentionMetadata, PagedSelfAttention
from gpt2serve.model.config import GPT2Config
from gpt2serve.model.cpu_linear import (
    PACKED_FROM_ROWS,
    CpuVocabProjection,
    linear_add,
    linear_gelu,
)
from gpt2serve.model.layer_norm import LayerNorm


class GPT2MLP(nn.Module):
    """Feed-forward block: Linear -> GELU (tanh form, HF's gelu_new) -> Linear."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, n_embd]
        residual: torch.Tensor,  # [num_tokens, n_embd]
    ) -> torch.Tensor:  # [num_tokens, n_embd]
        """`residual` plus the MLP of `hidden` (fused epilogues on CPU)."""
        return linear_add(self.c_proj, linear_gelu(self.c_fc, hidden), residual)


class GPT2Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.n_embd, eps=eps)
        self.attn = PagedSelfAttention(config.n_embd, config.n_head)
        self.ln_2 = LayerNorm(config.n_embd, eps=eps)
        self.mlp = GPT2MLP(config.n_embd)

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, n_embd]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, n_head, head_dim]
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, n_embd]
        """Attention and MLP, each with a residual connection."""
        hidden = self.attn(self.ln_1(hidden), kv_cache, metadata, residual=hidden)
        return self.mlp(self.ln_2(hidden), residual=hidden)


class GPT2Transformer(nn.Module):
    """Embeddings, the block stack and the final LayerNorm (HF's `transformer.` submodule)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 language model; parameter names mirror HF's checkpoint, lm_head tied to wte."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPT2Transformer(config)
        self._cpu_projection = CpuVocabProjection()

    @property
    def lm_head_weight(self) -> torch.Tensor:  # [vocab_size, n_embd]
        """The output projection, tied to the token embedding as in GPT-2."""
        return self.transformer.wte.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        kv_cache: torch.Tensor,  # [n_layer, 2, num_blocks, block_size, n_head, head_dim]
        metadata: AttentionMetadata,
        logits_indices: torch.Tensor | None = None,  # [num_logits] int64; None = every token
    ) -> torch.Tensor:  # [num_logits, vocab_size] float32
        """Run all new tokens of all sequences at once; logits only where asked."""
        hidden = self.compute_hidden(input_ids, positions, kv_cache, metadata)
        if logits_indices is not None:
            hidden = hidden[logits_indices]  # [num_logits, n_embd]
        return self.compute_logits(hidden)

    def compute_hidden(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        kv_cache: torch.Tensor,  # [n_layer, 2, num_blocks, block_size, n_head, head_dim]
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, n_embd]
        """Final hidden states (after ln_f) of every new token."""
        t = self.transformer
        hidden = t.wte(input_ids) + t.wpe(positions)  # [num_tokens, n_embd]
        for layer_idx, block in enumerate(t.h):
            hidden = block(hidden, kv_cache[layer_idx], metadata)
        return t.ln_f(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [num_logits, vocab]
        """Project hidden states onto the vocabulary, in fp32 for the sampler."""
        weight = self.lm_head_weight
        if weight.device.type != "cpu":
            return F.linear(hidden, weight).float()
        return self._cpu_projection(hidden, weight).float()

    @torch.no_grad()
    def prepare_cpu_projection(self) -> None:
        """Make the lm_head's CPU layouts now (one per row route), not at the first small batch.

        The [n_embd, vocab] copy for 1-3 rows is ~150 MiB at gpt2 size: taken at start-up,
        the server's memory is what it will stay, and the first request does not pay for it.
        """
        weight = self.lm_head_weight
        if weight.device.type == "cpu":
            for rows in (1, PACKED_FROM_ROWS):
                self._cpu_projection(weight.new_zeros(rows, weight.shape[1]), weight)

    def allocate_kv_cache(
        self, num_blocks: int, block_size: int
    ) -> torch.Tensor:  # [n_layer, 2, num_blocks, block_size, n_head, head_dim]
        """A zeroed paged KV cache on the model's device and dtype."""
        c = self.config
        weight = self.transformer.wte.weight
        shape = (c.n_layer, 2, num_blocks, block_size, c.n_head, c.head_dim)
        return torch.zeros(shape, dtype=weight.dtype, device=weight.device)


def kv_cache_bytes_per_block(config: GPT2Config, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one KV block takes across all layers (K and V)."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return config.n_layer * 2 * block_size * config.n_embd * element_size
