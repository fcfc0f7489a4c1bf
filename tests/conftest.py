"""Test-wide setup: offline tokenizer data and Triton's interpreter on CPU-only machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gpt2serve.model.config import named_config
from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import load_model, random_model, save_hf_checkpoint

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
    """The real GPT-2 BPE (tiktoken, offline cache)."""
    return Tokenizer.from_tiktoken()


@pytest.fixture(scope="session")
def tiny_model() -> GPT2LMHeadModel:
    """A tiny random GPT-2 with scaled embeddings: decisive greedy choices."""
    model = random_model(named_config("tiny"), "cpu", torch.float32, seed=11)
    # Wider logits than GPT-2's init: greedy choices stay far from float-rounding ties.
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8.0)
    return model


@pytest.fixture(scope="session")
def random_tiny_model() -> GPT2LMHeadModel:
    """`random:tiny` exactly as `--model random:tiny` loads it (GPT-2's init, narrow logits)."""
    return load_model("random:tiny")


@pytest.fixture(scope="session")
def hf_saved_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised `transformers.GPT2LMHeadModel` written with `save_pretrained`."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4)  # random:tiny's shape
    with torch.random.fork_rng():  # seed HF's init without disturbing other tests' RNG
        torch.manual_seed(1234)
        model = transformers.GPT2LMHeadModel(config)
    model_dir = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def hf_saved_model(hf_saved_model_dir: Path) -> GPT2LMHeadModel:
    """The HF-saved random model, loaded through our own `load_model(dir)`."""
    return load_model(str(hf_saved_model_dir))


@pytest.fixture(scope="session")
def hf_tiny(tiny_model: GPT2LMHeadModel, tmp_path_factory: pytest.TempPathFactory):
    """`tiny_model`'s weights in `transformers.GPT2LMHeadModel` (the reference for parity)."""
    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path_factory.mktemp("hf_tiny")
    save_hf_checkpoint(tiny_model, model_dir)
    return transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
