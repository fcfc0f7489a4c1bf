"""`build_engine`: settings become the engine's configuration, and typed options stay typed."""

from __future__ import annotations

import pytest

from gpt2serve import kernels
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.engine.builder import build_engine
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
