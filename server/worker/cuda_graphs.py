"""Decode steps on fixed-size, padded static buffers, captured as CUDA graphs on a GPU.

A decode step's Python and launch overhead dominates for a model as small as GPT-2, so
decode batches replay a captured graph of the whole forward pass. Batches are padded up to
the next captured size: padding rows write their K/V nowhere (slot -1), read only the null
block 0, and their logits are dropped. On CPU the same padded path runs eagerly, which is
how the padding logic is tested without a GPU.
"""

from __future__ import annotations

import logging
import time

import torch

from gpt2serve.model.attention import AttentionMetadata
from gpt2serve.model.gpt2 import GPT2LMHeadModel

logger = logging.getLogger(__name__)


def bucket_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_num_seqs (vLLM's spacing)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_num_seqs]
    sizes.extend(range(16, max_num_seqs + 1, 16))
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class PaddedDecodeRunner:
    """Runs pure-decode batches on static buffers; captures one CUDA graph per bucket size."""

    def __init__(
        self,
        model: GPT2LMHeadModel,
        kv_cache: torch.Tensor,  # [n_layer, 2, num_blocks, block_size, n_head, head_dim]
        block_size: int,
        max_num_seqs: int,
        max_model_len: int,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.sizes = bucket_sizes(max_num_seqs)
        self.max_batch = self.sizes[-1]
        max_blocks = -(-max_model_len // block_size)
        device = kv_cache.device
        self.input_ids = torch.zeros(self.max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(self.max_batch, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((self.max_batch,), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(
            self.max_batch, max_blocks, dtype=torch.int32, device=device
        )
        self.seq_lens = torch.ones(self.max_batch, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(self.max_batch + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def bucket(self, num_seqs: int) -> int:
        """The smallest captured size that holds `num_seqs`."""
        return next(size for size in self.sizes if size >= num_seqs)

    def _forward(self, size: int) -> torch.Tensor:  # [size, vocab]
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            max_query_len=1,
            max_seq_len=self.max_model_len,  # fixed, so a captured graph suits every step
        )
        return self.model(self.input_ids[:size], self.positions[:size], self.kv_cache, metadata)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket size (largest first, so smaller graphs reuse its memory pool)."""
        started = time.monotonic()
        pool = None
        for size in reversed(self.sizes):
            self._forward(size)  # warm-up: compiles the Triton kernels for this shape
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = (graph, logits)
        logger.info(
            "captured %d CUDA graphs for decode batch sizes up to %d in %.1fs",
            len(self.graphs), self.max_batch, time.monotonic() - started,
        )  # fmt: skip

    @torch.inference_mode()
    def run(
        self,
        token_ids: list[int],
        positions: list[int],
        block_tables: list[list[int]],
    ) -> torch.Tensor:  # [num_seqs, vocab]
        """Logits of the next token for each decoding sequence."""
        num_seqs = len(token_ids)
        size = self.bucket(num_seqs)
        bs = self.block_size
        slots = [t[p // bs] * bs + p % bs for t, p in zip(block_tables, positions, strict=True)]
        width = max(len(t) for t in block_tables)
        table = torch.zeros(size, width, dtype=torch.int32)
        for row, blocks in enumerate(block_tables):
            table[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        pad = size - num_seqs
        self.input_ids[:size].copy_(torch.tensor(token_ids + [0] * pad), non_blocking=True)
        self.positions[:size].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        self.slot_mapping[:size].copy_(torch.tensor(slots + [-1] * pad), non_blocking=True)
        self.seq_lens[:size].copy_(
            torch.tensor([p + 1 for p in positions] + [1] * pad), non_blocking=True
        )
        self.block_tables[:size].zero_()
        self.block_tables[:size, :width].copy_(table, non_blocking=True)
        if size in self.graphs:
            graph, logits = self.graphs[size]
            graph.replay()
        else:
            logits = self._forward(size)
        return logits[:num_seqs]
