"""Build the engine a `ServerSettings` describes: device, dtype, model, tokenizer, KV cache."""

from __future__ import annotations

import logging
import os
import time

import torch

from gpt2serve import kernels
from gpt2serve.model.cpu_linear import optimize_for_cpu
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import RANDOM_PREFIX, load_model, resolve_model_dir
from gpt2serve.server.config import ServerSettings
from gpt2serve.server.engine.engine import DecodeMode, Engine, EngineConfig
from gpt2serve.server.worker.kv_cache_sizing import determine_num_blocks

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when available."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {setting} requested but CUDA is not available")
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on CUDA (GPT-2's activations fit fp16) and float32 on CPU."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def load_tokenizer(model_spec: str) -> Tokenizer:
    """The model directory's vocab.json + merges.txt when present, else tiktoken's GPT-2."""
    if model_spec.startswith(RANDOM_PREFIX):
        return Tokenizer.from_tiktoken()
    return Tokenizer.for_model_dir(resolve_model_dir(model_spec))


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_cpu_threads(requested: int | None) -> int:
    """Every core by default: idle compute threads spin only ~0.2 ms before they sleep (the
    CLI's `set_openmp_wait`), so the HTTP side still gets a core when it needs one."""
    threads = requested or available_cores()
    torch.set_num_threads(threads)
    return threads


GPU_BATCHED_TOKENS = 2048
# Measured (docs/BENCHMARKS.md, "chunked-prefill budget on CPU"): gpt2 (124M) on 2 cores
# prefills 256 tokens beside 3 streams in ~0.35 s and 512 in ~0.7 s, with the same TTFT for a
# 1,000-token prompt. A step's cost grows with parameters x tokens, so the budget shrinks with
# the model: 256 for gpt2, 64 for gpt2-medium, 32 for gpt2-large and gpt2-xl.
CPU_TOKEN_PARAMETERS = 32e9  # budget x parameters per step
CPU_BATCHED_TOKENS_RANGE = (32, 2048)


def default_batched_tokens(device: torch.device, num_parameters: int) -> int:
    """The per-step token budget when `--max-num-batched-tokens` is not given."""
    if device.type != "cpu":
        return GPU_BATCHED_TOKENS
    low, high = CPU_BATCHED_TOKENS_RANGE
    tokens = max(1, int(CPU_TOKEN_PARAMETERS / num_parameters))
    return min(high, max(low, 1 << (tokens.bit_length() - 1)))  # a power of two, rounded down


def build_engine(settings: ServerSettings) -> tuple[Engine, Tokenizer]:
    """Load everything and size the KV cache; logs what was loaded."""
    device = resolve_device(settings.device)
    kernels.disable_triton(settings.disable_triton)
    if device.type == "cpu":
        logger.info(
            "CPU inference with %d torch threads", configure_cpu_threads(settings.cpu_threads)
        )
        if settings.cpu_attention_kernel:
            logger.info("loading the C++ CPU attention kernel (the first start builds it, ~20 s)")
        kernels.use_cpu_attention_kernel(settings.cpu_attention_kernel)
    dtype = resolve_dtype(settings.dtype, device)
    started = time.monotonic()
    model = load_model(settings.model, device, dtype, seed=settings.seed)
    if device.type == "cpu":
        logger.info("prepacked %d linear layers for oneDNN", optimize_for_cpu(model))
        model.prepare_cpu_projection()
    tokenizer = load_tokenizer(settings.model)
    shape = model.config
    logger.info(
        "loaded %s (%d layers, %d wide, %.0fM parameters) on %s as %s in %.1fs",
        settings.model, shape.n_layer, shape.n_embd, shape.num_parameters / 1e6,
        device, str(dtype).removeprefix("torch."), time.monotonic() - started,
    )  # fmt: skip
    batched_tokens = settings.max_num_batched_tokens or default_batched_tokens(
        device, shape.num_parameters
    )
    num_blocks = determine_num_blocks(
        model, settings.block_size, settings.num_kv_blocks, settings.kv_cache_gb,
        settings.gpu_memory_utilization, batched_tokens, settings.max_num_seqs,
    )  # fmt: skip
    config = EngineConfig(
        block_size=settings.block_size,
        num_blocks=num_blocks,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=batched_tokens,
        max_model_len=settings.max_model_len or model.config.n_positions,
        enable_prefix_caching=settings.enable_prefix_caching,
        decode_mode=DecodeMode.EAGER if settings.enforce_eager else DecodeMode.AUTO,
    )
    engine = Engine(model, tokenizer, config)
    logger.info(
        "KV cache: %d blocks x %d tokens = %d tokens; up to %d tokens per step",
        num_blocks - 1, settings.block_size, (num_blocks - 1) * settings.block_size,
        batched_tokens,
    )  # fmt: skip
    return engine, tokenizer
