"""echo + logprobs and vLLM's prompt_logprobs over HTTP: scoring a prompt, streamed and not."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

from gpt2serve.server.engine.engine import Engine, EngineConfig
from support.hf_oracle import hf_prompt_logprobs
from support.http_server import running_server

TEXT = "The quick brown fox jumps over the lazy dog"
SCORE = {"model": "tiny", "prompt": TEXT, "echo": True, "logprobs": 1, "temperature": 0.0}


@pytest.fixture(scope="module")
def served(tiny_model, tokenizer) -> Iterator[tuple[str, Engine]]:
    engine = Engine(tiny_model, tokenizer, EngineConfig(num_blocks=128))
    with running_server(engine) as (url, _):
        yield url, engine


@pytest.fixture(scope="module")
def hf_logprobs(tiny_model, tmp_path_factory) -> Callable[[list[int]], torch.Tensor]:
    pytest.importorskip("transformers")
    return hf_prompt_logprobs(tiny_model, Path(tmp_path_factory.mktemp("hf_tiny_http")))


def complete(url: str, body: dict) -> dict:
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def streamed(url: str, body: dict) -> list[dict]:
    body = {**body, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def merged_logprobs(chunks: list[dict]) -> dict[str, list]:
    merged: dict[str, list] = {k: [] for k in ("tokens", "token_logprobs", "top_logprobs")}
    merged["text_offset"] = []
    for chunk in chunks:
        logprobs = chunk["choices"][0]["logprobs"] if chunk["choices"] else None
        for key in merged if logprobs else ():
            merged[key] += logprobs[key]
    return merged


def assert_scores_the_prompt(text: str, logprobs: dict, prompt: str, num_new: int) -> None:
    """null first, finite <= 0 after; tokens spell the text; offsets index into it."""
    tokens, values, offsets = (
        logprobs["tokens"],
        logprobs["token_logprobs"],
        logprobs["text_offset"],
    )
    num_prompt = len(tokens) - num_new
    assert values[0] is None and logprobs["top_logprobs"][0] is None
    assert all(math.isfinite(v) and v <= 0.0 for v in values[1:])
    assert all(len(top) == 1 for top in logprobs["top_logprobs"][1:])
    assert "".join(tokens[:num_prompt]) == prompt and text.startswith(prompt)
    assert offsets[:num_prompt] == [len("".join(tokens[:i])) for i in range(num_prompt)]
    assert offsets[num_prompt:] == sorted(offsets[num_prompt:])
    assert all(o >= len(prompt) for o in offsets[num_prompt:])  # generated text follows
    for token, offset in zip(tokens, offsets, strict=True):
        if not token.startswith("bytes:"):  # a whole-character token sits at its offset
            assert text[offset : offset + len(token)] == token
    if not any(t.startswith("bytes:") for t in tokens):
        assert "".join(tokens) == text


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_with_logprobs_scores_the_prompt(
    served, tokenizer, hf_logprobs, max_tokens: int
) -> None:
    url, _ = served
    prompt_ids = tokenizer.encode(TEXT)
    result = complete(url, {**SCORE, "max_tokens": max_tokens})
    (choice,) = result["choices"]
    assert choice["text"].startswith(TEXT) and choice["finish_reason"] == "length"
    if max_tokens == 0:
        assert choice["text"] == TEXT
    assert_scores_the_prompt(choice["text"], choice["logprobs"], TEXT, max_tokens)
    assert len(choice["logprobs"]["tokens"]) == len(prompt_ids) + max_tokens
    expected = hf_logprobs(prompt_ids)  # [len - 1, vocab]
    hf_values = expected.gather(1, torch.tensor(prompt_ids[1:])[:, None]).squeeze(1)
    got = choice["logprobs"]["token_logprobs"][1 : len(prompt_ids)]
    assert got == pytest.approx(hf_values.tolist(), abs=1e-4)
    assert result["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": max_tokens,
        "total_tokens": len(prompt_ids) + max_tokens,
    }
    assert "prompt_logprobs" not in choice  # only when asked for by name (vLLM's field)


@pytest.mark.parametrize("max_tokens", [0, 3])
def test_streamed_equals_non_streamed(served, max_tokens: int) -> None:
    url, _ = served
    body = {**SCORE, "max_tokens": max_tokens}
    full = complete(url, body)["choices"][0]
    chunks = streamed(url, body)
    first = chunks[0]["choices"][0]
    assert first["text"].startswith(TEXT)  # the echoed prompt and its logprobs come first
    assert first["logprobs"]["token_logprobs"][0] is None
    assert len(first["logprobs"]["tokens"]) >= len(full["logprobs"]["tokens"]) - max_tokens
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["text"]
    merged = merged_logprobs(chunks)
    assert merged["tokens"] == full["logprobs"]["tokens"]
    assert merged["text_offset"] == full["logprobs"]["text_offset"]
    assert merged["token_logprobs"] == pytest.approx(full["logprobs"]["token_logprobs"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_openai_sdk_scores_with_max_tokens_zero(served, tokenizer) -> None:
    openai = pytest.importorskip("openai")
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    result = client.completions.create(
        model="tiny", prompt=TEXT, echo=True, logprobs=1, max_tokens=0, temperature=0
    )
    choice = result.choices[0]
    assert choice.text == TEXT and choice.finish_reason == "length"
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert len(choice.logprobs.tokens) == len(tokenizer.encode(TEXT))
    assert result.usage.completion_tokens == 0


def test_vllm_prompt_logprobs_field(served, tokenizer, hf_logprobs) -> None:
    url, _ = served
    prompt_ids = tokenizer.encode(TEXT)
    body = {"model": "tiny", "prompt": TEXT, "prompt_logprobs": 2, "max_tokens": 1}
    choice = complete(url, body)["choices"][0]
    entries = choice["prompt_logprobs"]
    assert len(entries) == len(prompt_ids) and entries[0] is None
    expected = hf_logprobs(prompt_ids)  # [len - 1, vocab]
    for i, entry in enumerate(entries[1:], start=1):
        token = str(prompt_ids[i])
        assert token in entry and len(entry) in (2, 3)  # the token itself plus the top 2
        assert entry[token]["logprob"] == pytest.approx(
            expected[i - 1, prompt_ids[i]].item(), abs=1e-4
        )
        assert entry[token]["decoded_token"] == tokenizer.decode([prompt_ids[i]])
        top_ids = expected[i - 1].topk(2).indices.tolist()
        assert [entry[str(t)]["rank"] for t in top_ids] == [1, 2]
    assert choice["logprobs"] is None  # no legacy logprobs asked for
    chunks = streamed(url, body)
    carrying = [c for c in chunks if c["choices"] and "prompt_logprobs" in c["choices"][0]]
    assert carrying == chunks[:1] and carrying[0]["choices"][0]["prompt_logprobs"] == entries


def test_echo_with_max_tokens_zero_and_no_logprobs_returns_the_prompt(served) -> None:
    url, _ = served
    body = {"model": "tiny", "prompt": TEXT, "echo": True, "max_tokens": 0}
    result = complete(url, body)
    choice = result["choices"][0]
    assert (choice["text"], choice["logprobs"], choice["finish_reason"]) == (TEXT, None, "length")
    assert result["usage"]["completion_tokens"] == 0


def test_max_tokens_zero_without_echo_is_400(served) -> None:
    url, _ = served
    body = {"model": "tiny", "prompt": TEXT, "max_tokens": 0}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"
    assert "echo" in response.json()["error"]["message"]


def test_several_prompts_and_choices_each_echo_their_own_prompt(served, tokenizer) -> None:
    url, engine = served
    prompts = ["Hello there", "A longer second prompt, for good measure"]
    body = {**SCORE, "prompt": prompts, "n": 2, "max_tokens": 2, "seed": 1}
    body.pop("temperature")
    choices = sorted(complete(url, body)["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for choice in choices:
        prompt = prompts[choice["index"] // 2]
        num_prompt = len(tokenizer.encode(prompt))
        assert len(choice["logprobs"]["tokens"]) == num_prompt + 2
        assert_scores_the_prompt(choice["text"], choice["logprobs"], prompt, 2)
    # Every request of this module has finished: no block is held.
    manager = engine.block_manager
    assert not engine.has_unfinished_requests()
    assert manager.num_free_blocks == manager.num_usable_blocks
