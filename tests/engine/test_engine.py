"""The synchronous engine: batch invariance, preemption, chunked prefill, stop handling."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch

from gpt2serve import kernels
from gpt2serve.model.cpu_linear import optimize_for_cpu
from gpt2serve.model.gpt2 import GPT2LMHeadModel
from gpt2serve.model.tokenizer import Tokenizer
from gpt2serve.model.weights import save_hf_checkpoint
from gpt2serve.server.core.request_limits import InvalidRequestError, RequestLimits
from gpt2serve.server.core.sampling_params import SamplingParams
from gpt2serve.server.engine.engine import DecodeMode, Engine, EngineConfig
from support.engine_driver import (
    random_prompt,
    record_schedules,
    run_to_completion,
    text_of,
    tokens_of,
)

GREEDY = {"temperature": 0.0, "ignore_eos": True}
# The scaled-embedding fixture, `random:tiny` as the server loads it, and a model written by
# transformers' save_pretrained and read back through our own loader.
INVARIANCE_MODELS = ["tiny_model", "random_tiny_model", "hf_saved_model"]


@pytest.fixture(scope="module", params=INVARIANCE_MODELS)
def engine_model(request: pytest.FixtureRequest) -> GPT2LMHeadModel:
    """Each model the batch-invariance tests must hold for."""
    return request.getfixturevalue(request.param)


def build_engine(model: GPT2LMHeadModel, tokenizer: Tokenizer, **limits: object) -> Engine:
    defaults = {"num_blocks": 256, "block_size": 16, "max_num_batched_tokens": 2048}
    return Engine(model, tokenizer, EngineConfig(**{**defaults, **limits}))


def mixed_requests(count: int, max_tokens: int = 12) -> dict[str, tuple[list[int], SamplingParams]]:
    lengths = [1 + (i * 37) % 90 for i in range(count)]
    return {
        f"r{i}": (random_prompt(n, seed=i), SamplingParams(max_tokens=max_tokens, **GREEDY))
        for i, n in enumerate(lengths)
    }


@pytest.fixture(scope="module")
def alone_tokens(engine_model: GPT2LMHeadModel, tokenizer: Tokenizer) -> dict[str, list[int]]:
    """Each request's greedy tokens when it runs by itself."""
    result = {}
    for rid, request in mixed_requests(32).items():
        engine = Engine(engine_model, tokenizer, EngineConfig(num_blocks=64))
        result[rid] = tokens_of(run_to_completion(engine, {rid: request})[rid])
    return result


def assert_same_tokens(engine: Engine, alone_tokens: dict[str, list[int]]) -> None:
    outputs = run_to_completion(engine, mixed_requests(32))
    for rid, expected in alone_tokens.items():
        assert tokens_of(outputs[rid]) == expected, rid
        assert len(expected) == 12
        assert outputs[rid][-1].finish_reason == "length"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks


def test_batched_requests_match_alone(
    engine_model: GPT2LMHeadModel, tokenizer: Tokenizer, alone_tokens: dict[str, list[int]]
) -> None:
    engine = build_engine(engine_model, tokenizer, num_blocks=512)
    schedules = record_schedules(engine)
    assert_same_tokens(engine, alone_tokens)
    assert len(schedules[0].scheduled) == 32  # all 32 prompts really ran in one batch
    assert len({tuple(t) for t in alone_tokens.values()}) == 32  # 32 different continuations


def test_cpu_serving_path_is_batch_invariant(
    engine_model: GPT2LMHeadModel, tokenizer: Tokenizer
) -> None:
    """Packed linears (BLAS rows alone, oneDNN in the batch) and the C++ decode attention."""
    served = copy.deepcopy(engine_model)
    assert optimize_for_cpu(served) > 0
    if not kernels.use_cpu_attention_kernel():
        pytest.skip("no C++ toolchain to build the CPU attention kernel")
    try:
        alone = {
            rid: tokens_of(run_to_completion(build_engine(served, tokenizer), {rid: job})[rid])
            for rid, job in mixed_requests(32).items()
        }
        assert_same_tokens(build_engine(served, tokenizer, num_blocks=512), alone)
    finally:
        kernels.use_cpu_attention_kernel(False)


def test_preemption_keeps_results(
    engine_model: GPT2LMHeadModel, tokenizer: Tokenizer, alone_tokens: dict[str, list[int]]
) -> None:
    engine = build_engine(engine_model, tokenizer, num_blocks=24)
    schedules = record_schedules(engine)
    assert_same_tokens(engine, alone_tokens)
    assert engine.scheduler.num_preemptions_total > 0
    assert any(s.preempted_request_ids for s in schedules)


def test_chunked_prefill_keeps_results(
    engine_model: GPT2LMHeadModel, tokenizer: Tokenizer, alone_tokens: dict[str, list[int]]
) -> None:
    engine = build_engine(engine_model, tokenizer, max_num_batched_tokens=24, max_num_seqs=8)
    schedules = record_schedules(engine)
    assert_same_tokens(engine, alone_tokens)
    assert max(s.num_batched_tokens for s in schedules) <= 24
    chunks = [
        entry
        for schedule in schedules
        for entry in schedule.scheduled
        if entry.num_computed_tokens < entry.request.num_prompt_tokens
    ]  # every prefill piece (prompts are distinct: no prefix-cache hits)
    assert any(not c.sample for c in chunks)  # a prompt piece that does not finish its prompt
    assert any(c.num_computed_tokens > 0 for c in chunks)  # a prompt resumed mid-way
    assert engine.scheduler.num_preemptions_total == 0  # chunking, not preemption, split them


def test_hf_saved_model_matches_transformers(
    hf_saved_model_dir: Path, hf_saved_model: GPT2LMHeadModel, tokenizer: Tokenizer
) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_saved_model_dir).eval()
    requests = {
        f"p{i}": (random_prompt(5 + 11 * i, 70 + i), SamplingParams(max_tokens=16, **GREEDY))
        for i in range(3)
    }
    outputs = run_to_completion(build_engine(hf_saved_model, tokenizer), requests)
    for rid, (prompt, _) in requests.items():
        with torch.no_grad():
            expected = hf.generate(
                torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0
            )[0, len(prompt) :].tolist()
        assert tokens_of(outputs[rid]) == expected, rid


def test_matches_hf_greedy(tiny_model, make_engine) -> None:
    transformers = pytest.importorskip("transformers")

    prompt = random_prompt(9, seed=99)
    outputs = run_to_completion(
        make_engine(), {"a": (prompt, SamplingParams(max_tokens=20, **GREEDY))}
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(tiny_model, Path(tmp))
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
        with torch.no_grad():
            expected = hf.generate(
                torch.tensor([prompt]), max_new_tokens=20, do_sample=False, pad_token_id=0
            )[0, len(prompt) :].tolist()
    assert tokens_of(outputs["a"]) == expected


def test_n_choices_share_prompt_blocks_and_differ(make_engine) -> None:
    engine = make_engine()
    prompt = random_prompt(40, seed=5)
    params = SamplingParams(max_tokens=8, n=3, temperature=1.0, seed=7, ignore_eos=True)
    engine.add_request("multi", engine.request_limits.check(prompt, params))
    collected = engine.step()  # all three admitted in one step; two full prompt blocks shared
    assert engine.block_manager.num_usable_blocks - engine.block_manager.num_free_blocks == 2 + 3
    while engine.has_unfinished_requests():
        collected.extend(engine.step())
    choices = {i: [t for o in collected if o.index == i for t in o.token_ids] for i in range(3)}
    assert all(len(c) == 8 for c in choices.values())
    assert len({tuple(c) for c in choices.values()}) == 3


def test_abort_frees_blocks_in_every_state(make_engine) -> None:
    engine = make_engine(num_blocks=64, max_num_batched_tokens=32)
    params = SamplingParams(max_tokens=50, **GREEDY)
    engine.add_request("waiting", engine.request_limits.check(random_prompt(10, 1), params))
    engine.abort_request("waiting")
    engine.add_request("prefilling", engine.request_limits.check(random_prompt(100, 2), params))
    engine.add_request("decoding", engine.request_limits.check(random_prompt(5, 3), params))
    engine.step()
    engine.abort_request("prefilling")
    for _ in range(5):
        engine.step()
    engine.abort_request("decoding")
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable_blocks


def test_stop_string_across_tokens_is_cut_exactly(make_engine, tokenizer) -> None:
    prompt = random_prompt(6, seed=42)
    sampled = {"temperature": 1.0, "seed": 3, "ignore_eos": True}  # varied text, reproducible
    free_run = run_to_completion(
        make_engine(), {"a": (prompt, SamplingParams(max_tokens=30, **sampled))}
    )
    text = text_of(free_run["a"])
    token_texts = [tokenizer.decode([t]) for t in tokens_of(free_run["a"])]
    # A stop string from the last character of token 2 into token 4 spans two boundaries.
    boundary = sum(len(t) for t in token_texts[:3])
    stop = text[boundary - 1 : boundary + len(token_texts[3]) + 1]
    assert len(stop) >= 3
    cut_at = text.find(stop)
    params = SamplingParams(max_tokens=30, stop=[stop, "never-seen-stop"], **sampled)
    stopped = run_to_completion(make_engine(), {"b": (prompt, params)})["b"]
    assert text_of(stopped) == text[:cut_at]
    assert stopped[-1].finish_reason == "stop" and stopped[-1].stop_reason == stop
    emitted = ""
    for delta in stopped:
        emitted += delta.text
        assert stop not in emitted and text.startswith(emitted)


def test_validation_errors(make_engine) -> None:
    engine = make_engine(num_blocks=8)
    with pytest.raises(InvalidRequestError, match="maximum context length is 1024"):
        engine.request_limits.check([1] * 1000, SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequestError, match="do not fit the whole KV cache"):
        engine.request_limits.check([1] * 100, SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequestError, match="prompt token ids"):
        engine.request_limits.check([50257], SamplingParams())
    with pytest.raises(InvalidRequestError, match="at least one token"):
        engine.request_limits.check([], SamplingParams())
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        engine.request_limits.check([1], SamplingParams(logit_bias={60000: 1.0}))
    assert not engine.has_unfinished_requests()
    # The limits are the engine's own: its vocabulary, context and 7 usable blocks of 16.
    assert engine.request_limits == RequestLimits(50257, 1024, 7 * 16)
    checked = engine.request_limits.check([1, 2], SamplingParams(max_tokens=2))
    engine.add_request("same", checked)
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("same", checked)


def test_padded_decode_path_matches_eager(
    engine_model: GPT2LMHeadModel, tokenizer: Tokenizer, alone_tokens: dict[str, list[int]]
) -> None:
    """The static-buffer path CUDA graphs replay, run eagerly on CPU: padding is harmless."""
    engine = build_engine(
        engine_model, tokenizer, num_blocks=512, max_num_seqs=20, decode_mode=DecodeMode.PADDED
    )
    assert engine.runner.decode_runner is not None
    assert engine.runner.decode_runner.sizes == [1, 2, 4, 8, 16, 20]
    assert_same_tokens(engine, alone_tokens)
    # Padding rows wrote nothing: the null block is still all zeros.
    assert not engine.runner.kv_cache[:, :, 0].any()
