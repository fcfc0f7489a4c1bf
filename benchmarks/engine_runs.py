"""Driving an `Engine` for measurements (benchmarks, acceptance): workloads, runs to completion.

Timings come from `gpt2serve.benchmarks.engine` (`run_engine`, `engine_batch1_ms`).
"""

from __future__ import annotations

import random

import torch

from gpt2serve.model.config import named_config
from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import RANDOM_PREFIX, load_model, random_model
from gpt2serve.server.core.messages import RequestOutput, TokenLogprobs
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import DecodeMode, Engine, EngineConfig

Workload = dict[str, tuple[list[int], SamplingParams]]


def random_prompt(length: int, seed: int, vocab: int = 50257) -> list[int]:
    """A reproducible random-token prompt (EOS excluded)."""
    rng = random.Random(seed)
    return [rng.randrange(vocab - 1) for _ in range(length)]


def build(
    model: GPT2LMHeadModel, tokenizer: Tokenizer, fast: bool, num_blocks: int, max_num_seqs: int
) -> Engine:
    """The serving path (CUDA graphs on a GPU; the same padded buffers, eager, on CPU) or the
    plain eager one."""
    on_gpu = model.transformer.wte.weight.device.type == "cuda"
    mode = DecodeMode.EAGER if not fast else DecodeMode.AUTO if on_gpu else DecodeMode.PADDED
    config = EngineConfig(
        num_blocks=num_blocks, max_num_seqs=max_num_seqs, max_num_batched_tokens=8192,
        decode_mode=mode,
    )  # fmt: skip
    return Engine(model, tokenizer, config)


def load(
    name: str, device: str, dtype: torch.dtype, draw_on_device: bool = False
) -> GPT2LMHeadModel:
    """A `random:<size>` model, seeded, on `device`: the weights `--model <name>` loads, or,
    with `draw_on_device`, other random weights drawn there (fast for the large shapes)."""
    if draw_on_device:
        config = named_config(name.removeprefix(RANDOM_PREFIX))
        return random_model(config, device, dtype, seed=0, init_device=device)
    return load_model(name, device, dtype, seed=0)


def run_to_completion(engine: Engine, workload: Workload) -> dict[str, list[RequestOutput]]:
    """Submit every request at once and step until all finished; outputs by request id."""
    for request_id, (prompt, params) in workload.items():
        engine.add_request(request_id, engine.request_limits.check(prompt, params))
    outputs: dict[str, list[RequestOutput]] = {rid: [] for rid in workload}
    while engine.has_unfinished_requests():
        for output in engine.step():
            outputs[output.request_id].append(output)
    return outputs


def tokens(outputs: list[RequestOutput]) -> list[int]:
    """The generated tokens of a single-choice request."""
    return [t for o in outputs for t in o.token_ids]


def logprobs(outputs: list[RequestOutput]) -> list[TokenLogprobs]:
    """The per-token logprobs of a single-choice request that asked for them."""
    return [lp for o in outputs for lp in (o.logprobs or [])]
