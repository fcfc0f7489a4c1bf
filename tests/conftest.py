"""Test-wide setup: offline tokenizer data and Triton's interpreter on CPU-only machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model.config import named_config
from model.gpt2 import GPT2LMHeadModel
from model.tokenizer import Tokenizer
from model.weights import random_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

if (SHARED_DIR / "tiktoken").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DIR / "tiktoken"))
if not torch.cuda.is_available():
    # Must be set before any @triton.jit runs so the kernels can execute on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_tiktoken()


@pytest.fixture(scope="session")
def tiny_model() -> GPT2LMHeadModel:
    model = random_model(named_config("tiny"), "cpu", torch.float32, seed=11)
    # Wider logits than GPT-2's init: greedy choices stay far from float-rounding ties.
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8.0)
    return model


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
