"""Engine fixtures: a tiny random GPT-2 with decisive logits, and the real GPT-2 tokenizer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpt2serve.server.engine.engine import Engine, EngineConfig


@pytest.fixture
def make_engine(tiny_model, tokenizer) -> Callable[..., Engine]:
    def make(**limits) -> Engine:
        defaults = {"num_blocks": 256, "block_size": 16, "max_num_batched_tokens": 2048}
        return Engine(tiny_model, tokenizer, EngineConfig(**{**defaults, **limits}))

    return make
