"""KV-cache sizing: explicit blocks, `--kv-cache-gb` on CPU, a profiling run on CUDA."""

from __future__ import annotations

import pytest
import torch

from gpt2serve.model.config import named_config
from gpt2serve.model.gpt2 import GPT2LMHeadModel, kv_cache_bytes_per_block
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import load_model
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import Engine, EngineConfig
from gpt2serve.server.worker import kv_cache_sizing
from gpt2serve.server.worker.kv_cache_sizing import (
    KVCacheSizeError,
    determine_num_blocks,
    kv_blocks_for_gpu,
    kv_blocks_for_memory,
    run_profile_step,
)
from support.engine_driver import random_prompt, run_to_completion, tokens_of

GIB = 1 << 30
MIB = 1 << 20


TINY_BLOCK_BYTES = 2 * 2 * 16 * 64 * 4  # 2 layers x (K and V) x 16 slots x 64 wide x fp32


def test_tiny_block_bytes() -> None:
    assert kv_cache_bytes_per_block(named_config("tiny"), 16, torch.float32) == TINY_BLOCK_BYTES


def test_kv_cache_gb_arithmetic() -> None:
    assert kv_blocks_for_memory(2 * GIB, 16 * 1024) == 2 * GIB // (16 * 1024) == 131072
    assert kv_blocks_for_memory(0.5 * GIB, 3 * MIB) == 170  # floor(512 / 3)
    assert kv_blocks_for_memory(1000, 16 * 1024) == 2  # never below null block + one usable


def test_cpu_sizing_uses_kv_cache_gb(random_tiny_model: GPT2LMHeadModel) -> None:
    # floor(0.01 GiB / 16 KiB) = floor(10737418.24 / 16384) = 655.
    assert determine_num_blocks(random_tiny_model, 16, None, 0.01, 0.9) == 655
    assert determine_num_blocks(random_tiny_model, 32, None, 1.0, 0.9) == GIB // (
        2 * TINY_BLOCK_BYTES
    )
    # gpu_memory_utilization plays no part off CUDA.
    assert determine_num_blocks(random_tiny_model, 16, None, 0.01, 0.1) == 655


def test_explicit_num_kv_blocks_wins(random_tiny_model: GPT2LMHeadModel) -> None:
    assert determine_num_blocks(random_tiny_model, 16, 37, 8.0, 0.9) == 37


def test_gpu_arithmetic_is_vllm_rule() -> None:
    # 80 GiB x 0.9 = 72 GiB; 10 GiB in use at the step's peak; 1 MiB blocks.
    assert kv_blocks_for_gpu(80 * GIB, 10 * GIB, 0.9, MIB) == 62 * 1024
    assert kv_blocks_for_gpu(80 * GIB, 10 * GIB, 0.5, MIB) == 30 * 1024
    assert kv_blocks_for_gpu(10 * GIB, GIB, 0.5, 3 * MIB) == (4 * GIB) // (3 * MIB)


@pytest.mark.parametrize(
    ("total", "peak", "utilization"),
    [(16 * GIB, 15 * GIB, 0.9), (16 * GIB, 16 * GIB, 1.0), (16 * GIB, 8 * GIB + MIB, 0.5)],
)
def test_gpu_arithmetic_refuses_when_nothing_is_left(
    total: int, peak: int, utilization: float
) -> None:
    with pytest.raises(KVCacheSizeError, match="--gpu-memory-utilization"):
        kv_blocks_for_gpu(total, peak, utilization, MIB)


def test_one_block_is_not_enough() -> None:
    with pytest.raises(KVCacheSizeError):
        kv_blocks_for_gpu(10 * GIB, 5 * GIB - MIB, 0.5, MIB)  # room for one block: null only
    assert kv_blocks_for_gpu(10 * GIB, 5 * GIB - 2 * MIB, 0.5, MIB) == 2


def test_profile_step_runs_on_cpu(random_tiny_model: GPT2LMHeadModel) -> None:
    # 2100 tokens exceed the 1024 positions: three sequences (1024, 1024, 52 tokens).
    cache_bytes = run_profile_step(random_tiny_model, 16, 2100, 8)
    assert cache_bytes == (1 + 64 + 64 + 4) * TINY_BLOCK_BYTES  # null + 1024/16 twice + 52/16


def test_profile_peak_memory_arithmetic_with_fake_cuda(
    monkeypatch: pytest.MonkeyPatch, random_tiny_model: GPT2LMHeadModel
) -> None:
    """The CUDA call sequence, with the device replaced by recorded fake numbers."""
    events: list[str] = []
    cache_bytes = 5 * MIB
    fake = {
        "synchronize": lambda *a: events.append("synchronize"),
        "empty_cache": lambda: events.append("empty_cache"),
        "reset_peak_memory_stats": lambda *a: events.append("reset"),
        "mem_get_info": lambda *a: (60 * GIB, 80 * GIB),  # 20 GiB in use: weights, context...
        "memory_allocated": lambda *a: GIB,  # of which torch holds the 1 GiB of weights
        "max_memory_allocated": lambda *a: GIB + cache_bytes + 3 * GIB,  # 3 GiB activations
    }
    for name, function in fake.items():
        monkeypatch.setattr(torch.cuda, name, function)

    def fake_step(model: GPT2LMHeadModel, block_size: int, tokens: int, seqs: int) -> int:
        events.append(f"step {block_size} {tokens} {seqs}")
        return cache_bytes

    monkeypatch.setattr(kv_cache_sizing, "run_profile_step", fake_step)
    peak = kv_cache_sizing.profile_peak_memory(random_tiny_model, 16, 2048, 64)
    assert peak == 20 * GIB + 3 * GIB
    assert events.index("reset") < events.index("step 16 2048 64")
    assert kv_blocks_for_gpu(80 * GIB, peak, 0.9, MIB) == (72 - 23) * 1024


@pytest.mark.gpu
def test_cuda_profiling_sizes_a_cache_that_runs(tokenizer: Tokenizer) -> None:
    model = load_model("random:gpt2", "cuda", torch.float16)
    per_block = kv_cache_bytes_per_block(model.config, 16, torch.float16)
    total = torch.cuda.mem_get_info()[1]
    weights = torch.cuda.memory_allocated()
    small = determine_num_blocks(model, 16, None, 1.0, 0.3, 2048, 64)
    large = determine_num_blocks(model, 16, None, 1.0, 0.4, 2048, 64)
    assert small >= 2 and small * per_block <= total * 0.3 - weights
    # Ten points more utilization buys ten percent of the GPU (kernels loaded by the first
    # profiling run count as in use in the second: allow 1% of the GPU).
    assert abs((large - small) * per_block - 0.1 * total) < 0.01 * total
    # The profiling run kept nothing beyond library workspaces.
    assert torch.cuda.memory_allocated() < weights + 256 * MIB
    engine = Engine(model, tokenizer, EngineConfig(num_blocks=small, max_num_seqs=64))
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    requests = {f"r{i}": (random_prompt(100 + i, i), params) for i in range(64)}
    assert all(len(tokens_of(o)) == 8 for o in run_to_completion(engine, requests).values())
    with pytest.raises(KVCacheSizeError):
        determine_num_blocks(model, 16, None, 1.0, weights / total / 2, 2048, 64)
