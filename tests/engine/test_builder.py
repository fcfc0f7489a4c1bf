"""`build_engine`: settings become the engine's configuration, and typed options stay typed."""

from __future__ import annotations

import pytest
import torch

from gpt2serve import kernels
from gpt2serve.model.config import named_config
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.engine.builder import build_engine, default_batched_tokens
from gpt2serve.server.engine.engine import DecodeMode, Engine, EngineConfig


def test_settings_reach_the_engine() -> None:
    settings = ServerSettings(
        model="random:tiny", device="cpu", num_kv_blocks=40, block_size=8, max_num_seqs=5,
        max_num_batched_tokens=64, enforce_eager=True, disable_triton=True,
        enable_prefix_caching=False,
    )  # fmt: skip
    try:
        engine, tokenizer = build_engine(settings)
        assert not kernels.triton_enabled("cuda")  # --disable-triton switched them off
    finally:
        kernels.disable_triton(False)
    assert engine.tokenizer is tokenizer
    assert engine.config == EngineConfig(
        block_size=8, num_blocks=40, max_num_seqs=5, max_num_batched_tokens=64,
        max_model_len=engine.model.config.n_positions, enable_prefix_caching=False,
        decode_mode=DecodeMode.EAGER,
    )  # fmt: skip
    assert engine.request_limits.num_cache_tokens == 39 * 8  # block 0 is the null block
    assert ServerSettings(model="random:tiny").disable_triton is False


def test_decode_mode_must_be_the_enum(tiny_model, tokenizer) -> None:
    with pytest.raises(TypeError, match="DecodeMode"):
        Engine(tiny_model, tokenizer, EngineConfig(num_blocks=8, decode_mode="padded"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "expected"),
    [("gpt2", 256), ("gpt2-medium", 64), ("gpt2-large", 32), ("gpt2-xl", 32), ("tiny", 2048)],
)
def test_cpu_default_budget_chunks_long_prompts_by_model_size(size: str, expected: int) -> None:
    # A 1,000-token prompt must be chunked on CPU: the old 2048 default exceeded the context, so
    # a long prompt froze running streams for seconds (benchmarks/prefill_stall.py measures it).
    params = named_config(size).num_parameters
    assert default_batched_tokens(torch.device("cpu"), params) == expected
    assert default_batched_tokens(torch.device("cuda"), params) == 2048  # GPU as before


def test_unset_budget_resolves_per_device_and_explicit_wins() -> None:
    auto, _ = build_engine(ServerSettings(model="random:tiny", device="cpu", num_kv_blocks=16))
    assert auto.config.max_num_batched_tokens == default_batched_tokens(
        torch.device("cpu"), auto.model.config.num_parameters
    )
    chosen = ServerSettings(model="random:tiny", device="cpu", num_kv_blocks=16,
                            max_num_batched_tokens=48)  # fmt: skip
    assert build_engine(chosen)[0].config.max_num_batched_tokens == 48
